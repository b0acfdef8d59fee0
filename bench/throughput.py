"""One table, in one run: what tracing costs and what it keeps, lanetrace next
to its peers, on four workloads, plus the rate the drainers and the writer
sustain on their own.

Workloads (--workloads picks some):

  hot      examples/bin/hot ITERS: one thread calls the ~3 ns hot_fn back to back
  hot2     examples/bin/hot ITERS 2: the same, with a second thread doing it too
  sqlite   sqlite3 :memory: with INSERTS single-row inserts and SELECTS queries,
           hooks on 'libsqlite3*!sqlite3_*'
  workers  examples/bin/workers 4 ITERS, every function of its expectation hooked

Variants (--variants picks some; untraced always runs):

  untraced          the program alone: the baseline of every ratio
  lanetrace         lanetrace run with default options
  lanetrace-nodrop  lanetrace run --no-drop, only where `lanetrace run --help` offers it
  uftrace-P         uftrace record -P (hot_pfe, built with patchable entries; workers
                    through uftrace's full dynamic patching); n/a for sqlite3
  uftrace-pg        uftrace record on hot_pg (-pg); n/a where no -pg build exists
  frida-attach      Frida's stock Interceptor.attach, empty CModule callbacks
                    (bench/frida_floor.py); records nothing

Rounds are interleaved (round 1 of every workload and variant, then round 2,
...) and every figure is a median over the rounds. Columns:

  run ms     the program's own time under the tracer: the loop time hot and
             workers measure themselves (CLOCK_MONOTONIC, in their
             expectation file); for sqlite3, resume to exit (lanetrace: the
             target's `live` timing to its end; Frida: resume to detach;
             untraced: the whole process)
  x untr     run ms / untraced run ms
  +ns/call   (run - untraced run) / calls the variant traces
  +cpu ns    the same on the loop threads' CPU time (hot only: CLOCK_THREAD_CPUTIME_ID),
             which preemption on a loaded machine does not inflate, but which
             leaves out work on other threads and processes (drainers, writers)
  x uft-P    +ns/call / uftrace -P's +ns/call on the same workload
  calls      calls the program made of the traced functions (its expectation
             file; sqlite3 has none: lanetrace's recorded + dropped calls)
  recorded   call and return events in the trace
  drops %    events lost / (2 x calls): lanetrace's drop counters from
             trace.json; uftrace's missing records
  B/event    events.bin bytes / its events (uftrace: *.dat bytes / records)
  ev/s       recorded events / run ms: the rate sustained into the trace
  wall s     the whole command: spawn, injection, flushing, exit

Usage: python bench/throughput.py [--quick] [--rounds N] [--iters N]
           [--workloads hot,hot2,sqlite,workers] [--variants ...] [--no-drain] [--json]
"""
from __future__ import annotations

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
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import overhead  # noqa: E402  (bench/ is not a package)
from overhead import Unavailable, last_line, run_group  # noqa: E402

ROOT = os.path.dirname(BENCH)
BIN = os.path.join(ROOT, "examples", "bin")
LANETRACE = overhead.LANETRACE
PYTHON = sys.executable
FRIDA_FLOOR = os.path.join(BENCH, "frida_floor.py")
SQLITE = shutil.which("sqlite3") or "/usr/bin/sqlite3"

WORKLOADS = ("hot", "hot2", "sqlite", "workers")
VARIANTS = ("untraced", "lanetrace", "lanetrace-nodrop", "uftrace-P", "uftrace-pg",
            "frida-attach")
SQLITE_SELECT = "libsqlite3*!sqlite3_*"
# drop reasons of the index lane: the detail lane and marks are not events
NOT_INDEX_DROPS = ("detail_", "marks_")


class NotApplicable(Exception):
    """The variant cannot trace this workload by design (not a failure)."""


class Sizes:
    def __init__(self, quick: bool, iters: int | None, workers_iters: int | None):
        self.hot = iters or (200_000 if quick else 5_000_000)
        self.workers = workers_iters or (2_000 if quick else 300_000)
        self.inserts, self.selects = (300, 20) if quick else (3_000, 200)


