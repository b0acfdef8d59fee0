"""Stop a running process' threads around the moment hooks are written, so
that no thread can be halfway through the instructions a patch replaces.

A patch overwrites whole instructions; a thread whose next instruction lies
strictly inside the overwritten bytes would resume in the middle of our jump
and crash. With every thread of the program stopped (ptrace: SEIZE and
INTERRUPT, as a debugger does) the injector reads where each one is, leaves
out of this round the functions some thread is inside of, lets the agent
write the others, and lets the threads go. Frida's own threads (the agent's
JS thread writes the patches) are never stopped.

Used for attached targets; a spawned target is still suspended at its entry
point and needs none of it. The threads stopped are those the process had
before Frida attached (Frida's own cannot be told apart from a thread the
program starts later, so neither is stopped). A thread the program starts
while the others are stopped begins at a function's first instruction, which
a patch may replace whole.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os

log = logging.getLogger("lanetrace.injector.threadstop")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL
_RIP = 16  # index of rip in struct user_regs_struct (x86_64)


def thread_ids(pid: int) -> list[int]:
    """The ids of pid's threads now (empty when the process is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return []


class _Regs(ctypes.Structure):
    _fields_ = [("r", ctypes.c_ulonglong * 27)]


def _ptrace(req: int, tid: int, addr=None, data=None) -> int:
    r = _libc.ptrace(req, tid, addr, data)
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


class StoppedThreads:
    """Context manager: the threads ``tids`` of ``pid`` (the program's, as
    the agent lists them; never Frida's) are stopped inside it. ``rips``
    maps each stopped thread to its next instruction; ``unstoppable`` lists
    the threads that could not be stopped (traced by someone else, or
    gone)."""

    def __init__(self, pid: int, tids):
        self.pid = pid
        self.tids = sorted(set(tids))
        self.stopped: list[int] = []
        self.rips: dict[int, int] = {}
        self.unstoppable: list[int] = []
        self.withheld: dict[int, int] = {}  # tid -> signal it was about to take

    def __enter__(self) -> "StoppedThreads":
        try:
            self._stop_all()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _stop_all(self) -> None:
        for tid in self.tids:
            if os.path.exists(f"/proc/{self.pid}/task/{tid}"):
                self._stop(tid)
        regs = _Regs()
        for tid in self.stopped:
            try:
                _ptrace(PTRACE_GETREGS, tid, None, ctypes.byref(regs))
                self.rips[tid] = regs.r[_RIP]
            except OSError:
                self.unstoppable.append(tid)

    def _stop(self, tid: int) -> None:
        try:
            _ptrace(PTRACE_SEIZE, tid, None, None)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                log.warning("pid %d: thread %d cannot be stopped: %s", self.pid, tid, exc)
            self.unstoppable.append(tid)
            return
        self.stopped.append(tid)
        try:
            _ptrace(PTRACE_INTERRUPT, tid, None, None)
            _, status = os.waitpid(tid, WALL)
        except (OSError, ChildProcessError):
            return  # it exited meanwhile: nothing to stop
        if os.WIFSTOPPED(status) and status >> 16 != PTRACE_EVENT_STOP:
            # stopped on its way to take a signal: it gets it when let go
            self.withheld[tid] = os.WSTOPSIG(status)

    def __exit__(self, *exc) -> None:
        for tid in self.stopped:
            try:
                _ptrace(PTRACE_DETACH, tid, None, self.withheld.get(tid, 0))
            except OSError:
                pass

    def inside(self, ranges: list[tuple[int, int, int]]) -> set[int]:
        """Of (key, lo, hi) ranges, the keys of those some stopped thread is
        strictly inside of (lo < rip < hi): its next instruction is one the
        patch replaces, but not the first."""
        busy = set()
        for rip in self.rips.values():
            for key, lo, hi in ranges:
                if lo < rip < hi:
                    busy.add(key)
        return busy
