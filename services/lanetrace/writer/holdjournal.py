"""The write-ahead journal of what a trace's encoder holds (tracefile.py):
calls, returns and detail records the writer acked but has not written to
``events.bin`` yet, because their detail may still come. Acked means
durable, so each batch reaches the journal before its ack; after a SIGKILL
the restarted writer replays the journal into a fresh hold, and what the
file already has is dropped by sequence number as usual.

Segments ``held.<n>.journal`` in the trace directory, rotated every
ROTATE_NS: every record of a segment closed at C has a timestamp before C,
so once the release horizon passes C the whole segment is in ``events.bin``
and the segment is deleted. A torn last entry (killed mid-append, never
acked) ends a segment's replay.
"""
from __future__ import annotations

import glob
import os
import struct
import time

import orjson

ROTATE_NS = 1_000_000_000
_HEAD = struct.Struct("<cI")  # kind b"I" (index records) or b"D" (detail), payload length
_DETAIL = struct.Struct("<BI")  # keep_all, length of the windows' JSON


class HoldJournal:
    def __init__(self, trace_dir: str):
        self.dir = trace_dir
        self.closed: list[tuple[str, int]] = []  # (path, closed at, monotonic ns)
        self.fd = -1
        self.path = ""
        self.opened_ns = 0
        self.next_n = 1 + max((self._number(p) for p in self.existing()), default=0)

    @staticmethod
    def _number(path: str) -> int:
        return int(os.path.basename(path).split(".")[1])

    def existing(self) -> list[str]:
        paths = glob.glob(os.path.join(self.dir, "held.*.journal"))
        return sorted(paths, key=self._number)

    # -- appending -------------------------------------------------------------
    def _segment(self) -> int:
        now = time.monotonic_ns()
        if self.fd >= 0 and now - self.opened_ns >= ROTATE_NS:
            os.close(self.fd)
            self.closed.append((self.path, now))
            self.fd = -1
        if self.fd < 0:
            self.path = os.path.join(self.dir, f"held.{self.next_n}.journal")
            self.next_n += 1
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o644)
            self.opened_ns = now
        return self.fd

    def _write(self, parts) -> None:
        data = b"".join(parts)
        view = memoryview(data)
        fd = self._segment()
        while view:
            view = view[os.write(fd, view):]

    def add_index(self, payload) -> None:
        self._write((_HEAD.pack(b"I", len(payload)), payload))

    def add_detail(self, payload, keep_all: bool, windows: list[dict]) -> None:
        win = orjson.dumps(windows)
        self._write((_HEAD.pack(b"D", len(payload)), _DETAIL.pack(int(keep_all), len(win)),
                     win, payload))

    # -- forgetting --------------------------------------------------------------
    def released_until(self, horizon_ns: int) -> None:
        """Everything up to ``horizon_ns`` is in events.bin."""
        keep = []
        for path, closed_ns in self.closed:
            if closed_ns < horizon_ns:
                _unlink(path)
            else:
                keep.append((path, closed_ns))
        self.closed = keep

    def clear(self) -> None:
        """Nothing is held any more: every segment can go."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.closed.append((self.path, 0))
        for path, _ in self.closed:
            _unlink(path)
        self.closed = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- replay -------------------------------------------------------------------
    def replay(self):
        """Yield ("index", payload) and ("detail", payload, keep_all, windows)
        from the segments a killed writer left, oldest first; they count as
        closed now."""
        now = time.monotonic_ns()
        for path in self.existing():
            with open(path, "rb") as f:
                data = f.read()
            pos = 0
            while pos + _HEAD.size <= len(data):
                kind, length = _HEAD.unpack_from(data, pos)
                pos += _HEAD.size
                if kind == b"I":
                    if pos + length > len(data):
                        break
                    yield "index", data[pos:pos + length]
                    pos += length
                    continue
                if pos + _DETAIL.size > len(data):
                    break
                keep_all, wlen = _DETAIL.unpack_from(data, pos)
                pos += _DETAIL.size
                if pos + wlen + length > len(data):
                    break
                windows = orjson.loads(data[pos:pos + wlen])
                pos += wlen
                yield "detail", data[pos:pos + length], bool(keep_all), windows
                pos += length
            self.closed.append((path, now))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
