"""Keep a running program's main thread whole across Frida's attach.

Frida injects its agent by hijacking the main thread with ptrace: it runs
its bootstrap code there and then puts back only the general registers
(frida-core, src/linux/frida-helper-backend.vala: ``saved_regs`` are
``GPRegs``; its ``get_fpregs``/``set_fpregs`` are never called). The
bootstrap is compiled C that uses the SSE/AVX registers, so a thread caught
in the middle of vector code resumes with other values in them and computes
something else (bench/frida_injection_state.py; tests/fidelity).

``ParkedMainThread`` moves the thread out of the way first: with ptrace it
saves all of the thread's registers (general and XSAVE state), maps one page
holding ``mov eax, SYS_pause; syscall; jmp back`` and lets the thread wait
there. Frida then hijacks a thread whose vector registers hold nothing. On
exit the page is unmapped and the saved registers are put back whole, so the
thread continues exactly where it was. Parked, the thread blocks every
asynchronous signal: one arriving while Frida's bootstrap runs on it makes
stock Frida's attach fail (a program with a 10 ms interval timer cannot be
attached at all). Such signals stay pending and are delivered once the
thread's own mask is back; a signal the parking itself intercepted is sent
again when the thread is let go. Frida's threads, started from the parked
thread, keep that mask, so the program's asynchronous signals go to the
program's own threads.

Best effort: when the thread cannot be parked (traced by someone else,
stopped, or gone), the attach goes ahead as Frida does it and ``parked`` is
False.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import struct
import time

from lanetrace.injector import procfs
from lanetrace.injector.threadstop import (PTRACE_DETACH, PTRACE_EVENT_STOP, PTRACE_GETREGS,
                                           PTRACE_INTERRUPT, PTRACE_SEIZE, WALL, _ptrace, _Regs)

log = logging.getLogger("lanetrace.injector.attachguard")

_libc = ctypes.CDLL(None, use_errno=True)

PTRACE_CONT = 7
PTRACE_SETREGS = 13
PTRACE_SINGLESTEP = 9
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
NT_X86_XSTATE = 0x202
XSTATE_MAX = 1 << 16

# struct user_regs_struct (x86_64)
RAX, RCX, RDX, RSI, RDI, ORIG_RAX, RIP, RSP = 10, 11, 12, 13, 14, 15, 16, 19
R8, R9, R10 = 9, 8, 7
SYS_MMAP, SYS_MUNMAP, SYS_PAUSE, SYS_TGKILL = 9, 11, 34, 234
PAGE = 4096
PARK_CODE = bytes([0xb8, SYS_PAUSE, 0, 0, 0,  # mov eax, SYS_pause
                   0x0f, 0x05,                # syscall
                   0xeb, 0xf7])               # jmp back to the mov
SYSCALL_AT = 5  # offset of the syscall instruction in PARK_CODE
MASKS_AT = 16   # the thread's own signal mask, then the one it parks with
SYS_RT_SIGPROCMASK, SIG_SETMASK = 14, 2
# Parked, the thread takes no asynchronous signal: one arriving while Frida's
# bootstrap runs there makes the attach fail. They stay pending and are
# delivered once the thread's own mask is back. Faults stay deliverable.
_SYNC_SIGNALS = (signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGBUS,
                 signal.SIGFPE, signal.SIGSEGV, signal.SIGSYS)
ASYNC_SIGNALS = ((1 << 64) - 1) & ~sum(1 << (int(s) - 1) for s in _SYNC_SIGNALS)
RED_ZONE = 128
TRACED_WAIT_S = 2.0


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class ParkError(Exception):
    pass


class ParkedMainThread:
    """Context manager around ``device.attach(pid)`` of a running process."""

    def __init__(self, pid: int):
        self.pid = pid
        self.parked = False
        self._signals: list[int] = []
        self._regs = _Regs()
        self._xstate = ctypes.create_string_buffer(XSTATE_MAX)
        self._xstate_len = 0
        self._page = 0
        self._mask = 0

    # ---- ptrace steps ------------------------------------------------------
    def _wait_stopped(self) -> None:
        """Wait for the INTERRUPT's stop. A signal met on the way is withheld
        now and delivered again when the thread is let go."""
        while True:
            _, status = os.waitpid(self.pid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise ParkError("the process ended")
            if status >> 16 == PTRACE_EVENT_STOP:
                return
            self._signals.append(os.WSTOPSIG(status))
            _ptrace(PTRACE_CONT, self.pid, None, None)

    def _stop(self, deadline: float = 0.0) -> None:
        while True:
            try:
                _ptrace(PTRACE_SEIZE, self.pid)
                break
            except OSError as exc:  # EPERM: another tracer got there first
                if exc.errno != errno.EPERM or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        try:
            _ptrace(PTRACE_INTERRUPT, self.pid)
            self._wait_stopped()
        except BaseException:
            self._let_go()
            raise

    def _let_go(self) -> None:
        first, rest = (self._signals[0], self._signals[1:]) if self._signals else (0, [])
        self._signals = []
        try:
            _ptrace(PTRACE_DETACH, self.pid, None, first)
        except OSError:
            pass
        for sig in rest:
            if _libc.syscall(SYS_TGKILL, self.pid, self.pid, sig) != 0:
                log.warning("pid %d: signal %d withheld during the attach could not be sent again",
                            self.pid, sig)

    def _syscall(self, at: int, nr: int, *args: int) -> int:
        """Run one system call in the stopped thread: the syscall instruction
        at ``at`` is single-stepped with nr and args in the registers."""
        regs = _Regs()
        ctypes.memmove(ctypes.byref(regs), ctypes.byref(self._regs), ctypes.sizeof(regs))
        regs.r[ORIG_RAX] = (1 << 64) - 1  # not in a syscall: no restart on resume
        regs.r[RIP] = at
        regs.r[RAX] = nr
        for reg, value in zip((RDI, RSI, RDX, R10, R8, R9), args):
            regs.r[reg] = value & ((1 << 64) - 1)
        _ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        while True:
            _ptrace(PTRACE_SINGLESTEP, self.pid, None, None)
            _, status = os.waitpid(self.pid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise ParkError("the process ended")
            sig = os.WSTOPSIG(status)
            _ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
            if sig == signal.SIGTRAP and regs.r[RIP] == at + 2:
                result = regs.r[RAX]
                return result - (1 << 64) if result >= (1 << 63) else result
            if sig != signal.SIGTRAP:
                self._signals.append(sig)

    def _xstate_io(self, request: int) -> None:
        iov = _IoVec(ctypes.cast(self._xstate, ctypes.c_void_p), self._xstate_len or XSTATE_MAX)
        _ptrace(request, self.pid, NT_X86_XSTATE, ctypes.byref(iov))
        self._xstate_len = iov.len

    def _write(self, addr: int, data: bytes) -> None:
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.pwrite(fd, data, addr) != len(data):
                raise ParkError("short write to the parking page")
        finally:
            os.close(fd)

    def _syscall_instruction(self) -> int:
        """An address of a syscall instruction (0f 05) in the target's code:
        the vDSO is always there and never written."""
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                if line.rstrip().endswith("[vdso]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    break
            else:
                raise ParkError("no vDSO mapped")
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            code = os.pread(fd, hi - lo, lo)
        finally:
            os.close(fd)
        at = code.find(b"\x0f\x05")
        if at < 0:
            raise ParkError("no syscall instruction in the vDSO")
        return lo + at

    # ---- context manager ---------------------------------------------------
    def __enter__(self) -> "ParkedMainThread":
        try:
            self._park()
        except (OSError, KeyError, ParkError) as exc:
            log.info("pid %d: main thread not parked for the attach (%s); Frida's bootstrap "
                     "may change its vector registers", self.pid, exc)
        return self

    def _status(self) -> dict[str, str]:
        """The main thread's /proc status."""
        return procfs.status_fields(self.pid, self.pid)

    def _park(self) -> None:
        # Frida's helper (our child) may still hold it, finishing a detach.
        deadline = time.monotonic() + TRACED_WAIT_S
        while _ours(tracer := int((status := self._status())["TracerPid"])) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        state = status["State"].split()[0]
        if tracer:
            raise ParkError(f"pid {tracer} traces it")
        if state in ("T", "t", "Z", "X"):
            raise ParkError(f"the main thread is in state {state}")
        self._stop(deadline)
        try:
            self._mask = int(self._status()["SigBlk"], 16)  # bit n-1: signal n
            _ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(self._regs))
            self._xstate_len = 0
            self._xstate_io(PTRACE_GETREGSET)
            page = self._syscall(self._syscall_instruction(), SYS_MMAP, 0, PAGE,
                                 0x1 | 0x4,          # PROT_READ | PROT_EXEC
                                 0x02 | 0x20, -1, 0)  # MAP_PRIVATE | MAP_ANONYMOUS
            if page < 0:
                raise ParkError(f"mmap in the target failed: {os.strerror(-page)}")
            self._page = page
            self._write(page, PARK_CODE.ljust(MASKS_AT, b"\xcc")
                        + struct.pack("<QQ", self._mask, self._mask | ASYNC_SIGNALS))
            rc = self._syscall(page + SYSCALL_AT, SYS_RT_SIGPROCMASK, SIG_SETMASK, page + MASKS_AT + 8, 0, 8)
            if rc < 0:
                raise ParkError(f"rt_sigprocmask in the target failed: {os.strerror(-rc)}")
            regs = _Regs()
            ctypes.memmove(ctypes.byref(regs), ctypes.byref(self._regs), ctypes.sizeof(regs))
            regs.r[ORIG_RAX] = (1 << 64) - 1
            regs.r[RIP] = page
            # below the red zone, 16-byte aligned: signal frames go beneath it
            regs.r[RSP] = (self._regs.r[RSP] - RED_ZONE - 64) & ~0xF
            _ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        except BaseException:
            self._restore()
            raise
        self._let_go()
        self.parked = True

    def _restore(self) -> None:
        """In the stopped thread: unmap the page, put every register back."""
        try:
            if self._page:
                self._syscall(self._page + SYSCALL_AT, SYS_RT_SIGPROCMASK, SIG_SETMASK,
                              self._page + MASKS_AT, 0, 8)
                self._syscall(self._page + SYSCALL_AT, SYS_MUNMAP, self._page, PAGE)
                self._page = 0
        finally:
            _ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(self._regs))
            if self._xstate_len:
                self._xstate_io(PTRACE_SETREGSET)
            self._let_go()

    def __exit__(self, *exc) -> None:
        if not self.parked:
            return
        self.parked = False
        try:
            self._stop(time.monotonic() + TRACED_WAIT_S)
            self._restore()
        except (OSError, ParkError) as e:
            if getattr(e, "errno", None) != errno.ESRCH:
                log.warning("pid %d: main thread could not be taken out of its parking loop: %s",
                            self.pid, e)


def _ours(tracer: int) -> bool:
    """Is ``tracer`` this process or a child of it (Frida's helper)?"""
    if not tracer:
        return False
    if tracer == os.getpid():
        return True
    try:
        return procfs.parent_pid(tracer) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False
