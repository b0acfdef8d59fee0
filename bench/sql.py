"""SQL over a trace of 10 million calls (20 M events): DuckDB over the
memory-mapped index through Arrow, next to the query engine's own numpy
answer to the same question.

    .venv/bin/python bench/sql.py [--calls 10000000] [--workdir DIR] [--reps 5]

Builds (or reuses, cached under the work dir) a lanetrace-flavoured trace with
bench/query.py's generator (8 threads, 64 functions, call trees up to 12
deep), indexes it, then times, median of --reps runs each:

* the Arrow tables over the index (first query of a trace only);
* GROUP BY function over all calls: count, sum(duration), sum(self) — the
  target is about a second on 2 cores;
* GROUP BY thread and function over the call events;
* the 10 longest calls (ORDER BY ... LIMIT);
* the calls inside a 10 % time window;
* functions.list (numpy, precomputed at index time) and its filtered form,
  which computes the same per-function figures for a thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import query as benchq  # noqa: E402  (bench/query.py: the trace generator)


def timed(fn, reps):
    out, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), min(out), max(out), result


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lanetrace-bench-query"))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    root, trace_id = benchq.ensure_trace(args.workdir, 2 * args.calls)
    from lanetrace.query import sql
    from lanetrace.query.engine import Engine

    e = Engine(root, subprocess_builds=False)
    t = time.perf_counter()
    tr = e.store.get(trace_id)
    print(f"trace: {tr.idx.meta['eventCount']:,} events, {tr.idx.meta['spanCount']:,} calls; "
          f"index ready in {time.perf_counter() - t:.2f} s", flush=True)
    t = time.perf_counter()
    sql.tables(tr)
    print(f"Arrow tables over the index: {1000 * (time.perf_counter() - t):.0f} ms (once per trace)")
    t_lo = int(tr.idx.ev_ts[0])
    t_hi = int(tr.idx.ev_ts[-1])
    w_lo = t_lo + (t_hi - t_lo) * 45 // 100
    w_hi = t_lo + (t_hi - t_lo) * 55 // 100
    queries = [
        ("GROUP BY function (10 M calls)",
         "SELECT function, count(*), sum(duration_ns), sum(self_ns) FROM calls "
         "GROUP BY 1 ORDER BY 3 DESC"),
        ("GROUP BY thread, function (events)",
         "SELECT thread_id, function, count(*) FROM events WHERE kind = 'FunctionCall' "
         "GROUP BY ALL"),
        ("top 10 durations",
         "SELECT call_id, function, duration_ns FROM calls ORDER BY duration_ns DESC LIMIT 10"),
        ("calls in a 10 % window",
         f"SELECT count(*), sum(duration_ns) FROM calls WHERE start_ns >= {w_lo} "
         f"AND end_ns <= {w_hi}"),
    ]
    print(f"\n{'what':<40} {'median':>9} {'min':>9} {'max':>9}")
    for name, q in queries:
        med, lo, hi, _ = timed(lambda: sql.execute(tr, q, 10_000, None), args.reps)
        print(f"{'sql: ' + name:<40} {med * 1000:>7.0f} ms {lo * 1000:>6.0f} ms {hi * 1000:>6.0f} ms",
              flush=True)
    for name, params in (
            ("engine: functions.list (precomputed)", {"traceId": trace_id}),
            ("engine: functions.list, one thread", {"traceId": trace_id,
                                                    "filters": {"threadIds": [4300]}})):
        med, lo, hi, _ = timed(lambda: e.call("functions.list", params), args.reps)
        print(f"{name:<40} {med * 1000:>7.0f} ms {lo * 1000:>6.0f} ms {hi * 1000:>6.0f} ms",
              flush=True)
    print(f"\ncores: {os.cpu_count()}; DuckDB uses all of them, the engine one")


if __name__ == "__main__":
    main()