class Result:
    """One run of one variant on one workload."""

    def __init__(self, run_ns, wall_s, calls=None, recorded=None, dropped=None,
                 bytes_per_event=None, note="", cpu_ns=None):
        self.run_ns = run_ns
        self.cpu_ns = cpu_ns
        self.wall_s = wall_s
        self.calls = calls
        self.recorded = recorded
        self.dropped = dropped
        self.bytes_per_event = bytes_per_event
        self.note = note


# ---- workloads ---------------------------------------------------------------

def sqlite_script(work: str, sizes: Sizes) -> str:
    path = os.path.join(work, "bench.sql")
    if not os.path.exists(path):
        lines = ["CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);"]
        lines += [f"INSERT INTO t VALUES({i}, 'row{i:05d}', {i * 1.5});"
                  for i in range(sizes.inserts)]
        lines += [f"SELECT count(*), sum(c) FROM t WHERE b LIKE 'row{i % 10}%';"
                  for i in range(sizes.selects)]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return path


def program(workload: str, sizes: Sizes, work: str, binary: str = "") -> list[str]:
    """argv of the workload; binary overrides the hot executable (hot_pfe, hot_pg)."""
    if workload in ("hot", "hot2"):
        argv = [os.path.join(BIN, binary or "hot"), str(sizes.hot)]
        return argv + (["2"] if workload == "hot2" else [])
    if workload == "workers":
        return [os.path.join(BIN, "workers"), "4", str(sizes.workers)]
    return [SQLITE, "-batch", "-init", "/dev/null", ":memory:",
            ".read " + sqlite_script(work, sizes)]


def expected_calls(expect: dict, functions=None) -> int:
    """Calls the program made of the given functions (all it lists if None)."""
    names = set(expect["functions"]) if functions is None else set(functions)
    return sum(n for t in expect["threads"] for f, n in t["calls"].items() if f in names)


def read_expect(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    os.unlink(path)
    return data


def workers_selection(work: str) -> list[tuple[str, str]]:
    """(module, function) of every function the workers expectation covers,
    from one untraced run (module file names as the program reports them)."""
    path = os.path.join(work, "workers-functions.json")
    if not os.path.exists(path):
        expect = os.path.join(work, "probe-expect.json")
        subprocess.run([os.path.join(BIN, "workers"), "1", "1"], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, LANETRACE_EXPECT=expect))
        with open(path, "w") as f:
            json.dump(read_expect(expect)["functions"], f)
    with open(path) as f:
        return sorted((module, name) for name, module in json.load(f).items())


