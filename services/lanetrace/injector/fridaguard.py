"""A guard against Frida injections that never return.

Rarely (seen a few times on loaded 2-core machines), Frida's spawn/attach
machinery stops forever inside the target: the target waits on a ptrace-
stopped helper child and the Python call that injected it never returns.
Ending the target's process tree unblocks the call with an error, which the
caller turns into a clear message (or, for a target it spawned itself, a
retry) instead of hanging the whole session."""
from __future__ import annotations

import logging
import os
import signal
import threading

from lanetrace.injector import procfs

log = logging.getLogger("lanetrace.injector.fridaguard")

HANG_MESSAGE = "Frida did not finish injecting"


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = procfs.parent_pid(int(entry))
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    for p in [*descendants(pid), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class HangGuard:
    """``with HangGuard(seconds, pid):`` kills pid's process tree if the block
    is still running after ``seconds``; ``fired`` tells afterwards. Without a
    pid it kills the processes this process spawned during the block: Frida's
    local spawn forks the target from us, and the hang can come before the
    spawn call has returned the pid. Never give the pid of a process the user
    asked us to attach to: it is theirs."""

    def __init__(self, seconds: float, pid: int | None = None):
        self.pid = pid
        self.fired = False
        self._before: set[int] = set()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        if self.pid is not None:
            kill_tree(self.pid)
            return
        for child in set(descendants(os.getpid())) - self._before:
            kill_tree(child)

    def __enter__(self) -> "HangGuard":
        if self.pid is None:
            self._before = set(descendants(os.getpid()))
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


FRIDA_RELEASE_TIMEOUT_S = 20.0


def release_frida(timeout: float = FRIDA_RELEASE_TIMEOUT_S) -> None:
    """Let Frida finish with every process it touched before this process
    exits. After a detach, Frida frees its loader inside the target with a
    remote call made through ptrace, whose return address is a dummy one
    that Frida catches as a fault. If this process exits during that call,
    the target is left to take the fault and dies with SIGSEGV. Closing the
    device manager waits for those calls, at most `timeout` seconds."""
    import frida  # only callers that used Frida pay for the import

    done = threading.Event()

    def close() -> None:
        try:
            frida.shutdown()
        finally:
            done.set()

    threading.Thread(target=close, name="frida-release", daemon=True).start()
    if not done.wait(timeout):
        log.warning("Frida did not finish its clean-up in the targets within %.0f s", timeout)
