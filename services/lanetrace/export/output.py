"""Output files that appear only when complete, and the progress bar."""
from __future__ import annotations

import os
import sys
import time


class OutputError(Exception):
    """An output path that cannot be written."""


class AtomicOutput:
    """A binary output written to a temp file beside ``path`` and renamed
    into place on ``commit``: a failed or interrupted export never leaves a
    truncated file that looks like a finished one. ``-`` is stdout."""

    BUFFER = 1 << 20

    def __init__(self, path: str):
        self.path = path
        self.bytes_written = 0
        if path == "-":
            self.tmp = None
            self.f = sys.stdout.buffer
            return
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise OutputError(f"cannot write {path}: is a directory")
        if not os.path.isdir(directory):
            raise OutputError(f"cannot write {path}: directory {directory} does not exist")
        self.tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
        try:
            self.f = open(self.tmp, "wb", buffering=self.BUFFER)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None

    def write(self, data: bytes) -> None:
        try:
            self.f.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        self.bytes_written += len(data)

    def commit(self) -> None:
        try:
            self.f.flush()
            if self.tmp is not None:
                os.fsync(self.f.fileno())
                self.f.close()
                os.replace(self.tmp, self.path)
                self.tmp = None
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None

    def abort(self) -> None:
        if self.tmp is None:
            return
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self.tmp = None


class Progress:
    """A one-line bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str, stream=None, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.label = label
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        frac = min(1.0, done / total)
        width = 30
        bar = "#" * int(frac * width)
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {frac * 100:5.1f}% "
                          f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
