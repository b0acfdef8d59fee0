"""A capture session under supervisord: generate the session's config, start
supervisord (the real ``supervisor`` package), follow the injector, and shut
everything down so that no process, socket file or shared-memory segment
outlives the session.

supervisord runs in its own process session so that a Ctrl-C on the terminal
reaches only ``lanetrace``, which then stops tracing in order (targets first,
then a final drain, then the services) instead of every process at once.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass

from supervisor.xmlrpc import SupervisorTransport

from lanetrace.core.rundir import RunDir
from lanetrace.supervise.services import GROUP
from lanetrace.supervise.supervisorconf import render_session_config

START_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 60.0


class SessionError(Exception):
    pass


@dataclass
class SessionConfig:
    run_dir: RunDir
    session_id: str
    trace_root: str
    drainers: int = 2
    inline_symbols: bool = False
    spec_path: str | None = None  # the injector's spec; no injector without one


def render_config(cfg: SessionConfig) -> str:
    return render_session_config(cfg.run_dir.path, cfg.session_id, cfg.trace_root, cfg.drainers,
                                 cfg.inline_symbols, cfg.spec_path)


class Supervisor:
    """A supervisord of our own for one session."""

    def __init__(self, cfg: SessionConfig):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.conf_path = cfg.run_dir.file("supervisord.conf")

    def start(self) -> None:
        with open(self.conf_path, "w") as f:
            f.write(render_config(self.cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", self.conf_path],
            start_new_session=True, cwd=self.cfg.run_dir.path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.rpc.supervisor.getState()
                return
            except (OSError, xmlrpc.client.Fault):
                if self.proc.poll() is not None:
                    raise SessionError(f"supervisord exited with status {self.proc.returncode}; "
                                       f"see {self.cfg.run_dir.file('supervisord.log')}") from None
                if time.monotonic() > deadline:
                    raise SessionError("supervisord did not come up within "
                                       f"{START_TIMEOUT_S:.0f}s") from None
                time.sleep(0.05)

    @property
    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.cfg.run_dir.file('supervisord.sock')}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def process_state(self, name: str) -> str:
        return self.rpc.supervisor.getProcessInfo(f"{GROUP}:{name}")["statename"]

    def signal(self, name: str, sig: str) -> None:
        try:
            self.rpc.supervisor.signalProcess(f"{GROUP}:{name}", sig)
        except (OSError, xmlrpc.client.Fault):
            pass  # already stopped

    def wait_until_exited(self, name: str, poll_s: float = 0.1, on_tick=None) -> str:
        while True:
            state = self.process_state(name)
            if state in ("EXITED", "FATAL", "STOPPED"):
                return state
            if on_tick:
                on_tick()
            time.sleep(poll_s)

    def shutdown(self) -> None:
        """Stop every program (reverse priority: injector, drainers, writer,
        broker, each given time to flush) and supervisord itself."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.rpc.supervisor.shutdown()
        except (OSError, xmlrpc.client.Fault):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def remove_run_dir(run_dir: RunDir, keep_logs_in: str | None = None) -> None:
    if keep_logs_in and os.path.isdir(run_dir.logs_dir):
        dest = os.path.join(keep_logs_in, "logs")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir.logs_dir, dest, dirs_exist_ok=True)
        for extra in ("supervisord.log",):
            if os.path.exists(run_dir.file(extra)):
                shutil.copy(run_dir.file(extra), dest)
    shutil.rmtree(run_dir.path, ignore_errors=True)