def run_target(argv, work, timeout, expect_file=True):
    """Runs argv (a tracer command or the program); returns (proc, wall s,
    expectation or None)."""
    expect = os.path.join(work, "expect.json")
    env = dict(os.environ)
    if expect_file:
        env["LANETRACE_EXPECT"] = expect
    t0 = time.monotonic()
    try:
        proc = run_group(argv, work, env, timeout)
    except FileNotFoundError as exc:
        raise Unavailable(f"{argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"timed out after {timeout:.0f} s") from exc
    wall = time.monotonic() - t0
    return proc, wall, read_expect(expect) if expect_file else None


# ---- variants ----------------------------------------------------------------

def run_untraced(workload, sizes, work, timeout, ctx):
    argv = program(workload, sizes, work)
    t0 = time.monotonic_ns()
    proc, wall, expect = run_target(argv, work, timeout, workload != "sqlite")
    if proc.returncode != 0:
        raise Unavailable(last_line(proc.stderr) or f"exit status {proc.returncode}")
    if workload == "sqlite":
        ctx["sqlite_stdout"] = proc.stdout
        return Result(time.monotonic_ns() - t0, wall)
    return Result(expect["loop_ns"], wall, calls=expected_calls(expect, traced_functions(workload)),
                  cpu_ns=expect.get("loop_cpu_ns"))


def traced_functions(workload):
    if workload in ("hot", "hot2"):
        return ["hot_fn"]
    return None  # workers: every function of the expectation


def lanetrace_supports_no_drop() -> bool:
    if not os.access(LANETRACE, os.X_OK):
        return False
    probe = subprocess.run([LANETRACE, "run", "--help"], capture_output=True, text=True)
    return "--no-drop" in probe.stdout


def lanetrace_variant(extra: list[str]):
    def run(workload, sizes, work, timeout, ctx):
        if not os.access(LANETRACE, os.X_OK):
            raise Unavailable(f"{LANETRACE} missing (make native)")
        if workload in ("hot", "hot2"):
            select = ["-i", "hot!hot_fn"]
        elif workload == "workers":
            select = [a for m, f in workers_selection(work) for a in ("-i", f"{m}!{f}")]
        else:
            select = ["-i", SQLITE_SELECT]
        traces = os.path.join(work, "traces")
        argv = [LANETRACE, "run", *extra, *select, "-o", traces, "--json-out",
                os.path.join(work, "summary.json"), "--", *program(workload, sizes, work)]
        try:
            proc, wall, expect = run_target(argv, work, timeout, workload != "sqlite")
            if proc.returncode != 0:
                raise Unavailable(overhead.lanetrace_reason(proc))
            (trace_dir,) = glob.glob(os.path.join(traces, "*", "pid_*"))
            with open(os.path.join(trace_dir, "trace.json")) as f:
                manifest = json.load(f)
            (session_file,) = glob.glob(os.path.join(traces, "*", "session.json"))
            with open(session_file) as f:
                target = json.load(f)["targets"][0]
        finally:
            shutil.rmtree(traces, ignore_errors=True)
        recorded = manifest["callCount"] + manifest["returnCount"]
        dropped = sum(v for k, v in manifest["drops"].items() if not k.startswith(NOT_INDEX_DROPS))
        events_bin = manifest["bytesWritten"]
        per_event = events_bin / manifest["eventCount"] if manifest["eventCount"] else None
        note = []
        # drops at a thread's end leave no gap, so gaps <= drops; more gaps
        # than drops would be records lost without being counted
        if manifest.get("seqGaps", 0) > dropped:
            note.append(f"seqGaps {manifest['seqGaps']:,} > drops {dropped:,}")
        if manifest.get("hooks", {}).get("skipped"):
            note.append(f"{manifest['hooks']['skipped']} functions not hooked")
        if workload == "sqlite":
            if proc.stdout != ctx.get("sqlite_stdout", proc.stdout):
                note.append("output differs from the untraced run")
            run_ns = target["endNs"] - target["timings"]["live"]
            # sqlite3 writes no expectation: the trace's own count is the
            # only one; recorded + dropped events are whole calls
            calls = (recorded + dropped) / 2
            ctx.setdefault("sqlite_calls", []).append(calls)
        else:
            run_ns = expect["loop_ns"]
            calls = expected_calls(expect, traced_functions(workload))
        return Result(run_ns, wall, calls, recorded, dropped, per_event, "; ".join(note),
                      cpu_ns=(expect or {}).get("loop_cpu_ns"))
    return run


def uftrace_variant(binary: str, extra: list[str]):
    def run(workload, sizes, work, timeout, ctx):
        uftrace = shutil.which("uftrace")
        if not uftrace:
            raise Unavailable("uftrace not in PATH")
        if workload == "sqlite":
            raise NotApplicable("uftrace traces a library only when it is built with -pg "
                                "or patchable entries")
        if workload == "workers":
            if binary == "hot_pg":
                raise NotApplicable("no -pg build of workers")
            # full dynamic patching of every function of the executable
            argv_extra, target = ["-P", ".", "--no-libcall"], program(workload, sizes, work)
        else:
            argv_extra, target = extra, program(workload, sizes, work, binary)
        data = os.path.join(work, "uftrace.data")
        argv = [uftrace, "record", *argv_extra, "-d", data, *target]
        try:
            proc, wall, expect = run_target(argv, work, timeout)
            if proc.returncode != 0 or expect is None:
                raise Unavailable(last_line(proc.stderr) or f"exit status {proc.returncode}")
            report = subprocess.run([uftrace, "report", "-d", data, "-f", "call", "--no-pager"],
                                    capture_output=True, text=True, cwd=work)
            dat_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(data, "*.dat")))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        calls_by_fn = {}
        for line in report.stdout.splitlines():
            m = re.match(r"\s*(\d+)\s+(\S.*)$", line)
            if m:
                calls_by_fn[m.group(2).strip()] = int(m.group(1))
        if binary == "hot_pg" and workload != "workers":
            functions = list(expect["functions"])  # -pg: main and hot_thread too
        elif workload == "workers":
            # what -P . patches: the executable's own functions
            functions = [f for f, mod in expect["functions"].items()
                         if mod == os.path.basename(target[0])]
        else:
            functions = traced_functions(workload)
        calls = expected_calls(expect, functions)
        recorded = 2 * sum(calls_by_fn.get(f, 0) for f in functions)
        all_records = 2 * sum(calls_by_fn.values())
        return Result(expect["loop_ns"], wall, calls, recorded, max(0, 2 * calls - recorded),
                      dat_bytes / all_records if all_records else None,
                      cpu_ns=expect.get("loop_cpu_ns"))
    return run


