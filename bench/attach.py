"""Attach-to-live times and whole-command wall times of ``lanetrace attach``
and ``lanetrace run``, idle and under load, side by side with Frida's bare
attach (attach + an empty script + detach: the floor any Frida-based tracer
pays).

    .venv/bin/python bench/attach.py [--reps 4] [--concurrent 3] [--json]
                                     [--compare-plan-ahead] [--only idle-many,...]

Scenarios, each run --reps times:

  idle        one ``lanetrace attach -i 'libc.so*!malloc' --duration 2`` to a
              python3.11 that loops over json.dumps (as a user would attach
              to a service)
  loaded      the same while two CPU-bound processes keep both cores busy and
              --concurrent other lanetrace sessions (attach and run) start at
              the same moment
  idle-many,  the same two with python3.11's default selection (the symbols of
  loaded-many the executable, ~1,500 functions) instead of malloc
  idle-2000,  the same two with ~2,000 functions of libcrypto (A-D*, EVP_*) in
  loaded-2000 a python3.11 that loops over hashlib.sha256
  run         ``lanetrace run -- examples/bin/add`` (a trivial program) next
              to the same program untraced
  frida-bare  frida.attach + create_script('') + load + detach on the same
              python3.11 target

Figures (seconds, median and max over the reps):

  live after attach   hooks live (the agent's install() returned), counted
                      from the moment Frida's attach returned
  live after start    the same, counted from the start of the command
  wall                the whole command, start to exit
  plan step           the agent's plan() RPC (init to planned)

--compare-plan-ahead runs every attach scenario with the plan computed in
the injector from the modules' files (after) and with the agent planning
every module inside the target (before, LANETRACE_PLAN_AHEAD=off), one of
each per rep, in alternating order, so both see the same load.

Every attach also checks that it recorded malloc calls, that the target is
still running after the detach, and that a second attach to the same process
works; failures are counted and printed with their message.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
ADD = os.path.join(ROOT, "examples", "bin", "add")
TARGET_PY = "/usr/bin/python3.11"
# Strings longer than pymalloc's 512-byte limit: every dumps calls malloc.
LOOP = ("import json, sys\n"
        "doc = {'k%d' % i: 'v' * 40 for i in range(40)}\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    json.dumps(doc)\n")
# Digests through OpenSSL (hashlib's EVP calls into libcrypto), for the
# 2,000-function selection below.
LOOP_SSL = ("import hashlib, ssl\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    hashlib.sha256(b'x' * 100).hexdigest()\n")
BURN = "while True: pass\n"


def lanetrace(args, out_dir, timeout=300, env=None):
    start = time.monotonic()
    argv = [PYTHON, "-m", "lanetrace", *args[:1], "-o", out_dir, *args[1:]]
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:  # a failure to count, not the end of the benchmark
        proc = subprocess.CompletedProcess(argv, -1, "", f"no result within {timeout} s")
    return proc, time.monotonic() - start


def session_of(out_dir):
    paths = sorted(glob.glob(os.path.join(out_dir, "*", "session.json")))
    if not paths:
        return None
    with open(paths[-1]) as f:
        return json.load(f)


def start_loop_target(program=LOOP):
    proc = subprocess.Popen([TARGET_PY, "-c", program], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the python target did not start")
    return proc


STEPS = ("cliStart", "supervisordUp", "injectorStart", "attachStart", "attached",
         "scriptsLoaded", "allocated", "initialized", "planned", "analysed", "pipelineReady", "published",
         "live")


def steps(target_timings, session_timings):
    """Seconds spent reaching each set-up step from the one before."""
    t = dict(session_timings, **target_timings)
    marks = sorted((t[k], k) for k in STEPS if k in t)
    return {k: (v - marks[i - 1][0]) / 1e9 for i, (v, k) in enumerate(marks) if i}


MALLOC = ["-i", "libc.so*!malloc"]
# ~2,000 of libcrypto's exported functions (those starting A-D, and EVP_*)
CRYPTO_2000 = ["-i", "libcrypto*![A-D]*", "-i", "libcrypto*!EVP_*"]


def attach_once(pid, work, label, selection=MALLOC, plan_ahead=True):
    """One attach; returns a row of figures or the failure. plan_ahead=False:
    the agent plans every module inside the target (LANETRACE_PLAN_AHEAD=off)."""
    out = tempfile.mkdtemp(prefix=f"{label}-", dir=work)
    env = dict(os.environ, LANETRACE_PLAN_AHEAD="on" if plan_ahead else "off")
    proc, wall = lanetrace(["attach", *selection, "--duration", "2", str(pid)], out, env=env)
    row = {"wall": wall, "ok": proc.returncode == 0}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1] + keep_logs(out)
        return row
    session = session_of(out)
    target = session["targets"][0]
    t = target.get("timings", {})
    cli = session.get("timings", {}).get("cliStart")
    if "live" in t and "attached" in t:
        row["liveAfterAttach"] = (t["live"] - t["attached"]) / 1e9
    if "live" in t and cli:
        row["liveAfterStart"] = (t["live"] - cli) / 1e9
    if "planned" in t and "initialized" in t:
        row["plan"] = (t["planned"] - t["initialized"]) / 1e9
    row["steps"] = steps(t, session.get("timings", {}))
    manifest_path = os.path.join(target["traceDir"], "trace.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    calls = sum(fn.get("calls", 0) for fn in manifest.get("topFunctions") or [])
    row["functions"] = manifest.get("functionCount", 0)
    if calls == 0:
        row["ok"] = False
        row["error"] = "no call recorded"
    shutil.rmtree(out, ignore_errors=True)
    return row


def keep_logs(out_dir) -> str:
    """A failed session's logs, kept past the end of the benchmark."""
    kept = tempfile.mkdtemp(prefix="lanetrace-bench-attach-failed-")
    for logs in glob.glob(os.path.join(out_dir, "*", "logs")):
        shutil.copytree(logs, os.path.join(kept, os.path.basename(os.path.dirname(logs))))
    return f" (logs kept in {kept})"


