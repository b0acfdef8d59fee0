"""Does a bare Frida attach + detach change what a running program computes?

Two running programs, each left alone and then attached N times with stock
Frida (an empty script, then detach; no lanetrace code), with and without
lanetrace's parking of the main thread (injector/attachguard.py) around the
attach:
- examples/bin/vecspin keeps one value in all sixteen ymm registers inside an
  assembly loop and counts the passes in which any changed;
- a python3.11 recomputes a SHA-256 of a JSON document in a loop and counts
  the results that differ from its first one.
Frida runs its bootstrap on the main thread and puts back only the general
registers, so stock attaches change results; parked ones must not.

Usage: python bench/frida_injection_state.py [--rounds 20]
"""
import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import frida

from lanetrace.injector.attachguard import ParkedMainThread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECSPIN = os.path.join(ROOT, "examples", "bin", "vecspin")
HASHER = ('import hashlib, json, os, sys\n'
          'def work():\n'
          '    d = {"k%d" % i: [i, str(i) * 40] for i in range(400)}\n'
          '    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()\n'
          'first = work()\n'
          'print("ready", flush=True)\n'
          'runs = mismatches = 0\n'
          'while not os.path.exists(sys.argv[1]):\n'
          '    mismatches += work() != first\n'
          '    runs += 1\n'
          'print("runs", runs, "wrong", mismatches, flush=True)\n')


def _wait_frida_gone(pid: int) -> None:
    """Frida unloads its agent after detach() returns."""
    for _ in range(2000):
        with open(f"/proc/{pid}/status") as f:
            if any(line.split()[1] == "0" for line in f if line.startswith("TracerPid:")):
                return
        time.sleep(0.005)


def run(program: str, rounds: int, parked: bool, hold_s: float, work_dir: str):
    stop = os.path.join(work_dir, f"stop-{program}-{rounds}-{parked}")
    argv = [VECSPIN, "600"] if program == "vecspin" else ["/usr/bin/python3.11", "-c", HASHER, stop]
    target = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if target.stdout.readline().startswith("no avx2"):
        return None
    start = time.monotonic()
    device = frida.get_local_device()
    for _ in range(rounds):
        with ParkedMainThread(target.pid) if parked else contextlib.nullcontext():
            session = device.attach(target.pid)
            session.create_script("").load()
        session.detach()
        _wait_frida_gone(target.pid)
    time.sleep(max(0.0, hold_s - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    if program == "vecspin":
        target.terminate()
    else:
        open(stop, "w").close()
    words = target.communicate(timeout=60)[0].split()
    return int(words[1]), int(words[3]), elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(f"{'program':10s} {'variant':34s} {'seconds':>8s} {'results':>8s} {'wrong':>6s}")
    with tempfile.TemporaryDirectory() as work_dir:
        for program in ("vecspin", "python3.11"):
            stock = run(program, args.rounds, False, 0.0, work_dir)
            if stock is None:
                print(f"{program:10s} skipped: the CPU has no AVX2")
                continue
            parked = run(program, args.rounds, True, stock[2], work_dir)
            alone = run(program, 0, False, stock[2], work_dir)
            for label, (results, wrong, secs) in (
                    ("untraced", alone),
                    (f"{args.rounds} stock Frida attach+detach", stock),
                    (f"{args.rounds} parked Frida attach+detach", parked)):
                print(f"{program:10s} {label:34s} {secs:8.1f} {results:8d} {wrong:6d}")
    frida.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