def run_frida(workload, sizes, work, timeout, ctx):
    if workload in ("hot", "hot2"):
        select = ["--select", "hot!hot_fn"]
    elif workload == "workers":
        select = [a for m, f in workers_selection(work) for a in ("--select", f"{m}!{f}")]
    else:
        select = ["--select", SQLITE_SELECT]
    argv = [PYTHON, FRIDA_FLOOR, "--mode", "attach", "--timeout", str(timeout), *select, "--",
            *program(workload, sizes, work)]
    proc, wall, _ = run_target(argv, work, timeout + 30, expect_file=False)
    if proc.returncode != 0:
        raise Unavailable(last_line(proc.stderr) or f"exit status {proc.returncode}")
    out = json.loads(proc.stdout.splitlines()[-1])
    expect = out["expect"]
    if workload == "sqlite":
        calls = statistics.median(ctx["sqlite_calls"]) if ctx.get("sqlite_calls") else None
        return Result(out["run_ns"], wall, calls, note=f"{len(out['hooked'])} functions hooked")
    if expect is None:
        raise Unavailable("the target wrote no expectation (crashed under the hook?)")
    hooked = {h.split("!")[-1] for h in out["hooked"]}
    # plugin_transform lives in a library loaded later: not hooked at start
    calls = expected_calls(expect, [f for f in expect["functions"] if f in hooked])
    return Result(out["loop_ns"], wall, calls, cpu_ns=expect.get("loop_cpu_ns"),
                  note="" if workload != "workers" else f"{len(hooked)} of "
                  f"{len(expect['functions'])} functions hooked (later dlopen not seen)")


RUNNERS = {
    "untraced": run_untraced,
    "lanetrace": lanetrace_variant([]),
    "lanetrace-nodrop": lanetrace_variant(["--no-drop"]),
    "uftrace-P": uftrace_variant("hot_pfe", ["-P", "hot_fn"]),
    "uftrace-pg": uftrace_variant("hot_pg", []),
    "frida-attach": run_frida,
}


# ---- the table ----------------------------------------------------------------

