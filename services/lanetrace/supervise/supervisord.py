"""supervisord as the ``supervisor`` package ships it, woken by signals.

    python -m lanetrace.supervise.supervisord [--prefork] [--owner-pid PID] -c CONF

supervisord reaps its children only when its main loop comes round, and the
loop sleeps in poll() for up to a second: Python retries a poll that a signal
interrupted (PEP 475), so a child's SIGCHLD does not end the wait. Every
exit is then seen up to a second late: a killed writer or broker is
restarted late, a one-shot session notices its injector's end late, and a
shutdown waits a tick per process group.

Here the C-level signal handler also writes to a self-pipe
(``signal.set_wakeup_fd``) whose read end sits in the loop's poll set, so
the poll returns at once on SIGCHLD (and SIGTERM, SIGHUP...). Reading the
pipe reaps the children at once: the loop runs the processes' transitions
before its own reap, so an exit reaped only there would be restarted one
poll (a second) later.

With ``--prefork`` the services are started by forking this interpreter
after it imported their modules, instead of exec'ing a new Python each
(lanetrace.supervise.prefork). With ``--owner-pid`` the session ends itself
once that process (the CLI) and then the injector have ended (ExitWatch).
Nothing else of supervisord changes."""
from __future__ import annotations

import os
import signal
import sys

from supervisor import options as supervisor_options
from supervisor import supervisord

from lanetrace.core.stopsignal import drain_pipe
from lanetrace.supervise import prefork
from lanetrace.supervise.session import INJECTOR_PID_FILE


class PolledFd:
    """An fd in the shape of the asyncore dispatchers that supervisord's loop
    polls: readable() always, handle_read_event() when it is."""

    def __init__(self, fd: int):
        self.fd = fd

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        raise NotImplementedError

    def handle_error(self) -> None:
        pass

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class SignalWakeup(PolledFd):
    """The read end of the wakeup pipe."""

    def __init__(self, fd: int):
        super().__init__(fd)
        self.supervisor = None  # the running Supervisor, set by runforever()

    def handle_read_event(self) -> None:
        drain_pipe(self.fd)
        if self.supervisor is not None:
            self.supervisor.reap()


_stock_setsignals = supervisor_options.ServerOptions.setsignals


def setsignals(self) -> None:
    _stock_setsignals(self)
    socket_map = self.get_socket_map()
    # A reload (SIGHUP) comes here again after closing every fd above 2;
    # a stale entry would be polled as an invalid fd forever.
    for fd, dispatcher in list(socket_map.items()):
        if isinstance(dispatcher, SignalWakeup):
            del socket_map[fd]
            try:
                dispatcher.close()
            except OSError:
                pass
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    socket_map[read_fd] = SignalWakeup(read_fd)


class ExitWatch(PolledFd):
    """A pidfd in supervisord's poll set: readable once that process ended.
    The session's owner (the ``lanetrace`` CLI) ending first, killed, leaves
    nobody to stop the session: then, once the injector has also finished
    (it ends with its targets and has everything drained and written), this
    supervisord stops its programs and exits as on SIGTERM."""

    def __init__(self, socket_map: dict, pid: int, then):
        super().__init__(os.pidfd_open(pid))
        self.socket_map = socket_map
        self.then = then

    def handle_read_event(self) -> None:
        self.socket_map.pop(self.fd, None)
        self.close()
        self.then()


def _watch(socket_map: dict, pid: int, then) -> None:
    try:
        watch = ExitWatch(socket_map, pid, then)
    except ProcessLookupError:
        then()
        return
    socket_map[watch.fd] = watch


def _injector_pid() -> int | None:
    """The one-shot injector the CLI started (run directory = cwd)."""
    try:
        with open(INJECTOR_PID_FILE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _stop_session() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _owner_gone(socket_map: dict) -> None:
    injector = _injector_pid()
    if injector is None:
        _stop_session()
    else:
        _watch(socket_map, injector, _stop_session)


_stock_runforever = supervisord.Supervisor.runforever
_owner_pid: int | None = None


def runforever(self) -> None:
    socket_map = self.options.get_socket_map()
    for dispatcher in socket_map.values():
        if isinstance(dispatcher, SignalWakeup):
            dispatcher.supervisor = self
    if _owner_pid is not None and not any(isinstance(d, ExitWatch) for d in socket_map.values()):
        _watch(socket_map, _owner_pid, lambda: _owner_gone(socket_map))
    _stock_runforever(self)


_stock_execve = supervisor_options.ServerOptions.execve


def execve_preforked(self, filename, argv, env):
    """In the forked child: a service module runs here, anything else is exec'd."""
    module = prefork.service_module(filename, argv)
    if module is None:
        return _stock_execve(self, filename, argv, env)
    prefork.run_service(module, argv, env)


def main(argv: list[str] | None = None) -> None:
    global _owner_pid
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--owner-pid" in argv:
        at = argv.index("--owner-pid")
        _owner_pid = int(argv[at + 1])
        del argv[at:at + 2]
    if "--prefork" in argv:
        argv.remove("--prefork")
        if prefork.preload():
            supervisor_options.ServerOptions.execve = execve_preforked
        else:
            print("lanetrace.supervise.supervisord: a thread runs after the preload; "
                  "services are exec'd", file=sys.stderr)
    supervisor_options.ServerOptions.setsignals = setsignals
    supervisord.Supervisor.runforever = runforever
    supervisord.main(argv)


def exit_now() -> None:
    """supervisord has stopped its programs, removed its socket and pid
    file and closed its logs: skip tearing down the interpreter (tens of
    milliseconds with every service's module loaded), which a session's
    shutdown would wait for."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_now()
