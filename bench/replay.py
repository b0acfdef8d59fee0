"""``lanetrace replay`` on a 10 M-event trace: how soon the first screen
appears, and how fast the tree streams.

    .venv/bin/python bench/replay.py [--events 10000000] [--workdir DIR] [--reps 5]

Uses bench/query.py's cached trace (built if missing) with its index
already built (the first command on a fresh trace builds it once). Times,
median of --reps:

* the first 50 lines of ``lanetrace replay`` read through a pipe, the whole
  command (interpreter start and imports included) — the target is 200 ms;
* the same in-process (opening the trace and the first 50 lines), for one
  thread, interleaved, and from the middle of the trace (--from);
* lines per second while streaming 200,000 lines into a pipe.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import query as benchq  # noqa: E402  (bench/query.py: the trace generator)

SCREEN = 50


def first_screen_subprocess(tdir, extra=()):
    cmd = [sys.executable, "-m", "lanetrace", "replay", tdir, *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for _ in range(SCREEN + 1):
        proc.stdout.readline()
    took = time.perf_counter() - t
    proc.stdout.close()
    proc.wait()
    return took


def first_screen_inprocess(root, trace_id, mode, mid_ts):
    from itertools import islice

    from lanetrace.query import calltree
    from lanetrace.query.store import TraceStore

    t = time.perf_counter()
    tr = TraceStore(root, subprocess_builds=False).get(trace_id)
    tree = calltree.CallTree(tr)
    if mode == "thread":
        items = calltree.lines_for(tree, tid=tree.thread_ids()[0])
    elif mode == "interleave":
        items = tree.interleaved(tree.thread_ids())
    else:
        items = calltree.lines_for(tree, tid=tree.thread_ids()[0], time_start=mid_ts)
    lines = list(islice(items, SCREEN))
    assert len(lines) == SCREEN
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lanetrace-bench-query"))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    root, trace_id = benchq.ensure_trace(args.workdir, args.events)
    tdir = os.path.join(root, trace_id)
    from lanetrace.query import index as ix
    t = time.perf_counter()
    idx, built = ix.open_or_build(tdir)
    print(f"trace: {idx.meta['eventCount']:,} events; index {'built' if built else 'loaded'} "
          f"in {time.perf_counter() - t:.2f} s", flush=True)
    mid = int(idx.ev_ts[len(idx.ev_ts) // 2])
    del idx

    def report(name, samples):
        print(f"{name:<52} median {statistics.median(samples) * 1000:6.0f} ms   "
              f"min {min(samples) * 1000:6.0f} ms   max {max(samples) * 1000:6.0f} ms", flush=True)

    report("first screen, `lanetrace replay | ...` (whole command)",
           [first_screen_subprocess(tdir) for _ in range(args.reps)])
    report("  the same with --interleave",
           [first_screen_subprocess(tdir, ["--interleave"]) for _ in range(args.reps)])
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lanetrace.cli.views, lanetrace.query.calltree"],
                   check=True)
    print(f"  (of which interpreter start and imports: {(time.perf_counter() - t) * 1000:.0f} ms)")
    for mode in ("thread", "interleave", "from the middle"):
        report(f"first screen in-process: {mode}",
               [first_screen_inprocess(root, trace_id, mode, mid) for _ in range(args.reps)])
    n = 200_000
    proc = subprocess.Popen([sys.executable, "-m", "lanetrace", "replay", tdir],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()
    t = time.perf_counter()
    for _ in range(n):
        proc.stdout.readline()
    took = time.perf_counter() - t
    proc.stdout.close()
    proc.wait()
    print(f"streaming: {n / took:,.0f} lines/s into a pipe")


if __name__ == "__main__":
    main()