def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: dict, unavailable: dict, workloads, variants) -> list[dict]:
    rows = []
    for w in workloads:
        base_runs = results.get((w, "untraced"), [])
        base = median_or_none(r.run_ns for r in base_runs)
        base_cpu = median_or_none(r.cpu_ns for r in base_runs)
        per_variant = {}
        for v in variants:
            runs = results.get((w, v), [])
            key = (w, v)
            if not runs:
                per_variant[v] = {"workload": w, "variant": v, "available": False,
                                  "reason": unavailable.get(key, "not run")}
                continue
            run_ns = median_or_none(r.run_ns for r in runs)
            cpu_ns = median_or_none(r.cpu_ns for r in runs)
            calls = median_or_none(r.calls for r in runs)
            recorded = median_or_none(r.recorded for r in runs)
            dropped = median_or_none(r.dropped for r in runs)
            row = {"workload": w, "variant": v, "available": True, "rounds": len(runs),
                   "runMs": run_ns / 1e6, "wallS": median_or_none(r.wall_s for r in runs),
                   "calls": calls, "recorded": recorded, "dropped": dropped,
                   "bytesPerEvent": median_or_none(r.bytes_per_event for r in runs),
                   "xUntraced": run_ns / base if base else None,
                   "nsPerCallAdded": (run_ns - base) / calls if base and calls else None,
                   "cpuNsPerCallAdded": (cpu_ns - base_cpu) / calls
                   if cpu_ns is not None and base_cpu is not None and calls else None,
                   "dropsPct": 100.0 * dropped / (2 * calls) if dropped is not None and calls
                   else None,
                   "eventsPerSec": recorded / (run_ns / 1e9) if recorded is not None else None,
                   # every round's own figures, for consistency checks
                   "perRound": [{"calls": r.calls, "recorded": r.recorded, "dropped": r.dropped,
                                 "runNs": r.run_ns} for r in runs],
                   "note": "; ".join(sorted({r.note for r in runs if r.note})
                                     + ([f"failed later: {unavailable[key]}"]
                                        if key in unavailable else []))}
            if v == "untraced":
                row.update(nsPerCallAdded=0.0, xUntraced=1.0,
                           cpuNsPerCallAdded=0.0 if cpu_ns is not None else None)
            per_variant[v] = row
        uft = per_variant.get("uftrace-P", {}).get("nsPerCallAdded")
        for v in variants:
            row = per_variant[v]
            if row.get("available") and v != "untraced":
                add = row["nsPerCallAdded"]
                row["xUftraceP"] = add / uft if add is not None and uft else None
            elif row.get("available"):
                row["xUftraceP"] = None
            rows.append(row)
    return rows


def fmt(value, spec, width):
    return f"{format(value, spec):>{width}}" if value is not None else f"{'-':>{width}}"


