"""Services started by forking supervisord's interpreter instead of exec'ing
a new one.

Each service is its own process either way, a child of supervisord that it
signals, reaps and restarts as before. What changes is the start: a fresh
``python -m lanetrace.writer`` spends ~0.1 s of CPU importing Python,
ZeroMQ, protobuf and the service's own modules, and a session starts five
such processes at once on a machine that may have two cores. Here
supervisord imports those modules once, before it starts anything
(``preload()``), and a service's ``execve`` becomes running its module in
the child supervisord has just forked and set up (process group, stdio
pipes, other descriptors closed, environment, directory).

Only ``python -m MODULE`` commands of this interpreter whose module is a
service of services.py are run this way; any other command is exec'd. The
preloaded modules must start no thread (a fork keeps only the forking
thread): Frida starts its threads at import, so the injector imports Frida
itself, after the fork. If a thread exists anyway, every service is
exec'd as usual.

In the child the interpreter is made to look fresh for the service:
supervisord's signal handlers and wakeup fd are reset, its objects are
frozen out of the garbage collector (a finalizer of one of them must never
close a descriptor the service has opened meanwhile), its exit handlers are
dropped, and stdio is opened again on the new descriptors 0-2 as
``PYTHONUNBUFFERED`` asks. The service ends the way an interpreter does: its
non-daemon threads are joined and its exit handlers run. ``/proc/PID/comm``
names the service (``ps -o comm``); its command line stays supervisord's.
"""
from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import io
import os
import runpy
import signal
import sys
import threading
import traceback

from lanetrace.supervise.services import DAEMON_INJECTOR_MODULE, SERVICES

# The services' modules and what they import; none of it starts a thread. (A
# one-shot session's injector is not supervisord's: lanetrace.supervise.session.)
PRELOAD = ("lanetrace.supervise.broker", "lanetrace.supervise.watchdog", "supervisor.childutils",
           "lanetrace.writer.service", "lanetrace.drainer.drainer")
SERVICE_MODULES = frozenset({s.module for s in SERVICES} | {DAEMON_INJECTOR_MODULE})
# the signals supervisord handles (supervisor.options.ServerOptions.setsignals)
SUPERVISORD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGCHLD, signal.SIGUSR2)
PR_SET_NAME = 15


def preload(modules=PRELOAD) -> bool:
    """Import the services' modules; False (prefork must not be used) if a
    thread is running afterwards."""
    for name in modules:
        importlib.import_module(name)
    return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1


def service_module(filename: str, argv: list[str]) -> str | None:
    """The service module that ``argv`` runs with this interpreter, or None."""
    if len(argv) < 3 or argv[1] != "-m" or argv[2] not in SERVICE_MODULES:
        return None
    try:
        if not os.path.samefile(filename, sys.executable):
            return None
    except OSError:
        return None
    return argv[2]


def run_service(module: str, argv: list[str], env: dict) -> None:
    """In the forked child, in place of execve: run ``python -m module``
    with ``argv[3:]`` and exit with its status. Never returns."""
    code = 1
    try:
        _become_fresh(module, env)
        code = _run_module(module, argv[3:])
    finally:
        os._exit(code)


def _become_fresh(module: str, env: dict) -> None:
    gc.freeze()
    signal.set_wakeup_fd(-1)
    for sig in SUPERVISORD_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit._clear()
    os.environ.clear()
    os.environ.update(env)
    _reopen_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
    _set_comm(module.removeprefix("lanetrace.").replace("supervise.", ""))


def _reopen_stdio(unbuffered: bool) -> None:
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"
    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                             encoding=encoding)

    def writer(fd: int, errors: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        return io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=encoding,
                                errors=errors, write_through=unbuffered,
                                line_buffering=not unbuffered and os.isatty(fd))

    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = writer(1, "strict")
    sys.stderr = sys.__stderr__ = writer(2, "backslashreplace")


def _set_comm(name: str) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run_module(module: str, args: list[str]) -> int:
    sys.argv = [module, *args]  # runpy puts the module's path first, as -m does
    loaded = sys.modules.get(module)
    if loaded is not None and not hasattr(loaded, "__path__"):
        # preloaded under its own name: run as __main__ alone, as ``-m`` does
        del sys.modules[module]
    interrupted = False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        interrupted, code = True, 1
    except BaseException:
        traceback.print_exc()
        code = 1
    _finalize()
    if interrupted:  # as the interpreter does: die of the SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finalize() -> None:
    """What interpreter exit does that a service may rely on."""
    try:
        threading._shutdown()  # join non-daemon threads
    except Exception:
        traceback.print_exc()
    atexit._run_exitfuncs()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
