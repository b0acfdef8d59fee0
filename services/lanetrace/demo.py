"""``make demo``: trace the bundled multi-threaded example and query the trace.

Runs the same commands a user would type, and prints each before running it."""
from __future__ import annotations

import glob
import os
import shlex
import sys

from lanetrace.cli import main as lanetrace

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACE_ROOT = os.path.join(REPO, "traces")


def step(args: list[str]) -> int:
    print(f"\n$ lanetrace {shlex.join(args)}", flush=True)
    status = lanetrace(args)
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def main() -> int:
    workers = os.path.join(REPO, "examples", "bin", "workers")
    before = set(glob.glob(os.path.join(TRACE_ROOT, "*", "pid_*")))
    status = step(["run", "-o", TRACE_ROOT, "-I", "workers", "-i", "libworkutil.so!lib_*",
                   "-i", "libplugin.so!plugin_*", "--", workers, "4"])
    if status != 0:
        return status
    new = sorted(set(glob.glob(os.path.join(TRACE_ROOT, "*", "pid_*"))) - before)
    if not new:
        print("demo: the run wrote no trace", file=sys.stderr)
        return 1
    trace_id = os.path.relpath(new[-1], TRACE_ROOT)
    for args in (["query", "info", trace_id],
                 ["query", "functions", trace_id, "--top", "10"],
                 ["query", "spans", trace_id, "--function", "process_record", "--limit", "5"]):
        status = step([*args, "--trace-root", TRACE_ROOT]) or status
    print(f"\nThe trace is in {new[-1]}; serve it with: lanetrace serve --trace-root {TRACE_ROOT}")
    return status


if __name__ == "__main__":
    sys.exit(main())
