"""Per-call overhead of lanetrace against its peers, side by side in one run.

One workload, examples/bin/hot ITERS (one tiny function called ITERS times on
one thread), run under every variant, several repetitions each, interleaved so
that drift in machine load hits all variants alike. Every figure is the
program's own loop time on CLOCK_MONOTONIC (hot writes it into
$LANETRACE_EXPECT), so spawn, injection and trace flushing are excluded for
all of them; the total wall time of each command is shown too.

Variants (--only takes a comma-separated list of these names):

  untraced        examples/bin/hot, the baseline of every ratio
  lanetrace       lanetrace run -i 'hot!hot_fn' -- examples/bin/hot ITERS
  frida-attach    Interceptor.attach, CModule with empty onEnter/onLeave
  frida-replace   Interceptor.replaceFast to a stub that jumps straight back
  uftrace-P       uftrace record -P hot_fn on hot_pfe (-fpatchable-function-entry=5)
  uftrace-pg      uftrace record on hot_pg (-pg; main and hot_fn are traced)
  untraced-pfe    hot_pfe untraced (its patchable NOPs)
  untraced-pg     hot_pg untraced (glibc's mcount; writes gmon.out in a temp dir)

With --baseline DIR, lanetrace-baseline runs DIR/.venv/bin/lanetrace (another
checkout, built with `make native`) on this checkout's program, in the same
interleaving: before/after figures for a change to the hook path.

A variant that cannot run here (tool missing, lanetrace not working yet) is
reported as "not available (<reason>)" and the others go on.

Usage: python bench/overhead.py [--iters N] [--reps N] [--only a,b,...] [--baseline DIR]
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "examples", "bin")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = sys.executable
LANETRACE = os.path.join(VENV_BIN, "lanetrace")
FRIDA_FLOOR = os.path.join(ROOT, "bench", "frida_floor.py")

VARIANTS = ("untraced", "lanetrace", "frida-attach", "frida-replace",
            "uftrace-P", "uftrace-pg", "untraced-pfe", "untraced-pg")


class Unavailable(Exception):
    """The variant cannot run on this machine; the message says why."""

    def __init__(self, message, proc=None):
        super().__init__(message)
        self.proc = proc


def dir_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def last_line(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Run:
    """One repetition of one variant: its loop time and what it left behind."""

    def __init__(self, loop_ns, cpu_ns, wall_s, trace_bytes=None, note=""):
        self.loop_ns = loop_ns
        self.cpu_ns = cpu_ns
        self.wall_s = wall_s
        self.trace_bytes = trace_bytes
        self.note = note


def run_group(argv, cwd, env, timeout):
    """subprocess.run in a session of its own, so a timeout ends the whole tree
    a tracer started (supervisord and its services), politely first."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_command(argv, iters, cwd, timeout, trace_dir=None):
    """Runs argv, reads the target's loop_ns from its expectation file (or from
    its stdout when a tracer swallowed the environment), checks the call count."""
    expect = os.path.join(cwd, "expect.json")
    env = dict(os.environ, LANETRACE_EXPECT=expect)
    t0 = time.monotonic()
    try:
        proc = run_group(argv, cwd, env, timeout)
    except FileNotFoundError as exc:
        raise Unavailable(f"{argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"timed out after {timeout:.0f} s") from exc
    wall = time.monotonic() - t0
    loop_ns = cpu_ns = None
    if os.path.exists(expect):
        with open(expect) as f:
            data = json.load(f)
        os.unlink(expect)
        loop_ns = data.get("loop_ns")
        cpu_ns = data.get("loop_cpu_ns")
        calls = sum(t["calls"].get("hot_fn", 0) for t in data["threads"])
        if calls != iters:
            raise Unavailable(f"target made {calls} calls, expected {iters}")
    if loop_ns is None:
        m = re.search(r"loop_ns=(\d+)", proc.stdout)
        loop_ns = int(m.group(1)) if m else None
        m = re.search(r"loop_cpu_ns=(\d+)", proc.stdout)
        cpu_ns = int(m.group(1)) if m else None
    if proc.returncode != 0 or loop_ns is None:
        why = last_line(proc.stderr) or f"exit status {proc.returncode}"
        raise Unavailable(why if loop_ns is not None else f"{why}; no loop time reported", proc)
    trace_bytes = dir_bytes(trace_dir) if trace_dir else None
    return Run(loop_ns, cpu_ns, wall, trace_bytes), proc


def variant_plain(binary):
    def run(iters, work, timeout):
        path = os.path.join(BIN, binary)
        if not os.access(path, os.X_OK):
            raise Unavailable(f"{path} missing (make -C examples)")
        return run_command([path, str(iters)], iters, work, timeout)[0]
    return run


def variant_frida(mode):
    def run(iters, work, timeout):
        argv = [PYTHON, FRIDA_FLOOR, "--mode", mode, "--timeout", str(timeout), "--",
                os.path.join(BIN, "hot"), str(iters)]
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout + 30)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise Unavailable(last_line(proc.stderr) or f"exit status {proc.returncode}")
        out = json.loads(proc.stdout)
        calls = sum(t["calls"].get("hot_fn", 0) for t in out["expect"]["threads"])
        if calls != iters:
            raise Unavailable(f"target made {calls} calls, expected {iters}")
        return Run(out["loop_ns"], out["expect"].get("loop_cpu_ns"), wall)
    return run


