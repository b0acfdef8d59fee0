"""The CLI loads a heavy library only for a command that uses it: building
the parser, --help and the commands that fail on their arguments import none
of them (each case runs in a fresh interpreter and reads its sys.modules)."""
import json
import subprocess
import sys

import pytest

HEAVY = ("frida", "numpy", "duckdb", "pyarrow", "capstone", "google.protobuf", "mcp", "zmq",
         "supervisor", "elftools", "asyncio", "lanetrace.core.atf", "lanetrace.query.engine")

PROBE = """
import json, sys
from lanetrace.cli import build_parser, main
argv = json.loads(sys.argv[1])
status = None
if argv == ["<every help>"]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.choices and hasattr(a.choices, "items")]
    for name, p in sub.choices.items():
        p.format_help()
        for a in p._actions:  # nested groups: daemon start/stop, query list/info...
            if a.choices and hasattr(a.choices, "items"):
                for q in a.choices.values():
                    q.format_help()
else:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
heavy = json.loads(sys.argv[2])
loaded = sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules))
print(json.dumps({"status": status, "loaded": loaded}))
"""


def probe(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, status", [
    (["<every help>"], None),
    (["--version"], 0),
    (["run", "--help"], 0),
    (["gc", "--dry-run"], 0),
    (["run", "--", "/nonexistent/program"], 2),
    (["attach", "2147483647"], 2),
    (["export", "--format", "nope", "-o", "-", "x"], 2),
], ids=["every-help", "version", "run-help", "gc", "run-missing-program", "attach-no-such-pid",
        "export-bad-format"])
def test_cli__light_command__then_no_heavy_library_imported(argv, status):
    result = probe(argv)
    assert result["status"] == status
    assert result["loaded"] == []


def test_cli__heavy_library_list__then_probe_sees_a_loaded_one():
    # the probe itself can fail: a command that needs protobuf shows it
    result = probe(["diff", "/nonexistent/a", "/nonexistent/b"])
    assert result["status"] == 2
    assert "lanetrace.core.atf" in result["loaded"]