def print_table(rows, drain, args, load):
    import drainrate
    print()
    print(f"throughput, median of {args.rounds} interleaved rounds; hot ITERS={args.sizes.hot:,}, "
          f"workers 4 {args.sizes.workers:,}, sqlite3 {args.sizes.inserts:,} inserts + "
          f"{args.sizes.selects:,} selects; load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end, {os.cpu_count()} CPUs")
    head = (f"{'workload':<8} {'variant':<16} {'run ms':>9} {'x untr':>7} {'+ns/call':>9} "
            f"{'+cpu ns':>8} "
            f"{'x uft-P':>7} {'calls':>11} {'recorded':>11} {'drops %':>7} {'B/event':>7} "
            f"{'M ev/s':>7} {'wall s':>7}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["available"]:
            print(f"{r['workload']:<8} {r['variant']:<16} n/a ({r['reason']})")
            continue
        print(f"{r['workload']:<8} {r['variant']:<16} {r['runMs']:9.1f} "
              f"{fmt(r['xUntraced'], '.2f', 7)} {fmt(r['nsPerCallAdded'], '.1f', 9)} "
              f"{fmt(r['cpuNsPerCallAdded'], '.1f', 8)} "
              f"{fmt(r.get('xUftraceP'), '.2f', 7)} {fmt(r['calls'], ',.0f', 11)} "
              f"{fmt(r['recorded'], ',.0f', 11)} {fmt(r['dropsPct'], '.2f', 7)} "
              f"{fmt(r['bytesPerEvent'], '.1f', 7)} "
              f"{fmt(r['eventsPerSec'] / 1e6 if r['eventsPerSec'] is not None else None, '.1f', 7)} "
              f"{fmt(r['wallS'], '.2f', 7)}  {r['note']}")
    if drain is not None:
        for key in ("off", "on"):
            if key not in drain["maxZeroDropPerSec"]:
                continue
            best = drain["maxZeroDropPerSec"][key]
            tried = [r for r in drain["runs"] if r["detail"] == (key == "on")]
            lossy = [r["offeredPerSec"] for r in tried if not r["zeroDrop"]]
            print(f"{'drainers':<8} {'+ writer':<16} detail lane {key:<3}: zero drops up to "
                  f"{best / 1e6:.2f} M events/s offered"
                  + (f" (lost events at {lossy[0] / 1e6:.2f} M/s)" if lossy
                     else " (no lossy rate reached)")
                  + drainrate.cost_text(drain, key)
                  + (f"; failed: {drain['errors'][key]}" if key in drain["errors"] else ""))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and one round: a smoke test of the table, not a measurement")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; "
                    "--quick 1)")
    ap.add_argument("--iters", type=int, default=None,
                    help="hot_fn calls per thread (default 5000000; --quick 200000)")
    ap.add_argument("--workers-iters", type=int, default=None,
                    help="records per worker of `workers 4` (default 300000; --quick 2000)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="untraced always runs: " + ", ".join(VARIANTS))
    ap.add_argument("--no-drain", dest="drain", action="store_false",
                    help="skip the drainers + writer rate (bench/drainrate.py)")
    ap.add_argument("--drain-rates", default=None,
                    help="M events/s to offer the drainers (default 0.25,0.5,1,1.5,2,3,4,6,8,12,16; --quick 1)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.sizes = Sizes(args.quick, args.iters, args.workers_iters)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [w for w in args.workload_list if w not in WORKLOADS] + \
          [v for v in chosen if v not in VARIANTS]
    if bad:
        ap.error(f"unknown workload or variant: {', '.join(bad)}")
    args.variant_list = ["untraced"] + [v for v in VARIANTS if v in chosen and v != "untraced"]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    rates = args.drain_rates or ("1" if args.quick else "0.25,0.5,1,1.5,2,3,4,6,8,12,16")
    args.rates = [float(x) for x in rates.split(",") if x]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    overhead.build_examples()
    load = os.getloadavg()[0]
    unavailable = {}
    if "lanetrace-nodrop" in args.variant_list and not lanetrace_supports_no_drop():
        for w in args.workload_list:
            unavailable[(w, "lanetrace-nodrop")] = "`lanetrace run --help` offers no --no-drop"
    results = {}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lt-bench-throughput-") as work:
        for rnd in range(args.rounds):
            for w in args.workload_list:
                ctx = {}
                for v in args.variant_list:
                    key = (w, v)
                    if key in unavailable:
                        continue
                    try:
                        r = RUNNERS[v](w, args.sizes, work, args.timeout, ctx)
                    except (Unavailable, NotApplicable) as exc:
                        unavailable[key] = str(exc)
                        log(f"  round {rnd + 1} {w:<8} {v:<16} n/a ({exc})")
                        continue
                    results.setdefault(key, []).append(r)
                    log(f"  round {rnd + 1} {w:<8} {v:<16} run {r.run_ns / 1e6:9.1f} ms, "
                        f"wall {r.wall_s:6.2f} s"
                        + (f", recorded {r.recorded:,} dropped {r.dropped:,}"
                           if r.recorded is not None else ""))
        rows = summarize(results, unavailable, args.workload_list, args.variant_list)
    drain = None
    if args.drain:
        import drainrate
        drain = drainrate.measure(args.rates, seconds=0.5 if args.quick else 2.0, log=log)
    print_table(rows, drain, args, load)
    if args.json:
        print(json.dumps({"rounds": args.rounds, "sizes": vars(args.sizes), "loadStart": load,
                          "rows": rows, "drain": drain}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