def alive(proc):
    return proc.poll() is None


def _scenario_attach(reps, work, load=0, concurrent=0, selection=MALLOC, program=LOOP,
                    plan_ahead=True):
    rows, failures = [], []
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(load)]
    try:
        for rep in range(reps):
            target = start_loop_target(program)
            others = [start_loop_target() for _ in range(concurrent)]
            try:
                results: dict[int, dict] = {}
                threads = [threading.Thread(target=lambda i=i, p=p: results.__setitem__(
                    i, attach_once(p.pid, work, f"c{i}"))) for i, p in enumerate(others)]
                if concurrent:
                    threads.append(threading.Thread(target=lambda: results.__setitem__(
                        -1, run_once(work, "crun"))))
                for th in threads:
                    th.start()
                row = attach_once(target.pid, work, "main", selection, plan_ahead)
                for th in threads:
                    th.join()
                for k, r in results.items():
                    if not r["ok"]:
                        failures.append(f"concurrent session {k}: {r.get('error')}")
                if row["ok"] and not alive(target):
                    row["ok"], row["error"] = False, f"target died (status {target.poll()})"
                if row["ok"]:  # a second attach to the same process
                    again = attach_once(target.pid, work, "again", selection, plan_ahead)
                    if not again["ok"]:
                        row["ok"], row["error"] = False, f"second attach: {again.get('error')}"
                    elif not alive(target):
                        row["ok"], row["error"] = False, "target died after the second attach"
                for p in others:
                    if not alive(p):
                        failures.append(f"a concurrent target died (status {p.poll()})")
                (rows if row["ok"] else failures).append(row if row["ok"] else
                                                         f"rep {rep + 1}: {row.get('error')}")
            finally:
                for p in [target, *others]:
                    p.kill()
                    p.wait()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    return rows, failures


def run_once(work, label):
    out = tempfile.mkdtemp(prefix=f"{label}-", dir=work)
    proc, wall = lanetrace(["run", "--", ADD], out)
    row = {"wall": wall, "ok": proc.returncode == 0}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    else:
        session = session_of(out)
        t = session["targets"][0].get("timings", {})
        cli = session.get("timings", {}).get("cliStart")
        if "live" in t and "attached" in t:
            row["liveAfterAttach"] = (t["live"] - t["attached"]) / 1e9
        if "live" in t and cli:
            row["liveAfterStart"] = (t["live"] - cli) / 1e9
    shutil.rmtree(out, ignore_errors=True)
    return row


def scenario_run(reps, work):
    rows, failures, untraced = [], [], []
    for rep in range(reps):
        start = time.monotonic()
        subprocess.run([ADD], stdout=subprocess.DEVNULL, check=True)
        untraced.append({"wall": time.monotonic() - start})
        row = run_once(work, "run")
        (rows if row["ok"] else failures).append(row if row["ok"] else
                                                 f"rep {rep + 1}: {row.get('error')}")
    return rows, failures, untraced


