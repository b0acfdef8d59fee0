"""The watchdog as supervisord runs it: a real process speaking the event
listener protocol on its stdin/stdout, acting on a real target segment
registered in a run directory (no Frida needed: the segment is created here
as the injector would, and the drainer's heartbeat is written by the test)."""
import os
import select
import subprocess
import sys
import tempfile
import time

import orjson
import pytest

from conftest import wait_until
from lanetrace.core.rundir import RunDir
from lanetrace.core.shm import TargetSegment

WAIT_S = 30.0


def _event(name: str, **fields) -> bytes:
    body = " ".join(f"{k}:{v}" for k, v in fields.items()).encode()
    head = (f"ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1 "
            f"eventname:{name} len:{len(body)}\n").encode()
    return head + body


class Listener:
    def __init__(self, run_dir: RunDir, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanetrace.supervise.watchdog", "--run-dir", run_dir.path, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.buf = b""

    def expect(self, token: bytes) -> None:
        deadline = time.monotonic() + WAIT_S
        while token not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"watchdog did not write {token!r}; got {self.buf!r}"
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"watchdog exited ({self.proc.poll()}); got {self.buf!r}"
                self.buf += chunk
        self.buf = self.buf.split(token, 1)[1]

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def setup():
    path = tempfile.mkdtemp(prefix="ltwd-", dir="/tmp")
    run_dir = RunDir(path).create()
    session = "t" + os.urandom(5).hex()
    pid = 4_000_000 - os.getpid()  # a pid no process has: nothing but us uses it
    seg = TargetSegment.create(session, pid, slots=4, shards=2)
    run_dir.register_target(pid, {"pid": pid, "shm": seg.name, "shards": 2})
    yield run_dir, seg
    seg.unlink()
    seg.close()
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def test_watchdog__drainer_exits__then_its_shard_falls_back_and_returns_on_fresh_heartbeat(setup):
    run_dir, seg = setup
    seg.heartbeat(0, time.monotonic_ns())
    seg.heartbeat(1, time.monotonic_ns())
    before = seg.counters()["fallback_events"]
    wd = Listener(run_dir)
    try:
        wd.expect(b"READY\n")
        wd.send(_event("PROCESS_STATE_EXITED", processname="drainer-1", groupname="lanetrace",
                       from_state="RUNNING", expected=0, pid=12345))
        wd.expect(b"RESULT 2\nOK")
        wd.expect(b"READY\n")
        # Ordered at once: the flag is up by the time the event is acked.
        assert seg.shard_fallback() == [False, True]
        assert seg.counters()["fallback_events"] == before + 1
        # supervisord restarts it; the successor's heartbeat brings shard 1 back.
        wd.send(_event("PROCESS_STATE_STARTING", processname="drainer-1", groupname="lanetrace",
                       from_state="BACKOFF", tries=0))
        wd.expect(b"RESULT 2\nOK")
        time.sleep(0.3)
        assert seg.shard_fallback() == [False, True], "no fresh heartbeat yet"

        def beat_and_check():
            seg.heartbeat(1, time.monotonic_ns())
            return seg.shard_fallback() == [False, False]
        wait_until(beat_and_check, "shard 1 to leave fallback", timeout=WAIT_S)
        wait_until(lambda: os.path.exists(run_dir.file("watchdog.json")), "watchdog.json",
                   timeout=WAIT_S)
        wait_until(lambda: orjson.loads(open(run_dir.file("watchdog.json"), "rb").read())
                   ["events"]["fallbackOff"] == 1, "the state file to count the return", timeout=WAIT_S)
        state = orjson.loads(open(run_dir.file("watchdog.json"), "rb").read())
        assert state["events"]["fallbackOn"] == 1
        assert [e["fallback"] for e in state["history"]] == [True, False]
    finally:
        wd.close()


def test_watchdog__event_of_another_group_or_program__then_nothing_changes(setup):
    run_dir, seg = setup
    wd = Listener(run_dir)
    try:
        wd.expect(b"READY\n")
        for fields in ({"processname": "drainer-0", "groupname": "other"},
                       {"processname": "writer", "groupname": "lanetrace"}):
            wd.send(_event("PROCESS_STATE_EXITED", from_state="RUNNING", expected=0, pid=1,
                           **fields))
            wd.expect(b"RESULT 2\nOK")
        wd.send(_event("TICK_5", when=int(time.time())))
        wd.expect(b"RESULT 2\nOK")
        wd.expect(b"READY\n")
        assert seg.shard_fallback() == [False, False]
    finally:
        wd.close()


def test_watchdog__target_registered_while_shard_down__then_it_starts_in_fallback(setup):
    run_dir, seg = setup
    wd = Listener(run_dir)
    other = None
    try:
        wd.expect(b"READY\n")
        wd.send(_event("PROCESS_STATE_EXITED", processname="drainer-0", groupname="lanetrace",
                       from_state="RUNNING", expected=0, pid=1))
        wd.expect(b"RESULT 2\nOK")
        wd.send(_event("PROCESS_STATE_BACKOFF", processname="drainer-0", groupname="lanetrace",
                       from_state="STARTING", tries=1))
        wd.expect(b"RESULT 2\nOK")
        pid = 4_000_001 - os.getpid()
        other = TargetSegment.create(seg.session_id, pid, slots=4, shards=2)
        run_dir.register_target(pid, {"pid": pid, "shm": other.name, "shards": 2})
        wait_until(lambda: other.shard_fallback() == [True, False], "the new target's fallback",
                   timeout=WAIT_S)
    finally:
        wd.close()
        if other is not None:
            other.unlink()
            other.close()


def test_watchdog__supervisord_closes_stdin__then_it_exits_cleanly(setup):
    run_dir, _ = setup
    wd = Listener(run_dir)
    wd.expect(b"READY\n")
    wd.proc.stdin.close()
    assert wd.proc.wait(WAIT_S) == 0


def test_watchdog__running_drainer_killed__then_fallback_before_supervisord_reports_the_exit(setup):
    run_dir, seg = setup
    drainer = subprocess.Popen(["sleep", "600"])
    wd = Listener(run_dir)
    try:
        wd.expect(b"READY\n")
        wd.send(_event("PROCESS_STATE_RUNNING", processname="drainer-0", groupname="lanetrace",
                       from_state="STARTING", pid=drainer.pid))
        wd.expect(b"RESULT 2\nOK")
        time.sleep(0.2)
        assert seg.shard_fallback() == [False, False]
        drainer.kill()  # SIGKILL; no PROCESS_STATE_EXITED is ever sent here
        wait_until(lambda: seg.shard_fallback() == [True, False], "fallback from the pid watch",
                   timeout=WAIT_S)
    finally:
        wd.close()
        drainer.kill()
        drainer.wait()
