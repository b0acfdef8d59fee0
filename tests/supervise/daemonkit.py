"""A real lanetrace daemon for a test: its own run directory (short, under
/tmp, for the unix socket paths), trace root and query port, so that tests
running in parallel never share anything; started and stopped through the
real CLI, inspected through supervisord's XML-RPC."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lanetrace(args, *, timeout=180, env=None, check=False):
    proc = subprocess.run([sys.executable, "-m", "lanetrace", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    if check:
        assert proc.returncode == 0, f"lanetrace {' '.join(args)}: {proc.stderr}{proc.stdout}"
    return proc


class Daemon:
    def __init__(self, trace_root: str, drainers: int = 2, extra=()):
        self.run_dir = tempfile.mkdtemp(prefix="ltd-", dir="/tmp")
        self.trace_root = str(trace_root)
        self.drainers = drainers
        self.port = free_port()
        self.extra = list(extra)
        self.conf = os.path.join(self.run_dir, "supervisord.conf")
        self.started = False

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "Daemon":
        proc = lanetrace(["daemon", "start", "--run-dir", self.run_dir, "-o", self.trace_root,
                          "--drainers", str(self.drainers), "--query-bind",
                          f"127.0.0.1:{self.port}", *self.extra], timeout=120)
        self.started = True
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return self

    def stop(self) -> subprocess.CompletedProcess:
        return lanetrace(["daemon", "stop", "--run-dir", self.run_dir], timeout=240)

    def cleanup(self) -> None:
        """Whatever a failed test left running: stop it, then make sure."""
        if self.started and os.path.exists(os.path.join(self.run_dir, "supervisord.sock")):
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                pass
        pid = self._supervisord_pid()
        if pid:
            for p in self._service_pids():
                _kill(p)
            _kill(pid)
        try:
            with open(os.path.join(self.run_dir, "daemon.json")) as f:
                session = json.load(f)["sessionId"]
        except (OSError, ValueError, KeyError):
            session = None
        if session:  # what a daemon killed here could not remove itself
            from lanetrace.core.shm import remove_stale_segments
            remove_stale_segments(session)
            shutil.rmtree(f"/tmp/lanetrace-run-{session}", ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _supervisord_pid(self):
        try:
            with open(os.path.join(self.run_dir, "supervisord.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    # -- supervisord ---------------------------------------------------------------
    @property
    def rpc(self):
        transport = SupervisorTransport(None, None,
                                        f"unix://{os.path.join(self.run_dir, 'supervisord.sock')}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> dict[str, dict]:
        return {f"{i['group']}:{i['name']}": i for i in self.rpc.supervisor.getAllProcessInfo()}

    def _service_pids(self) -> list[int]:
        try:
            return [i["pid"] for i in self.processes().values() if i["pid"]]
        except (OSError, xmlrpc.client.Fault):
            return []

    def pid_of(self, name: str) -> int:
        return self.processes()[name]["pid"]

    def kill9(self, name: str) -> int:
        """SIGKILL one service (e.g. lanetrace:drainer-1); returns its pid."""
        pid = self.pid_of(name)
        assert pid, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int) -> int:
        deadline = time.monotonic() + WAIT_S
        while True:
            info = self.processes()[name]
            if info["statename"] == "RUNNING" and info["pid"] and info["pid"] != old_pid:
                return info["pid"]
            assert time.monotonic() < deadline, f"{name} was not restarted: {info}"
            time.sleep(0.05)

    def supervisorctl(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf,
                               *args], capture_output=True, text=True, timeout=240)

    # -- control ---------------------------------------------------------------------
    def ctl(self, *args, timeout=240, env=None, check=True) -> subprocess.CompletedProcess:
        return lanetrace(["ctl", *args[:1], "--run-dir", self.run_dir, *args[1:]],
                         timeout=timeout, env=env, check=check)

    def spawn(self, argv, expect_path=None, extra=()) -> int:
        env = {"LANETRACE_EXPECT": str(expect_path)} if expect_path else None
        proc = self.ctl("attach", "--json", *extra, "--", *argv, env=env)
        return json.loads(proc.stdout)[0]["pid"]

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json").stdout)

    def session_dir(self) -> str:
        with open(os.path.join(self.run_dir, "daemon.json")) as f:
            cfg = json.load(f)
        return os.path.join(cfg["traceRoot"], cfg["sessionId"])

    def session(self) -> dict:
        with open(os.path.join(self.session_dir(), "session.json")) as f:
            return json.load(f)

    def target_entry(self, pid: int) -> dict | None:
        try:
            doc = self.session()
        except (OSError, ValueError):
            return None
        for t in doc["targets"]:
            if t["pid"] == pid:
                return t
        return None

    def wait_ended(self, pid: int, timeout: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            t = self.target_entry(pid)
            if t and t.get("state") == "ended":
                return t
            assert time.monotonic() < deadline, f"pid {pid} did not end: {t}"
            time.sleep(0.1)

    def trace_dir(self, pid: int) -> str:
        return os.path.join(self.session_dir(), f"pid_{pid}")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(cond, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def leftover_segments(session_id: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if session_id in n]


def traces_of(session_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(session_dir, "pid_*")))
