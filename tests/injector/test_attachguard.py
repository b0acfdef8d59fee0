"""ParkedMainThread around a real Frida attach: the borrowed main thread
continues exactly where it was, a blocked system call still completes as if
nothing happened, a signal sent meanwhile is still handled, and a program
whose interval timer fires every 10 ms can be attached (stock Frida's attach
fails on it)."""
import os
import select
import signal
import subprocess
import sys

import frida
import pytest

from conftest import wait_until
from lanetrace.injector.attachguard import ParkedMainThread

pytestmark = pytest.mark.frida

# Blocked in read(2) on stdin with a SIGUSR1 handler installed (no SA_RESTART:
# Python retries the read itself, PEP 475).
BLOCKED = r'''
import signal, sys
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
print("ready", flush=True)
data = sys.stdin.buffer.read(5)
print(data.decode(), len(got), flush=True)
'''


def _start(source=BLOCKED):
    target = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([target.stdout], [], [], 30)
    assert ready and target.stdout.readline() == b"ready\n"
    return target


def _attach_and_detach(pid, while_parked=None):
    with ParkedMainThread(pid) as parked:
        assert parked.parked
        if while_parked is not None:
            while_parked()
        session = frida.get_local_device().attach(pid)
        session.create_script("").load()
    session.detach()
    _wait_frida_gone(pid)


def _wait_frida_gone(pid, timeout=20.0):
    """Frida unloads its agent after detach() returns (the injector waits for
    it in release_frida); a program that exits before that can crash."""
    def gone():
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return fields["TracerPid"].strip() == "0" and fields["Threads"].strip() == "1"

    wait_until(gone, f"Frida out of pid {pid} after detach", timeout=timeout)


def test_parked_main_thread__blocked_in_read_during_attach__then_read_completes_unchanged():
    target = _start()
    try:
        for _ in range(3):
            _attach_and_detach(target.pid)
        out, err = target.communicate(b"hello", timeout=30)
        assert (target.returncode, out) == (0, b"hello 0\n"), err[-500:]
    finally:
        if target.poll() is None:
            target.kill()


def test_parked_main_thread__signal_sent_while_parked__then_handled_once():
    target = _start()
    try:
        _attach_and_detach(target.pid, lambda: os.kill(target.pid, signal.SIGUSR1))
        out, err = target.communicate(b"hello", timeout=30)
        assert (target.returncode, out) == (0, b"hello 1\n"), err[-500:]
    finally:
        if target.poll() is None:
            target.kill()


def test_parked_main_thread__process_traced_by_another__then_not_parked_and_left_alone():
    sleeper = subprocess.Popen(["sleep", "30"])
    gdbish = subprocess.Popen(["strace", "-qq", "-o", os.devnull, "-p", str(sleeper.pid)])
    try:
        for _ in range(200):  # until strace holds it
            with open(f"/proc/{sleeper.pid}/status") as f:
                if any(line.split()[1] != "0" for line in f if line.startswith("TracerPid:")):
                    break
            select.select([], [], [], 0.01)
        with ParkedMainThread(sleeper.pid) as parked:
            assert not parked.parked
        assert sleeper.poll() is None
    finally:
        gdbish.kill()
        sleeper.kill()


TICKING = r'''
import signal, sys
ticks = []
signal.signal(signal.SIGALRM, lambda s, f: ticks.append(s))
signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
print("ready", flush=True)
data = sys.stdin.buffer.read(5)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(data.decode(), len(ticks) > 0, flush=True)
'''


def test_parked_main_thread__interval_timer_firing_every_10ms__then_attach_succeeds_and_ticks_go_on():
    target = _start(TICKING)
    try:
        for _ in range(3):
            _attach_and_detach(target.pid)
        out, err = target.communicate(b"hello", timeout=30)
        assert (target.returncode, out) == (0, b"hello True\n"), err[-500:]
    finally:
        if target.poll() is None:
            target.kill()