def variant_uftrace(binary, extra):
    def run(iters, work, timeout):
        uftrace = shutil.which("uftrace")
        if not uftrace:
            raise Unavailable("uftrace not in PATH")
        data = os.path.join(work, "uftrace.data")
        argv = [uftrace, "record", *extra, "-d", data, os.path.join(BIN, binary), str(iters)]
        r, _ = run_command(argv, iters, work, timeout, trace_dir=data)
        # 16-byte entry + 16-byte exit record per call: fewer bytes means LOST.
        expected = 32 * iters
        if r.trace_bytes is not None and r.trace_bytes < expected:
            r.note = f"trace {r.trace_bytes / expected:.0%} of 32 B/call: records lost"
        shutil.rmtree(data, ignore_errors=True)
        return r
    return run


def lanetrace_reason(proc):
    """The CLI's error, plus the underlying cause from the logs it points at."""
    reason = last_line(proc.stderr) or f"exit status {proc.returncode}"
    reason = reason.removeprefix("lanetrace: error: ")
    m = re.search(r"logs are in (\S+)", proc.stderr)
    if m:
        # The logs live in the bench's temp dir, gone after the run.
        reason = reason.replace(f"; logs are in {m.group(1)}", "")
    # The cause is a service's traceback, echoed on stderr or left in a log.
    texts = [("", proc.stderr)]
    if m and os.path.isdir(m.group(1)):
        for name in sorted(os.listdir(m.group(1))):
            try:
                with open(os.path.join(m.group(1), name), errors="replace") as f:
                    texts.append((f"{name}: ", f.read()[-20000:]))
            except OSError:
                pass
    causes = []
    for prefix, text in texts:
        found = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", text, re.M)
        if found and prefix + found[-1] not in causes:
            causes.append(prefix + found[-1])
    if causes:
        reason += " [" + "; ".join(causes[:2]) + "]"
    return reason


