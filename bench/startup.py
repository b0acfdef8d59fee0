"""Start-up and restart times: the whole ``lanetrace run`` of a trivial
program next to uftrace and a stock Frida spawn of the same program, and how
fast a killed writer or broker is back.

    .venv/bin/python bench/startup.py [--reps 7] [--restarts 5] [--no-restarts]
                                      [--baseline-src DIR] [--json]

The program is ``examples/bin/branchy good`` (it returns at once) and each
tracer hooks its ``main``. Every variant runs --reps times, interleaved (rep 1
of each, then rep 2, ...), so that the machine's load hits all alike; the
figure is the whole command's wall time, from the fork of the command to its
exit, next to the CPU time (user + sys) it and every process below it used,
which depends little on the machine's load (the wall time of a command
that starts eight Python processes grows with it):

  untraced         examples/bin/branchy good
  uftrace          uftrace record -P main -d <tmp> examples/bin/branchy good
                   (dynamic patching; uftrace's floor for a binary built
                   without -pg)
  frida-spawn      a Python process that imports frida, spawns the program,
                   hooks main with Interceptor.attach (empty callbacks),
                   resumes it and waits for its exit: the floor of any
                   Frida-based tracer, with no pipeline behind it
  lanetrace        lanetrace run -i 'branchy!main' --json -o <tmp> -- examples/bin/branchy good
                   (supervisord, broker, writer, drainers, watchdog,
                   injector, the trace finalized and every service stopped)
  lanetrace-base   with --baseline-src DIR: the same command run from another
                   checkout's services/ directory (PYTHONPATH=DIR, with its
                   native libraries built or copied in), to compare two
                   versions under the same load

For lanetrace the median time from the CLI's start (its module loaded) to
each step is printed too, from the run's session.json timings: supervisord
answering, injector running (it starts next to supervisord), target spawned
and attached, pipeline ready, hooks live, injector exited, every service
stopped; plus the command's own start (interpreter and imports) and its exit
after the services stopped.

Then, on a daemon tracing examples/bin/sleeper (bench/recovery.py), the
writer and the broker are killed with SIGKILL --restarts times each; the
figure is from kill(2) until the new writer's heartbeat arrives and its data
channel acks a ping, and until heartbeats flow through the new broker.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PYTHON = sys.executable
PROGRAM = [os.path.join(REPO, "examples", "bin", "branchy"), "good"]
FUNCTION = "main"

FRIDA_SPAWN = r"""
import sys, threading, frida
device = frida.get_local_device()
pid = device.spawn(sys.argv[1:], stdio="pipe")
session = device.attach(pid)
gone = threading.Event()
session.on("detached", lambda *_: gone.set())
script = session.create_script('''
const fn = Process.mainModule.findSymbolByName(%r) ?? Process.mainModule.findExportByName(%r);
Interceptor.attach(fn, { onEnter() {}, onLeave() {} });
''')
script.load()
device.resume(pid)
gone.wait(60)
""" % (FUNCTION, FUNCTION)

PHASES = ("cliStart", "supervisordUp", "injectorStart", "attached", "pipelineReady", "live",
          "injectorExited", "servicesStopped")


def timed(argv, **kw) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of the command; ``proc.cpu`` is the CPU time (user + sys)
    of the command and of every process below it that was waited for
    (supervisord, the services, Frida's helper), which the machine's load
    hardly changes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300, cwd=REPO, **kw)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, proc


def untraced(work):
    return timed(PROGRAM)


def uftrace(work):
    if not shutil.which("uftrace"):
        raise RuntimeError("uftrace not installed")
    out = tempfile.mkdtemp(dir=work)
    return timed(["uftrace", "record", "-P", FUNCTION, "-d", os.path.join(out, "u"), *PROGRAM])


def frida_spawn(work):
    return timed([PYTHON, "-c", FRIDA_SPAWN, *PROGRAM])


def lanetrace(work, src=None):
    out = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, PYTHONPATH=src) if src else None
    wall, proc = timed([PYTHON, "-m", "lanetrace", "run", "-i", f"branchy!{FUNCTION}", "--json",
                        "-o", out, "--", *PROGRAM], env=env)
    if proc.returncode == 0 and not src:
        proc.phases = phases(out, wall)
    return wall, proc


def phases(out, wall) -> dict:
    """Seconds from the CLI's start (its module loaded) to each step, from
    session.json, and the command's own start and exit outside that span."""
    [path] = glob.glob(os.path.join(out, "*", "session.json"))
    with open(path) as f:
        session = json.load(f)
    t = dict(session.get("timings", {}))
    for target in session.get("targets", []):
        t.update({k: v for k, v in (target.get("timings") or {}).items() if k in PHASES})
    origin = t[PHASES[0]]
    steps = {f"{PHASES[0]} -> {k}": (t[k] - origin) / 1e9 for k in PHASES[1:] if k in t}
    span = (max(t[k] for k in PHASES if k in t) - origin) / 1e9
    steps["command start + exit (outside the above)"] = wall - span
    return steps


