"""Does every event reach the trace? The workloads of the zero-drop goal, run
under lanetrace with default options (and, with --no-drop, in blocking mode),
side by side in one run: events recorded and dropped, how much of the shared
ring pool the bursts used, how long producers waited, and the wall time.

Workloads:
  hot1     examples/bin/hot ITERS, one thread calling hot_fn back to back
  hot2     the same loop on one thread, then a second thread joins halfway
           (a program compiled from the source below)
  sqlite3  /usr/bin/sqlite3: 3,000 inserts + 200 selects, -i 'libsqlite3*!sqlite3_*'
  workers  examples/bin/workers 4 300000 (every function of the program)

Modes: default; --no-pool adds --ring-budget-mb 0 (each thread has only its
own rings, as before the shared pool); --no-drop adds blocking mode.

Usage: python bench/zerodrop.py [--iters N] [--only hot1,hot2,...] [--no-pool] [--no-drop] [--json]
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "examples", "bin")
LANETRACE = os.path.join(ROOT, ".venv", "bin", "lanetrace")

HOT2_SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline, noipa, used)) int hot_fn(int x)
{
    unsigned v = (unsigned)x * 2654435761u;
    v ^= v >> 15;
    v *= 0x2c1b3c6du;
    v ^= v >> 12;
    return (int)v;
}
static long iters;
static volatile unsigned sink;
static void *loop(void *arg)
{
    unsigned acc = 0;
    for (long i = 0; i < iters; i++)
        acc += (unsigned)hot_fn((int)i);
    sink += acc;
    return arg;
}
int main(int argc, char **argv)
{
    iters = argc > 1 ? atol(argv[1]) : 1000000;
    pthread_t t;
    unsigned acc = 0;
    for (long i = 0; i < iters; i++) {
        if (i == iters / 2 && pthread_create(&t, NULL, loop, NULL))
            return 1;
        acc += (unsigned)hot_fn((int)i);
    }
    pthread_join(t, NULL);
    sink += acc;
    printf("calls=%ld\n", 2 * iters);
    return 0;
}
"""

SQLITE_SQL = "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);\n" + \
    "BEGIN;\n" + "".join(f"INSERT INTO t VALUES({i}, 'row{i}', {i * 1.5});\n" for i in range(3000)) + \
    "COMMIT;\n" + "".join(f"SELECT count(*), sum(c) FROM t WHERE b > 'row{i * 15}';\n" for i in range(200))


def workloads(iters: int, work: str) -> dict:
    hot2 = os.path.join(work, "hot2")
    src = os.path.join(work, "hot2.c")
    with open(src, "w") as f:
        f.write(HOT2_SOURCE)
    subprocess.run(["cc", "-O2", "-pthread", "-o", hot2, src], check=True)
    sql = os.path.join(work, "load.sql")
    with open(sql, "w") as f:
        f.write(SQLITE_SQL)
    return {
        "hot1": (["-i", "hot!hot_fn"], [os.path.join(BIN, "hot"), str(iters)], 2 * iters),
        "hot2": (["-i", "hot2!hot_fn"], [hot2, str(iters)], 4 * iters),
        "sqlite3": (["-i", "libsqlite3*!sqlite3_*"],
                    ["/usr/bin/sqlite3", "-batch", "-init", "/dev/null", ":memory:", f".read {sql}"], None),
        "workers": ([], [os.path.join(BIN, "workers"), "4", "300000"], None),
    }


def run_one(name: str, selection: list, program: list, offered, options: list, work: str) -> dict:
    traces = os.path.join(work, "traces-" + name)
    summary = os.path.join(work, "summary.json")
    t0 = time.monotonic()
    proc = subprocess.run([LANETRACE, "run", "-o", traces, "--json-out", summary, *options, *selection,
                           "--", *program], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    try:
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        with open(summary) as f:
            target = json.load(f)["targets"][0]
        with open(glob.glob(os.path.join(traces, "*", "pid_*", "trace.json"))[0]) as f:
            manifest = json.load(f)
        pool = (manifest.get("registryModes") or {}).get("ringPool") or {}
        ring_bytes = 256 * 1024
        dropped = sum((target.get("drops") or {}).values())
        return {"recorded": target["events"], "dropped": dropped, "offered": offered,
                "drops": {k: v for k, v in (target.get("drops") or {}).items() if v},
                "poolPeakMiB": pool.get("poolPeak", 0) * ring_bytes / (1 << 20),
                "blockedMs": pool.get("blockedMs", 0.0), "wallS": wall}
    finally:
        shutil.rmtree(traces, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=5_000_000, help="hot loop calls (default 5,000,000)")
    ap.add_argument("--only", default="", help="comma-separated workloads")
    ap.add_argument("--no-drop", action="store_true", help="also run each workload with --no-drop")
    ap.add_argument("--no-pool", action="store_true",
                    help="also run each workload without the shared ring pool")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lt-zerodrop-")
    try:
        loads = workloads(args.iters, work)
        names = [n for n in (args.only.split(",") if args.only else loads) if n]
        modes = [("default", [])] + ([("no-pool", ["--ring-budget-mb", "0"])] if args.no_pool else []) + \
            ([("no-drop", ["--no-drop"])] if args.no_drop else [])
        rows = []
        load0 = os.getloadavg()[0]
        for name in names:
            for mode, options in modes:
                r = run_one(name, *loads[name], options, work)
                rows.append(dict(r, workload=name, mode=mode))
                print(f"  {name:<8} {mode:<8} {r}", file=sys.stderr)
        print(f"\nzero drops? load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end "
              f"on {os.cpu_count()} CPUs")
        print(f"{'workload':<9} {'mode':<8} {'recorded':>11} {'dropped':>10} {'drop %':>7} "
              f"{'pool peak MiB':>13} {'blocked ms':>10} {'wall s':>7}  note")
        for r in rows:
            if "error" in r:
                print(f"{r['workload']:<9} {r['mode']:<8} not available ({r['error']})")
                continue
            total = r["recorded"] + r["dropped"]
            note = ""
            if r["offered"] is not None and total != r["offered"] + 2:  # + main's call and return
                note = f"recorded + dropped = {total}, program made {r['offered']} + main"
            print(f"{r['workload']:<9} {r['mode']:<8} {r['recorded']:>11,} {r['dropped']:>10,} "
                  f"{100 * r['dropped'] / max(total, 1):>6.2f}% {r['poolPeakMiB']:>13.1f} "
                  f"{r['blockedMs']:>10.1f} {r['wallS']:>7.2f}  {note or ' '.join(f'{k}={v}' for k, v in r['drops'].items())}")
        if args.json:
            print(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
