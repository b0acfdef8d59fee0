"""A capture session under supervisord: generate the session's config, start
supervisord (the real ``supervisor`` package) and, next to it, the injector,
follow the injector, and shut everything down so that no process, socket
file or shared-memory segment outlives the session.

supervisord and the injector run in process sessions of their own so that a
Ctrl-C on the terminal reaches only ``lanetrace``, which then stops tracing
in order (targets first, then a final drain, then the services) instead of
every process at once.

The one-shot injector is started by the CLI, not by supervisord, at the same
moment as supervisord: Frida spawns and attaches the target while
supervisord and the services start, on the other core. Nothing is lost by
that: supervisord never restarted it (it owns the session's targets), and
it still lets a target run only once the writer answers and every drainer
drains (``Injector.wait_for_pipeline``).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from lanetrace.core.rundir import RunDir
from lanetrace.supervise.services import GROUP, SERVICES, service_argv
from lanetrace.supervise.supervisorconf import render_session_config

INJECTOR_PID_FILE = "injector.pid"  # in the run directory

START_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 60.0
# supervisord answers ~0.3 s after its fork (it imports the services' modules
# first); each try is a stat of its socket in the new run directory
START_POLL_S = 0.01
FINISHED_POLL_S = 0.01


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


def _rpc_errors() -> tuple[type[BaseException], ...]:
    import xmlrpc.client
    return (OSError, xmlrpc.client.Fault)


class Supervisor:
    """A supervisord of our own for one session
    (lanetrace.supervise.supervisord: it notices a child's exit at once)."""

    def __init__(self, cfg: SessionConfig):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.conf_path = cfg.run_dir.file("supervisord.conf")

    def start(self) -> None:
        with open(self.conf_path, "w") as f:
            f.write(render_config(self.cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanetrace.supervise.supervisord", "--prefork",
             "--owner-pid", str(os.getpid()), "-c", self.conf_path],
            start_new_session=True, cwd=self.cfg.run_dir.path)
        rpc_errors = _rpc_errors()  # imported while supervisord starts
        sock = self.cfg.run_dir.file("supervisord.sock")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if not os.path.exists(sock):  # a stat, not an XML-RPC client, per try
                    raise OSError("not listening yet")
                self.rpc.supervisor.getState()
                return
            except rpc_errors:
                if self.proc.poll() is not None:
                    raise SessionError(f"supervisord exited with status {self.proc.returncode}; "
                                       f"see {self.cfg.run_dir.file('supervisord.log')}") from None
                if time.monotonic() > deadline:
                    raise SessionError("supervisord did not come up within "
                                       f"{START_TIMEOUT_S:.0f}s") from None
                time.sleep(START_POLL_S)

    @property
    def rpc(self):
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport
        transport = SupervisorTransport(None, None, f"unix://{self.cfg.run_dir.file('supervisord.sock')}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def shutdown(self) -> None:
        """Stop every program at once, each given time to flush, and
        supervisord itself. (supervisord's own shutdown stops one group after
        another: the watchdog's only once the others have exited.)"""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            rpc = self.rpc
            for group in (GROUP, *(s.name for s in SERVICES if s.listener)):
                rpc.supervisor.stopProcessGroup(group, False)
            rpc.supervisor.shutdown()
        except _rpc_errors():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class InjectorProcess:
    """The one-shot session's injector, a child of the CLI in its own process
    session; its output goes to ``logs/injector-output.log`` (its own logging
    to ``logs/injector.log``), as when supervisord ran it, and its pid to
    ``injector.pid`` in the run directory."""

    def __init__(self, run_dir: RunDir, session_id: str, spec_path: str):
        self.run_dir = run_dir
        self.argv = service_argv("injector", run_dir.path, {"spec": spec_path})
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", LANETRACE_SESSION=session_id)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(os.path.join(self.run_dir.logs_dir, "injector-output.log"), "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.run_dir.path, env=self.env)
        # who finishes a session whose lanetrace was killed signals it by this
        with open(self.run_dir.file(INJECTOR_PID_FILE), "w") as f:
            f.write(f"{self.proc.pid}\n")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, poll_s: float = 0.1, on_tick=None, finished=None) -> str:
        """Wait for the injector to end ("EXITED"); ``on_tick`` runs every
        ``poll_s``. ``finished()``, checked every FINISHED_POLL_S, may end the
        wait earlier ("FINISHED"): it has done its work and is only tearing
        Frida down."""
        step = min(poll_s, FINISHED_POLL_S) if finished else poll_s
        pidfd = _pidfd_of(self.proc.pid)
        next_tick = time.monotonic() + poll_s
        try:
            while True:
                if finished and finished():
                    return "FINISHED"
                if pidfd is not None:
                    if select.select([pidfd], [], [], step)[0]:
                        self.proc.wait()
                        return "EXITED"
                elif self.proc.poll() is not None:
                    return "EXITED"
                else:
                    time.sleep(step)
                if on_tick and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + poll_s
                    on_tick()
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def stop(self) -> None:
        """Ask it to stop (its targets end or are detached, the rest is
        drained), as supervisord's stop did."""
        self.signal(signal.SIGTERM)

    def reap(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Wait for its exit; killed (with anything left in its process
        group) when it takes longer than ``timeout``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _pidfd_of(pid: int) -> int | None:
    """A pidfd of pid (readable once it has ended), or None where pidfds
    are missing or the process is already gone."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def remove_run_dir(run_dir: RunDir, keep_logs_in: str | None = None) -> None:
    if keep_logs_in and os.path.isdir(run_dir.logs_dir):
        dest = os.path.join(keep_logs_in, "logs")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir.logs_dir, dest, dirs_exist_ok=True)
        for extra in ("supervisord.log",):
            if os.path.exists(run_dir.file(extra)):
                shutil.copy(run_dir.file(extra), dest)
    shutil.rmtree(run_dir.path, ignore_errors=True)
