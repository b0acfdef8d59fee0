"""Latency of each MCP tool of ``lanetrace mcp`` on a 1 M-event trace.

    .venv/bin/python bench/mcp.py [--events 1000000] [--workdir DIR] [--reps 10]
                                  [--budgets 200,2000,8000]

Builds (or reuses, cached under the work dir) the synthetic trace of
bench/query.py, starts ``lanetrace mcp`` as a subprocess and drives it over
stdio with the MCP SDK's client, as an agent host would. For each tool and
budget: the first call (which may open the index or read the traces whole)
and the median and max of ``--reps`` more calls, round trip through the
protocol included, plus the answer's size in tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# run as a script, this file's directory comes first on sys.path, and this
# file's name would hide the MCP SDK's package
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def _bench_query():
    spec = importlib.util.spec_from_file_location("lanetrace_bench_query",
                                                  os.path.join(HERE, "query.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def calls(trace_id):
    return [
        ("list_traces", {}),
        ("trace_summary", {"traceId": trace_id}),
        ("hot_functions", {"traceId": trace_id}),
        ("find_calls (first page)", {"traceId": trace_id}),
        ("find_calls (function + min duration)",
         {"traceId": trace_id, "function": "fn_007", "minDurationNs": 1000}),
        ("find_calls (thread + time window)",
         {"traceId": trace_id, "threadId": 4303, "fromNs": 10_000_000, "toNs": 12_000_000}),
        ("call_tree (span subtree)", {"traceId": trace_id, "spanId": 0}),
        ("call_tree (thread at time)", {"traceId": trace_id, "threadId": 4301, "atNs": 10_000_000}),
        ("diff_traces (trace vs itself)", {"traceIdA": trace_id, "traceIdB": trace_id}),
    ]


async def run(root, trace_id, reps, budgets):
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "lanetrace", "mcp", "--trace-root", root],
                                   env=dict(os.environ))
    rows = []
    async with Client(params) as c:
        for label, args in calls(trace_id):
            name = label.split(" ")[0]
            for budget in budgets:
                a = dict(args, tokenBudget=budget)
                t = time.perf_counter()
                r = await c.call_tool(name, a, read_timeout_seconds=900)
                first = time.perf_counter() - t
                if r.is_error:
                    raise SystemExit(f"{label}: {r.content[0].text}")
                samples = []
                for _ in range(reps):
                    t = time.perf_counter()
                    await c.call_tool(name, a, read_timeout_seconds=900)
                    samples.append(time.perf_counter() - t)
                rows.append((label, budget, first * 1000, statistics.median(samples) * 1000,
                             max(samples) * 1000, r.structured_content["tokens"]))
                print(f"{label:40} {budget:>6} {first * 1000:>10.1f} "
                      f"{statistics.median(samples) * 1000:>10.1f} {max(samples) * 1000:>10.1f} "
                      f"{r.structured_content['tokens']:>7}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lanetrace-bench-mcp"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budgets", default="200,2000,8000")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    root = os.path.join(args.workdir, f"root-{args.events}")
    trace_id = "bench/pid_1"
    tdir = os.path.join(root, trace_id)
    if not os.path.exists(os.path.join(tdir, "trace.json")):
        print(f"building a {args.events:,}-event trace in {tdir} ...", flush=True)
        t = time.perf_counter()
        _bench_query().build_trace(tdir, args.events)
        print(f"  built in {time.perf_counter() - t:.1f} s", flush=True)
    print(f"{'tool':40} {'budget':>6} {'first ms':>10} {'p50 ms':>10} {'max ms':>10} {'tokens':>7}")
    asyncio.run(run(root, trace_id, args.reps, budgets))


if __name__ == "__main__":
    main()