def scenario_frida_bare(reps):
    import frida
    rows, failures = [], []
    device = frida.get_local_device()
    for rep in range(reps):
        target = start_loop_target()
        try:
            start = time.monotonic()
            session = device.attach(target.pid)
            attached = time.monotonic()
            script = session.create_script("")
            script.load()
            loaded = time.monotonic()
            session.detach()
            rows.append({"liveAfterAttach": loaded - attached, "wall": time.monotonic() - start})
        except frida.ProcessNotRespondingError as exc:  # Frida's own failure under load
            failures.append(f"rep {rep + 1}: {exc}")
        finally:
            target.kill()
            target.wait()
    return rows, failures


def stats(rows, key):
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return "-"
    return f"{statistics.median(vals):6.2f} / {max(vals):6.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--concurrent", type=int, default=3,
                    help="other sessions started with each loaded attach (default 3)")
    ap.add_argument("--only", default="idle,loaded,idle-many,loaded-many,idle-2000,loaded-2000,"
                                      "run,frida-bare")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare-plan-ahead", action="store_true",
                    help="each attach scenario twice per rep, interleaved: the agent planning "
                         "every module in the target (before) and the injector planning "
                         "ahead from the files (after)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = tempfile.mkdtemp(prefix="lanetrace-bench-attach-")
    results = {}

    def scenario_attach(reps, work, **kw):
        if not args.compare_plan_ahead:
            return _scenario_attach(reps, work, **kw)
        rows = {False: ([], []), True: ([], [])}
        for rep in range(reps):  # interleaved, the order swapped every rep
            for ahead in ((False, True) if rep % 2 == 0 else (True, False)):
                r, f = _scenario_attach(1, work, plan_ahead=ahead, **kw)
                rows[ahead][0].extend(r)
                rows[ahead][1].extend(f)
        return {"before": rows[False], "after": rows[True]}

    try:
        if "idle" in only:
            results["idle attach"] = scenario_attach(args.reps, work)
        if "loaded" in only:
            results["loaded attach"] = scenario_attach(args.reps, work, load=2,
                                                       concurrent=args.concurrent)
        # python3.11's own symbols (its default selection): ~1,500 functions
        if "idle-many" in only:
            results["idle attach, exe"] = scenario_attach(args.reps, work, selection=[])
        if "loaded-many" in only:
            results["loaded attach, exe"] = scenario_attach(args.reps, work, load=2,
                                                            concurrent=args.concurrent,
                                                            selection=[])
        # libcrypto in a python3.11 that digests with hashlib: ~2,000 functions
        if "idle-2000" in only:
            results["idle attach, 2000"] = scenario_attach(args.reps, work, selection=CRYPTO_2000,
                                                           program=LOOP_SSL)
        if "loaded-2000" in only:
            results["loaded attach, 2000"] = scenario_attach(
                args.reps, work, load=2, concurrent=args.concurrent, selection=CRYPTO_2000,
                program=LOOP_SSL)
        if "run" in only:
            rows, failures, untraced = scenario_run(args.reps, work)
            results["run add"] = (rows, failures)
            results["untraced add"] = (untraced, [])
        if "frida-bare" in only:
            results["frida bare attach"] = scenario_frida_bare(args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flat = {}
    for name, res in results.items():
        if isinstance(res, dict):
            flat.update({f"{name} ({k})": v for k, v in res.items()})
        else:
            flat[name] = res
    results = flat
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"lanetrace attach/run times, seconds, median / max of {args.reps} "
          f"(1-min load average at the end: {load})")
    print(f"{'scenario':30s} {'ok':>5s} {'functions':>9s}  {'live after attach':>17s}  "
          f"{'live after start':>17s}  {'wall':>15s}  {'plan step':>15s}")
    for name, (rows, failures) in results.items():
        ok = f"{len(rows)}/{len(rows) + len([f for f in failures if f.startswith('rep')])}"
        funcs = max((r.get("functions", 0) for r in rows), default=0) or ""
        print(f"{name:30s} {ok:>5s} {funcs!s:>9s}  {stats(rows, 'liveAfterAttach'):>17s}  "
              f"{stats(rows, 'liveAfterStart'):>17s}  {stats(rows, 'wall'):>15s}  "
              f"{stats(rows, 'plan'):>15s}")
        for f in failures:
            print(f"    failure: {f}")
        with_steps = [r["steps"] for r in rows if r.get("steps")]
        if with_steps:
            names = [k for k in STEPS if any(k in st for st in with_steps)]
            print("    median s to each step: " + ", ".join(
                f"{k} {statistics.median(st.get(k, 0) for st in with_steps):.2f}"
                for k in names))
    if args.json:
        print(json.dumps({k: {"rows": r, "failures": f} for k, (r, f) in results.items()},
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
