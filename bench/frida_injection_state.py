"""Does a bare Frida attach + detach change what a running program computes?

A python3.11 recomputes a SHA-256 of a JSON document in a loop and counts the
results that differ from its first one. This script attaches with stock Frida
(an empty script, then detach; no lanetrace code at all) N times, then lets
the program print its count, next to the same program left alone as long.
A non-zero count with Frida is Frida's injection (its ptrace remote calls on a
running thread) changing the thread's state; tests/fidelity/test_attach_rounds.py
reports it as an expected failure for that reason.

Usage: python bench/frida_injection_state.py [--rounds 60]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import frida

WORK = ('import hashlib, json, os, sys\n'
        'def work():\n'
        '    d = {"k%d" % i: [i, str(i) * 40] for i in range(400)}\n'
        '    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()\n'
        'first = work()\n'
        'print("ready", flush=True)\n'
        'runs = mismatches = 0\n'
        'while not os.path.exists(sys.argv[1]):\n'
        '    mismatches += work() != first\n'
        '    runs += 1\n'
        'print(runs, mismatches, flush=True)\n')


def run(rounds: int, hold_s: float, work_dir: str) -> tuple[int, int, float]:
    stop = os.path.join(work_dir, f"stop-{rounds}")
    target = subprocess.Popen(["/usr/bin/python3.11", "-c", WORK, stop],
                              stdout=subprocess.PIPE, text=True)
    target.stdout.readline()
    start = time.monotonic()
    device = frida.get_local_device()
    for _ in range(rounds):
        session = device.attach(target.pid)
        script = session.create_script("")
        script.load()
        session.detach()
    time.sleep(max(0.0, hold_s - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    open(stop, "w").close()
    runs, mismatches = map(int, target.communicate(timeout=60)[0].split())
    return runs, mismatches, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        runs, bad, secs = run(args.rounds, 0.0, work_dir)
        base_runs, base_bad, _ = run(0, secs, work_dir)
    frida.shutdown()
    print(f"{'variant':24s} {'seconds':>8s} {'results':>8s} {'wrong':>6s}")
    print(f"{'untraced':24s} {secs:8.1f} {base_runs:8d} {base_bad:6d}")
    print(f"{f'{args.rounds} Frida attach+detach':24s} {secs:8.1f} {runs:8d} {bad:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