VARIANTS = {"untraced": untraced, "uftrace": uftrace, "frida-spawn": frida_spawn,
            "lanetrace": lanetrace}


def run_variants(reps: int, only: list[str], baseline_src: str | None) -> tuple[dict, dict, dict]:
    variants = dict(VARIANTS)
    if baseline_src:
        variants["lanetrace-base"] = lambda work: lanetrace(work, baseline_src)
        only = [*only, "lanetrace-base"]
    walls = {name: [] for name in only}
    cpus = {name: [] for name in only}
    errors: dict[str, str] = {}
    steps: dict[str, list[float]] = {}
    work = tempfile.mkdtemp(prefix="ltstartup-")
    try:
        for _ in range(reps):
            for name in only:
                if name in errors:
                    continue
                try:
                    wall, proc = variants[name](work)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    errors[name] = str(exc)
                    continue
                if proc.returncode != 0:
                    errors[name] = f"exit {proc.returncode}: " + \
                        ((proc.stderr or "").strip().splitlines() or ["?"])[-1]
                    continue
                walls[name].append(wall)
                cpus[name].append(proc.cpu)
                for k, v in getattr(proc, "phases", {}).items():
                    steps.setdefault(k, []).append(v)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return walls, cpus, errors, steps


def restarts(n: int, src: str | None = None) -> dict:
    """Writer and broker kills on a daemon (run from src's services/ if
    given: every process it starts inherits PYTHONPATH)."""
    from recovery import Bench
    saved = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = src
    b = Bench(drainers=2)
    out = {"writer hb": [], "writer acked": [], "broker": []}
    try:
        b.start()
        time.sleep(1.0)
        for _ in range(n):
            w = b.writer()
            out["writer hb"].append(w["fresh"])
            out["writer acked"].append(w["acked"])
            time.sleep(0.5)
            out["broker"].append(b.broker()["fresh"])
            time.sleep(0.5)
    finally:
        b.stop()
        if src:
            os.environ.pop("PYTHONPATH", None)
            if saved is not None:
                os.environ["PYTHONPATH"] = saved
    return out


def fmt(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return f"{'n/a':>8} {'':>8} {'':>8}"
    return f"{statistics.median(vals):8.3f} {min(vals):8.3f} {max(vals):8.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--no-restarts", action="store_true", help="skip the writer/broker kills")
    ap.add_argument("--only", default=",".join(VARIANTS),
                    help=f"comma-separated variants (default: {','.join(VARIANTS)})")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also run lanetrace from this services/ directory (another checkout)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = [v for v in args.only.split(",") if v]
    unknown = [v for v in only if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(unknown)}")
    walls, cpus, errors, steps = run_variants(args.reps, only, args.baseline_src)
    only = list(walls)
    rec = {} if args.no_restarts else {"": restarts(args.restarts)}
    if rec and args.baseline_src:
        rec["base "] = restarts(args.restarts, args.baseline_src)
    if args.json:
        print(json.dumps({"walls": walls, "cpu": cpus, "errors": errors, "lanetracePhases": steps,
                          "restarts": rec}, indent=2))
        return 0
    base = statistics.median(walls["untraced"]) if walls.get("untraced") else None
    print(f"start-up, whole command wall time (s; {args.reps} reps, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'variant':<15} {'median':>8} {'min':>8} {'max':>8} {'x frida':>8} {'cpu s':>8}")
    frida_med = statistics.median(walls["frida-spawn"]) if walls.get("frida-spawn") else None
    for name in only:
        if name in errors and not walls[name]:
            print(f"{name:<15} not available ({errors[name]})")
            continue
        ratio = (f"{statistics.median(walls[name]) / frida_med:8.2f}" if frida_med else "")
        print(f"{name:<15} {fmt(walls[name])} {ratio:>8} {statistics.median(cpus[name]):8.3f}")
        if name in errors:
            print(f"{'':<15} (failed later: {errors[name]})")
    if base is not None:
        print(f"(untraced median {base:.3f} s is in every other row)")
    if steps:
        print("\nlanetrace phases (s)")
        print(f"{'phase':<44} {'median':>8} {'min':>8} {'max':>8}")
        for k, vals in steps.items():
            print(f"{k:<44} {fmt(vals)}")
    if rec:
        print(f"\nrestart after SIGKILL (s; {args.restarts} kills each)")
        print(f"{'what':<50} {'median':>8} {'min':>8} {'max':>8}")
        for tag, r in rec.items():
            print(f"{tag + 'writer: kill -> hb.writer of the new writer':<50} {fmt(r['writer hb'])}")
            print(f"{tag + 'writer: kill -> data-channel ping acked':<50} {fmt(r['writer acked'])}")
            print(f"{tag + 'broker: kill -> heartbeats flow again':<50} {fmt(r['broker'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