def variant_lanetrace(iters, work, timeout, lanetrace=LANETRACE):
    if not os.access(lanetrace, os.X_OK):
        raise Unavailable(f"{lanetrace} missing (make native)")
    probe = subprocess.run([lanetrace, "run", "--help"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    if probe.returncode != 0:
        raise Unavailable("`lanetrace run` missing: " + last_line(probe.stderr))
    traces = os.path.join(work, "traces")
    summary_file = os.path.join(work, "summary.json")
    argv = [lanetrace, "run", "-i", "hot!hot_fn", "-o", traces, "--json-out", summary_file, "--",
            os.path.join(BIN, "hot"), str(iters)]
    try:
        r, proc = run_command(argv, iters, work, timeout, trace_dir=traces)
    except Unavailable as exc:
        reason = None
        if exc.proc is not None and exc.proc.returncode != 0:
            reason = lanetrace_reason(exc.proc)  # reads the logs: before rmtree
        shutil.rmtree(traces, ignore_errors=True)
        if reason:
            raise Unavailable(reason) from None
        raise
    # The summary tells whether the calls were really recorded: a tracer that
    # silently records nothing would otherwise look free.
    try:
        with open(summary_file) as f:
            target = json.load(f)["targets"][0]
    except (OSError, ValueError, KeyError, IndexError):
        shutil.rmtree(traces, ignore_errors=True)
        raise Unavailable("no JSON summary from `lanetrace run --json-out`") from None
    events, drops = target.get("events", 0), target.get("drops") or {}
    notes = [f"events {events}"]
    if events < 2 * iters:
        notes.append(f"< {2 * iters} expected")
    if drops:
        notes.append("drops " + ",".join(f"{k}={v}" for k, v in sorted(drops.items())))
    r.note = "; ".join(notes)
    shutil.rmtree(traces, ignore_errors=True)
    return r


RUNNERS = {
    "untraced": variant_plain("hot"),
    "lanetrace": variant_lanetrace,
    "frida-attach": variant_frida("attach"),
    "frida-replace": variant_frida("replacefast"),
    "uftrace-P": variant_uftrace("hot_pfe", ["-P", "hot_fn"]),
    "uftrace-pg": variant_uftrace("hot_pg", []),
    "untraced-pfe": variant_plain("hot_pfe"),
    "untraced-pg": variant_plain("hot_pg"),
}

DESCRIPTIONS = {
    "untraced": "hot, no tracer",
    "lanetrace": "lanetrace run -i 'hot!hot_fn'",
    "frida-attach": "Interceptor.attach, empty CModule",
    "frida-replace": "Interceptor.replaceFast, jmp back",
    "uftrace-P": "uftrace record -P hot_fn, hot_pfe",
    "uftrace-pg": "uftrace record, hot_pg (-pg)",
    "untraced-pfe": "hot_pfe, no tracer",
    "untraced-pg": "hot_pg, no tracer (mcount)",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Per-call overhead of lanetrace, Frida and uftrace on one hot function, "
        "side by side.")
    ap.add_argument("--iters", type=int, default=10_000_000,
                    help="calls of hot_fn per run (default 10000000)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per variant (default 5)")
    ap.add_argument("--only", default="",
                    help="comma-separated variants to run (untraced is always added): "
                    + ", ".join(VARIANTS))
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds one run may take before it counts as failed (default 300)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another lanetrace checkout, built with `make native`, run as lanetrace-baseline")
    ap.add_argument("--no-corpus", dest="corpus", action="store_false",
                    help="skip the row of fallback hooks over the real-program corpus "
                         "(bench/hookcoverage.py, a few minutes)")
    args = ap.parse_args(argv)
    if args.iters < 1:
        ap.error("--iters must be at least 1")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.only:
        chosen = [v.strip() for v in args.only.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        args.variants = ["untraced"] + [v for v in VARIANTS if v in chosen and v != "untraced"]
    else:
        args.variants = list(VARIANTS)
    if args.baseline:
        lanetrace = os.path.join(os.path.abspath(args.baseline), ".venv", "bin", "lanetrace")
        if not os.access(lanetrace, os.X_OK):
            ap.error(f"--baseline: {lanetrace} missing (run `make native` there)")
        RUNNERS["lanetrace-baseline"] = (
            lambda iters, work, timeout: variant_lanetrace(iters, work, timeout, lanetrace))
        DESCRIPTIONS["lanetrace-baseline"] = f"the same, {os.path.basename(os.path.abspath(args.baseline))}"
        args.variants.insert(args.variants.index("lanetrace") + 1 if "lanetrace" in args.variants else 1,
                             "lanetrace-baseline")
    return args


def build_examples():
    proc = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "examples")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"overhead: building the examples failed:\n{proc.stdout}")


def main(argv=None):
    args = parse_args(argv)
    build_examples()
    results = {v: [] for v in args.variants}
    unavailable = {}
    load = os.getloadavg()[0]
    print(f"hot_fn x {args.iters:,} calls, {args.reps} reps per variant, "
          f"{os.cpu_count()} CPUs; figures are the target's own loop time", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="lanetrace-bench-") as work:
        for rep in range(args.reps):
            for v in args.variants:
                if v in unavailable:
                    continue
                try:
                    r = RUNNERS[v](args.iters, work, args.timeout)
                except Unavailable as exc:
                    unavailable[v] = str(exc)
                    print(f"  rep {rep + 1}: {v}: not available ({exc})", file=sys.stderr)
                    continue
                results[v].append(r)
                print(f"  rep {rep + 1}: {v:<14} {r.loop_ns / 1e6:10.1f} ms", file=sys.stderr)
                # Leftovers of a tracer must not slow the next variant.
                for name in os.listdir(work):
                    p = os.path.join(work, name)
                    if os.path.isdir(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.unlink(p)

    if "untraced" in unavailable or not results["untraced"]:
        sys.exit("overhead: the untraced baseline did not run: "
                 + unavailable.get("untraced", "no result"))
    base = statistics.median(r.loop_ns for r in results["untraced"])
    base_cpus = [r.cpu_ns for r in results["untraced"] if r.cpu_ns is not None]
    base_cpu = statistics.median(base_cpus) if base_cpus else None
    rows = []
    for v in args.variants:
        runs = results[v]
        if v in unavailable and not runs:
            rows.append({"variant": v, "available": False, "reason": unavailable[v]})
            continue
        loop = statistics.median(r.loop_ns for r in runs)
        cpus = [r.cpu_ns for r in runs if r.cpu_ns is not None]
        cpu = statistics.median(cpus) if cpus else None
        sizes = [r.trace_bytes for r in runs if r.trace_bytes is not None]
        notes = sorted({r.note for r in runs if r.note})
        if v in unavailable:
            notes.append(f"failed later: {unavailable[v]}")
        rows.append({
            "variant": v, "available": True, "reps": len(runs),
            "loop_ms": loop / 1e6, "ratio": loop / base,
            "ns_per_call": (loop - base) / args.iters,
            "ns_per_call_total": loop / args.iters,
            "cpu_ns_per_call": (cpu - base_cpu) / args.iters
            if cpu is not None and base_cpu is not None else None,
            "wall_s": statistics.median(r.wall_s for r in runs),
            "trace_bytes_per_call": statistics.median(sizes) / args.iters if sizes else None,
            "spread_pct": (max(r.loop_ns for r in runs) - min(r.loop_ns for r in runs)) / loop * 100,
            "note": "; ".join(notes),
        })

    print()
    print(f"hot_fn overhead, {args.iters:,} calls, median of {args.reps} "
          f"(untraced: {base / args.iters:.2f} ns/call); load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end on {os.cpu_count()} CPUs")
    head = (f"{'variant':<18} {'what':<34} {'loop ms':>9} {'x untraced':>10} "
            f"{'+ns/call':>9} {'+cpu ns':>8} {'spread':>7} {'wall s':>7} {'B/call':>7}  note")
    print(head)
    print("-" * len(head))
    for row in rows:
        if not row["available"]:
            print(f"{row['variant']:<18} {DESCRIPTIONS[row['variant']]:<34} "
                  f"not available ({row['reason']})")
            continue
        bpc = f"{row['trace_bytes_per_call']:.1f}" if row["trace_bytes_per_call"] is not None else "-"
        cpu = f"{row['cpu_ns_per_call']:.1f}" if row["cpu_ns_per_call"] is not None else "-"
        print(f"{row['variant']:<18} {DESCRIPTIONS[row['variant']]:<34} {row['loop_ms']:9.1f} "
              f"{row['ratio']:10.2f} {row['ns_per_call']:9.1f} {cpu:>8} {row['spread_pct']:6.1f}% "
              f"{row['wall_s']:7.2f} {bpc:>7}  {row['note']}")
    corpus = []
    if args.corpus:
        # which path the functions of real programs take (bench/hookcoverage.py)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import hookcoverage
        corpus = hookcoverage.measure()
        fast = sum(r["fast"] for r in corpus)
        fallback = sum(r["fallback"] for r in corpus)
        skipped = sum(r["skipped"] for r in corpus)
        total = fast + fallback + skipped
        print(f"{'fallback':<18} {'corpus functions on attach fallback':<34} "
              f"{fallback:,} of {total:,} selected = {100.0 * fallback / max(total, 1):.2f}% "
              f"(fast {fast:,}, skipped {skipped:,}; {len(corpus)} programs, "
              f"{sum(r['same'] for r in corpus)} behave as untraced)")
    if args.json:
        print(json.dumps({"iters": args.iters, "reps": args.reps, "untraced_ns": base,
                          "untraced_cpu_ns": base_cpu, "load_start": load, "rows": rows,
                          "corpus": corpus}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
