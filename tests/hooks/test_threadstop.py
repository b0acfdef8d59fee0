"""Stopping a running program's threads while hooks are written
(lanetrace.injector.threadstop): all of them but the ones asked to keep running, and
every one of them running again afterwards."""
import os
import subprocess
import time

from conftest import example
from lanetrace.injector.threadstop import StoppedThreads


def _states(pid: int) -> dict[int, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out[int(tid)] = f.read().rsplit(") ", 1)[1].split()[0]
    return out


def test_stopped_threads__three_of_four_threads_asked__then_exactly_those_stopped_and_resumed_after():
    proc = subprocess.Popen([example("sleeper"), "30"], stdout=subprocess.PIPE, text=True)
    try:
        while "ready" not in proc.stdout.readline():
            pass
        tids = sorted(_states(proc.pid))
        assert len(tids) == 4
        with StoppedThreads(proc.pid, tids[:-1]) as stopped:
            states = _states(proc.pid)
            assert sorted(stopped.stopped) == tids[:-1]
            assert all(states[t] == "t" for t in tids[:-1])  # stopped by a tracer
            assert states[tids[-1]] != "t"
            assert set(stopped.rips) == set(tids[:-1]) and all(stopped.rips.values())
            rip = next(iter(stopped.rips.values()))
            assert stopped.inside([(1, rip - 1, rip + 1), (2, rip, rip + 5)]) == {1}
        time.sleep(0.2)
        assert all(s != "t" for s in _states(proc.pid).values())
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
