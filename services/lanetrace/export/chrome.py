"""Chrome Trace Event Format writer (``{"traceEvents": [...]}``), loadable
by chrome://tracing, ui.perfetto.dev and speedscope.

Slices are complete events (``"ph":"X"``) written when they end, so the file
is valid JSON however the trace ends. Register values become hex strings:
JSON viewers parse numbers as doubles and would round 64-bit values.
``split_bytes`` starts a new, self-contained part (with its own name
metadata) whenever a part grows past that size.
"""
from __future__ import annotations

import os

import orjson

from lanetrace.export.frames import Frame, Sink
from lanetrace.export.output import AtomicOutput
from lanetrace.export.perfetto import thread_label
from lanetrace.export.tracedir import TraceMeta, Window

HEADER = b'{"displayTimeUnit":"ns","traceEvents":[\n'
FOOTER = b"\n]}\n"


def part_path(path: str, index: int) -> str:
    base, ext = os.path.splitext(path)
    return f"{base}.part{index:03d}{ext or '.json'}"


def _hex(regs: dict) -> dict:
    return {k: f"0x{v:x}" for k, v in regs.items()}


class ChromeSink(Sink):
    def __init__(self, path: str, split_bytes: int | None = None):
        self.path = path
        self.split_bytes = split_bytes
        self.pid = 0
        self.outputs: list[AtomicOutput] = []
        self.paths: list[str] = []
        self._out: AtomicOutput | None = None
        self._count = 0
        self._metadata: list[bytes] = []  # names and window marks, repeated per part
        self._open_part()

    def _open_part(self) -> None:
        path = part_path(self.path, len(self.paths) + 1) if self.split_bytes else self.path
        out = AtomicOutput(path)
        self.outputs.append(out)
        self.paths.append(path)
        self._out = out
        self._count = 0
        out.write(HEADER)
        for m in self._metadata:
            self._write(m)

    def _write(self, encoded: bytes) -> None:
        out = self._out
        if self._count:
            out.write(b",\n")
        out.write(encoded)
        self._count += 1

    def _event(self, obj: dict) -> None:
        if self.split_bytes and self._out.bytes_written >= self.split_bytes:
            self._out.write(FOOTER)
            self._open_part()
        self._write(orjson.dumps(obj))

    def _meta_event(self, obj: dict) -> None:
        encoded = orjson.dumps(obj)
        self._metadata.append(encoded)
        self._write(encoded)

    # -- Sink ------------------------------------------------------------------
    def process(self, meta: TraceMeta) -> None:
        self.pid = meta.pid
        self._meta_event({"name": "process_name", "ph": "M", "pid": self.pid, "tid": 0,
                          "args": {"name": meta.process_name}})
        if meta.cmdline:
            self._meta_event({"name": "process_labels", "ph": "M", "pid": self.pid, "tid": 0,
                              "args": {"labels": " ".join(meta.cmdline)}})

    def windows(self, windows: list[Window]) -> None:
        for w in windows:
            label = f"window: {w.trigger}" if w.trigger else "window"
            args = {"trigger": w.trigger, "startNs": w.start_ns, "endNs": w.end_ns}
            # Repeated in every part like the names: each part is marked.
            self._meta_event({"name": f"{label} start", "cat": "lanetrace.window", "ph": "i",
                              "s": "g", "ts": w.start_ns / 1000, "pid": self.pid, "tid": 0,
                              "args": args})
            self._meta_event({"name": f"{label} end", "cat": "lanetrace.window", "ph": "i",
                              "s": "g", "ts": w.end_ns / 1000, "pid": self.pid, "tid": 0,
                              "args": args})

    def thread(self, tid: int, name: str) -> None:
        self._meta_event({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": tid,
                          "args": {"name": thread_label(tid, name)}})

    def end(self, tid: int, ts: int, frame: Frame, ret, flag) -> None:
        func = frame.func
        args = {}
        if func.module:
            args["module"] = func.module
        location = func.location
        if location:
            args["source"] = location
        if frame.args:
            args["arguments"] = _hex(frame.args)
        if ret:
            args["returned"] = _hex(ret)
        if frame.shown != frame.start:
            args["clippedStart"] = True
        if flag:
            args[flag] = True
        start = frame.shown
        event = {"name": func.name, "cat": func.module or "function", "ph": "X",
                 "ts": start / 1000, "dur": (ts - start) / 1000,
                 "pid": self.pid, "tid": tid}
        if args:
            event["args"] = args
        self._event(event)

    def instant(self, tid: int, ts: int, name: str, args: dict) -> None:
        if "registers" in args:
            args = dict(args, registers=_hex(args["registers"]))
        self._event({"name": name, "cat": "signal", "ph": "i", "s": "t", "ts": ts / 1000,
                     "pid": self.pid, "tid": tid, "args": args})

    def finish(self, end_ts: int) -> None:
        self._out.write(FOOTER)

    def commit(self) -> None:
        for out in self.outputs:
            out.commit()

    def abort(self) -> None:
        for out in self.outputs:
            out.abort()
