"""SIGTERM and SIGINT as a stop request that a service waiting in poll() or
select() sees at once.

Python retries a poll or select that a signal interrupted (PEP 475), so a
handler that only sets a flag is noticed when the wait times out: a service
stopped by supervisord would then take up to its poll timeout to exit, and a
session's shutdown waits for the slowest. Here the signal also makes a pipe
readable (``signal.set_wakeup_fd``) that the service polls next to its own
sockets."""
from __future__ import annotations

import os
import signal
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Installs the handlers; ``fd`` turns readable on the first stop signal.
    One per process (the wakeup fd is process-wide)."""

    def __init__(self, on_stop: Callable[[], None] | None = None,
                 signals: tuple[int, ...] = STOP_SIGNALS):
        self.requested = False
        self._on_stop = on_stop
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self._on_stop is not None:
            self._on_stop()

    def drain(self) -> None:
        """Empty the pipe (it is written on every signal that has a handler)."""
        drain_pipe(self.fd)


def drain_pipe(fd: int) -> None:
    """Read a non-blocking pipe until it is empty."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
