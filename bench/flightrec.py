"""Flight-recorder costs, measured side by side in one run.

1. Per-call overhead of the detail lane: examples/bin/hot ITERS (one tiny
   function, one thread) untraced, traced with the detail lane off, and
   traced with the detail lane on (a trigger that never fires: every ENTRY
   and RETURN also writes a detail record of registers + stack copy, which
   the drainers buffer and discard). Figures are the program's own loop time
   (bench/overhead.py's method), median of --reps, variants interleaved.

2. Sustained throughput: bench/rategen.c (THREADS threads calling work() at
   an exact, paced rate) traced at increasing event rates; for each rate the
   run reports recorded events and drops. The highest rate with zero drops
   is what drainers + writer persist on this machine, with the detail lane
   off and on.

Usage: python bench/flightrec.py [--iters N] [--reps N] [--threads N]
           [--seconds S] [--rates 0.5,1,2,4] (million events/s)
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "examples", "bin")
LANETRACE = os.path.join(ROOT, ".venv", "bin", "lanetrace")

_spec = importlib.util.spec_from_file_location("overhead", os.path.join(ROOT, "bench", "overhead.py"))
overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overhead)

NEVER = "time=86400"  # a trigger that never fires within a benchmark run


def build_rategen(work: str) -> str:
    exe = os.path.join(work, "rategen")
    subprocess.run(["gcc", "-O2", "-g", "-pthread", "-fno-optimize-sibling-calls", "-o", exe,
                    os.path.join(ROOT, "bench", "rategen.c")], check=True)
    return exe


def lanetrace_argv(traces: str, detail: bool, extra=()) -> list:
    argv = [LANETRACE, "run", "-o", traces, "--json-out", summary_path(traces), *extra]
    if detail:
        argv += ["-t", NEVER]
    return argv


def summary_path(traces: str) -> str:
    return os.path.join(os.path.dirname(traces), "summary.json")


def summary_of(proc, traces: str) -> dict:
    try:
        with open(summary_path(traces)) as f:
            return json.load(f)["targets"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise overhead.Unavailable("no JSON summary: " + overhead.last_line(proc.stderr)) from None


def manifest_of(traces: str) -> dict:
    (d,) = glob.glob(os.path.join(traces, "*", "pid_*"))
    with open(os.path.join(d, "trace.json")) as f:
        return json.load(f)


# ---- 1. overhead --------------------------------------------------------------

def hot_variant(name: str, iters: int, work: str, timeout: float):
    hot = os.path.join(BIN, "hot")
    if name == "untraced":
        return overhead.run_command([hot, str(iters)], iters, work, timeout)[0], ""
    traces = os.path.join(work, "traces")
    argv = lanetrace_argv(traces, name == "detail-on", ["-i", "hot!hot_fn"]) + ["--", hot, str(iters)]
    try:
        r, proc = overhead.run_command(argv, iters, work, timeout, trace_dir=traces)
        t = summary_of(proc, traces)
        drops = sum((t.get("drops") or {}).values())
        return r, f"events {t.get('events', 0):,}, drops {drops:,}"
    finally:
        shutil.rmtree(traces, ignore_errors=True)


def bench_overhead(iters: int, reps: int, timeout: float) -> dict:
    names = ("untraced", "detail-off", "detail-on")
    runs = {n: [] for n in names}
    notes = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="lt-bench-fr-") as work:
        for rep in range(reps):
            for n in names:
                try:
                    r, note = hot_variant(n, iters, work, timeout)
                except overhead.Unavailable as exc:
                    print(f"  rep {rep + 1}: {n:<11} not available ({exc})")
                    continue
                runs[n].append(r.loop_ns)
                notes[n].append(note)
                print(f"  rep {rep + 1}: {n:<11} {r.loop_ns / 1e6:9.1f} ms  {note}")
    med = {n: statistics.median(v) for n, v in runs.items() if v}
    base = med.get("untraced")
    out = {}
    for n in names:
        if n not in med:
            continue
        per_call = (med[n] - base) / iters if base is not None else None
        out[n] = {"loopMs": med[n] / 1e6, "nsPerCallAdded": per_call, "notes": notes[n]}
    return out


# ---- 2. sustained throughput --------------------------------------------------

def rate_run(exe: str, threads: int, events_per_s: float, seconds: float, detail: bool,
             work: str, timeout: float) -> dict:
    traces = os.path.join(work, "traces")
    calls_per_thread = events_per_s / 2 / threads
    argv = lanetrace_argv(traces, detail, ["-i", "rategen!work", "--drainers", "2"]) + \
        ["--", exe, str(threads), f"{calls_per_thread:.0f}", str(seconds)]
    try:
        proc = overhead.run_group(argv, work, dict(os.environ), timeout)
        if proc.returncode != 0:
            raise overhead.Unavailable(overhead.last_line(proc.stderr))
        t = summary_of(proc, traces)
        m = manifest_of(traces)
        calls = int(proc.stdout.split("calls=")[1].split()[0])
        drops = sum(v for v in (m.get("drops") or {}).values())
        index_drops = sum(v for k, v in (m.get("drops") or {}).items() if not k.startswith("detail_"))
        return {"eventsPerSec": events_per_s, "detail": detail, "events": 2 * calls,
                "recorded": t.get("events", 0) - 2, "drops": drops, "indexDrops": index_drops,
                "detailDiscarded": m.get("detailDiscarded", 0)}
    finally:
        shutil.rmtree(traces, ignore_errors=True)


def bench_throughput(rates: list, threads: int, seconds: float, timeout: float) -> dict:
    results = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="lt-bench-fr-") as work:
        exe = build_rategen(work)
        for rate in rates:
            for detail in (False, True):
                try:
                    r = rate_run(exe, threads, rate * 1e6, seconds, detail, work, timeout)
                except overhead.Unavailable as exc:
                    print(f"  {rate:5.2f} M events/s detail {'on ' if detail else 'off'}: "
                          f"not available ({exc})")
                    continue
                results["on" if detail else "off"].append(r)
                print(f"  {rate:5.2f} M events/s detail {'on ' if detail else 'off'}: "
                      f"made {r['events']:,}, recorded {r['recorded']:,}, drops {r['drops']:,}"
                      f" (index {r['indexDrops']:,})")
    best = {k: max((r["eventsPerSec"] for r in v if r["indexDrops"] == 0
                    and r["recorded"] == r["events"]), default=0.0)
            for k, v in results.items()}
    return {"runs": results, "maxZeroDropEventsPerSec": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="0.25,0.5,1,2,4",
                    help="event rates to try, in million events/s (ENTRY + RETURN)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "examples")], check=True)
    load = os.getloadavg()[0]
    print(f"flight recorder bench on {os.cpu_count()} CPUs, load average {load:.2f}")
    res = {"loadAverage": load}
    if not args.skip_overhead:
        print(f"\n1. overhead: hot_fn x {args.iters:,}, {args.reps} reps (trigger {NEVER})")
        res["overhead"] = bench_overhead(args.iters, args.reps, args.timeout)
        for n, v in res["overhead"].items():
            add = v["nsPerCallAdded"]
            print(f"   {n:<11} loop {v['loopMs']:9.1f} ms" +
                  (f"   +{add:6.1f} ns/call" if add is not None and n != "untraced" else ""))
    if not args.skip_throughput:
        rates = [float(x) for x in args.rates.split(",") if x]
        print(f"\n2. sustained: rategen, {args.threads} threads, {args.seconds:g} s per run")
        res["throughput"] = bench_throughput(rates, args.threads, args.seconds, args.timeout)
        for k, v in res["throughput"]["maxZeroDropEventsPerSec"].items():
            print(f"   detail {k:<3}: highest rate with zero drops {v / 1e6:.2f} M events/s")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
