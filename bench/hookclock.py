"""Hook cost per call by record clock, on runs that drop nothing, side by side.

examples/bin/hot ITERS under lanetrace with the records stamped by the TSC
(LANETRACE_CLOCK=auto, where the TSC is invariant) and by clock_gettime
(LANETRACE_CLOCK=monotonic), next to uftrace record -P and the untraced
programs, interleaved repetition by repetition so that load drift hits every
variant alike. lanetrace gets a ring pool that holds every record of the run
(--ring-kb/--rings-per-lane), so no run pays the drop path; a run that drops
anyway is reported. Figures are the loop's thread CPU time (hot reports it),
which a loaded machine inflates less than wall time, minus the untraced
program's; the ratio column is against uftrace -P. clock-floor is the hot
loop with no hook at all, each call bracketed by an rdtsc and a 32-byte
record (bench/stampfloor.c): the least a TSC-stamped hook can cost here.

With --baseline DIR, another built checkout of lanetrace (its own
`make native`) runs the same TSC-stamped variant in the same interleaving, on
this checkout's program: before/after figures for a change to the hook path.

Usage: python bench/hookclock.py [--iters N] [--reps N] [--baseline DIR]
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "examples", "bin")
LANETRACE = [sys.executable, "-m", "lanetrace"]
RECORD_BYTES = 32
MAX_RINGS_PER_LANE = 64


def loop_cpu_ns(stdout: str) -> int:
    m = re.search(r"loop_cpu_ns=(\d+)", stdout)
    if not m:
        raise RuntimeError(f"no loop_cpu_ns in the program's output: {stdout[-300:]!r}")
    return int(m.group(1))


def run_plain(binary, iters, work):
    p = subprocess.run([os.path.join(BIN, binary), str(iters)], capture_output=True, text=True, cwd=work)
    return loop_cpu_ns(p.stdout), 0


def run_lanetrace(clock, iters, work, lanetrace=LANETRACE):
    ring_kb, need = 1024, 2 * iters * RECORD_BYTES
    while -(-need // (ring_kb << 10)) + 1 > MAX_RINGS_PER_LANE:
        ring_kb *= 2
    rings = max(8, -(-need // (ring_kb << 10)) + 1)
    out = os.path.join(work, "traces")
    p = subprocess.run([*lanetrace, "run", "-o", out, "--ring-kb", str(ring_kb), "--rings-per-lane", str(rings),
                        "-i", "hot!hot_fn", "--", os.path.join(BIN, "hot"), str(iters)],
                       capture_output=True, text=True, cwd=work,
                       env=dict(os.environ, LANETRACE_CLOCK=clock))
    if p.returncode != 0:
        raise RuntimeError(f"lanetrace run failed: {p.stderr[-500:]}")
    (manifest,) = glob.glob(os.path.join(out, "*", "pid_*", "trace.json"))
    with open(manifest) as f:
        m = json.load(f)
    got = m["registryModes"].get("recordClock")
    want = "monotonic" if clock == "monotonic" else None
    if want and got != want:
        raise RuntimeError(f"records stamped with {got}, asked for {want}")
    return loop_cpu_ns(p.stdout), sum(m["drops"].values())


def run_floor(iters, work):
    exe = os.path.join(work, "stampfloor")
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(ROOT, "bench", "stampfloor.c")], check=True)
    p = subprocess.run([exe, str(iters)], capture_output=True, text=True, cwd=work)
    return loop_cpu_ns(p.stdout), 0


def run_uftrace(iters, work):
    uftrace = shutil.which("uftrace")
    if not uftrace:
        raise RuntimeError("uftrace not in PATH")
    p = subprocess.run([uftrace, "record", "-P", "hot_fn", "-d", os.path.join(work, "uftrace.data"),
                        os.path.join(BIN, "hot_pfe"), str(iters)], capture_output=True, text=True, cwd=work)
    return loop_cpu_ns(p.stdout), 0


VARIANTS = {
    "untraced": (lambda n, w: run_plain("hot", n, w), "hot, no tracer"),
    "untraced-pfe": (lambda n, w: run_plain("hot_pfe", n, w), "hot_pfe, no tracer"),
    "lanetrace-tsc": (lambda n, w: run_lanetrace("auto", n, w), "lanetrace, LANETRACE_CLOCK=auto"),
    "lanetrace-monotonic": (lambda n, w: run_lanetrace("monotonic", n, w), "lanetrace, clock_gettime"),
    "uftrace-P": (lambda n, w: run_uftrace(n, w), "uftrace record -P hot_fn, hot_pfe"),
    "clock-floor": (run_floor, "2 rdtsc + 2 records per call, no hook"),
}
BASELINE = {"uftrace-P": "untraced-pfe"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1_000_000, help="calls of hot_fn per run (default 1,000,000)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per variant (default 5)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another lanetrace checkout, built with `make native`, run as lanetrace-baseline")
    args = ap.parse_args()
    if args.baseline:
        python = os.path.join(os.path.abspath(args.baseline), ".venv", "bin", "python")
        if not os.access(python, os.X_OK):
            ap.error(f"--baseline: {python} missing (run `make native` there)")
        VARIANTS["lanetrace-baseline"] = (
            lambda n, w: run_lanetrace("auto", n, w, [python, "-m", "lanetrace"]),
            f"{os.path.basename(os.path.abspath(args.baseline))}, CLOCK=auto")
    cpu = {v: [] for v in VARIANTS}
    drops = {v: 0 for v in VARIANTS}
    failed = {v: [] for v in VARIANTS}
    print(f"hot_fn x {args.iters:,} calls, {args.reps} reps, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    for rep in range(args.reps):
        for name, (run, _) in VARIANTS.items():
            with tempfile.TemporaryDirectory(prefix="lt-hookclock-") as work:
                try:
                    ns, dropped = run(args.iters, work)
                except RuntimeError as exc:  # one failed run does not end the others
                    failed[name].append(str(exc).splitlines()[-1])
                    print(f"  rep {rep + 1}: {name:20s} failed: {failed[name][-1]}", flush=True)
                    continue
            cpu[name].append(ns)
            drops[name] += dropped
            print(f"  rep {rep + 1}: {name:20s} {ns / 1e6:9.1f} ms cpu"
                  + (f", {dropped} dropped" if dropped else ""), flush=True)
    per_call = {}
    for name in [v for v in VARIANTS if not cpu[v]]:
        print(f"{name}: no run succeeded: {failed[name][-1]}")
        del VARIANTS[name]
    for name in VARIANTS:
        base = statistics.median(cpu[BASELINE.get(name, "untraced")])
        per_call[name] = (statistics.median(cpu[name]) - base) / args.iters
    ref = per_call.get("uftrace-P", float("nan"))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end; +cpu ns/call = median loop CPU time minus "
          f"the untraced program's, per call")
    print(f"{'variant':20s} {'what':36s} {'+cpu ns/call':>12s} {'min':>6s} {'x uftrace-P':>11s} {'dropped':>8s}")
    for name, (_, what) in VARIANTS.items():
        if name.startswith("untraced"):
            continue
        ratio = per_call[name] / ref if ref > 0 else float("nan")
        # the least-disturbed repetition: on a shared machine, a floor for the median
        least = (min(cpu[name]) - min(cpu[BASELINE.get(name, "untraced")])) / args.iters
        print(f"{name:20s} {what:36s} {per_call[name]:12.1f} {least:6.1f} {ratio:11.2f} {drops[name]:8d}"
              + (f"  ({len(failed[name])} runs failed)" if failed[name] else ""))


if __name__ == "__main__":
    main()
