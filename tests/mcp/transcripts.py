"""Regenerate the tool transcripts of docs/mcp.md from a real server.

    .venv/bin/python tests/mcp/transcripts.py

Records the demo trace (examples/bin/workers 4, the `make demo` selection),
examples/bin/tickboom with a flight-recorder trigger, and the two runs of
examples/bin/branchy,
starts ``lanetrace mcp --allow-capture`` on them, calls every tool through
the MCP SDK's client and writes each request and answer between the
transcript markers of docs/mcp.md. Only the temporary directory's path and
the repository's are replaced (by ``~/work`` and nothing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from mcpclient import McpSession  # noqa: E402

DOC = os.path.join(REPO, "docs", "mcp.md")
BEGIN, END = "<!-- transcripts:begin -->", "<!-- transcripts:end -->"
BIN = os.path.join(REPO, "examples", "bin")


def run(root, *args):
    before = set(_ids(root))
    subprocess.run([sys.executable, "-m", "lanetrace", "run", "-o", root, *args],
                   check=True, capture_output=True)
    (new,) = set(_ids(root)) - before
    return new


def _ids(root):
    return [f"{s}/{p}" for s in os.listdir(root) for p in os.listdir(os.path.join(root, s))
            if p.startswith("pid_")] if os.path.isdir(root) else []


def main():
    work = tempfile.mkdtemp(prefix="lanetrace-transcripts-")
    root = os.path.join(work, "traces")
    good = run(root, "--", os.path.join(BIN, "branchy"), "good")
    bad = run(root, "--", os.path.join(BIN, "branchy"), "bad")
    tickboom = run(root, "-t", "symbol=boom", "--", os.path.join(BIN, "tickboom"), "1", "0.6")
    demo = run(root, "-I", "workers", "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*",
               "--", os.path.join(BIN, "workers"), "4")
    sleeper = subprocess.Popen([os.path.join(BIN, "sleeper"), "60"], stdout=subprocess.PIPE)
    while sleeper.stdout.readline().strip() != b"ready":
        pass
    s = McpSession(root, "--allow-capture")
    spans = s.call("find_calls", {"traceId": demo, "function": "process_record",
                                  "tokenBudget": 200}).structured["calls"]["items"]
    calls = [
        ("list_traces", {"tokenBudget": 300}),
        ("trace_summary", {"traceId": demo, "tokenBudget": 1000}),
        ("hot_functions", {"traceId": demo, "limit": 8, "tokenBudget": 500}),
        ("find_calls", {"traceId": demo, "function": "process_record", "tokenBudget": 400}),
        ("call_tree", {"traceId": demo, "spanId": spans[0]["spanId"], "tokenBudget": 500}),
        ("flight_window", {"traceId": tickboom, "tokenBudget": 600}),
        ("diff_traces", {"traceIdA": good, "traceIdB": bad, "tokenBudget": 700}),
        ("run_trace", {"argv": [os.path.join(BIN, "branchy"), "bad"], "tokenBudget": 600}),
        ("attach_trace", {"pid": sleeper.pid, "durationSec": 3, "tokenBudget": 500}),
        ("trace_summary", {"traceId": "no/such", "tokenBudget": 300}),
    ]
    out = []
    try:
        for name, args in calls:
            a = s.call(name, args)
            if name == "trace_summary" and a.is_error:
                out.append("A bad request is a tool error (`isError: true`), and the server "
                           "stays up:\n")
            else:
                out.append(f"### {name}\n")
            req = json.dumps({"name": name, "arguments": args})
            out.append(f"```json\n{req}\n```\n")
            flag = " (isError)" if a.is_error else ""
            out.append(f"answer{flag}:\n\n```text\n{a.text}\n```\n")
            if name == "trace_summary" and not a.is_error:
                st = json.dumps(a.structured, indent=1)
                out.append(f"structuredContent:\n\n```json\n{st}\n```\n")
    finally:
        s.close()
        sleeper.kill()
    text = "\n".join(out).replace(work, "~/work").replace(REPO + "/", "")
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
    print(f"wrote {len(calls)} transcripts into {DOC}")


if __name__ == "__main__":
    main()
