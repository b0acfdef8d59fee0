"""Writes small ATF V4 traces with the protobuf runtime, in three flavours:
``ours`` (function ids interned by in-stream SymbolDefinition events, per-
thread sequence numbers and depths), ``compact`` (``ours`` with what a reader
derives left out, as the writer writes it now) and ``foreign`` (seed fields
only: a symbol string and address in every call/return). Frames go to disk as they
are added, so large traces cost no memory to build."""
from __future__ import annotations

import os

import orjson

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from query.tracegen import compact_stream


class TraceBuilder:
    def __init__(self, trace_dir, flavour: str = "ours", pid: int = 4242,
                 executable: str = "/usr/bin/demo", args=("demo", "--run")):
        assert flavour in ("ours", "foreign", "compact")
        self.dir = str(trace_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.compact = flavour == "compact"
        self.flavour = "ours" if self.compact else flavour
        self.pid = pid
        self.executable = executable
        self.args = list(args)
        self._f = open(os.path.join(self.dir, atf.EVENTS_FILE), "wb")
        self._event_id = 0
        self._ids: dict[str, int] = {}
        self._seq: dict[int, int] = {}
        self._depth: dict[int, int] = {}
        self.first_ns = None
        self.last_ns = None
        self.count = 0

    def address_of(self, name: str) -> int:
        return 0x401000 + 0x40 * (sum(name.encode()) % 4096) + len(name)

    def _emit(self, ev: pb.Event, ts: int | None) -> None:
        self._event_id += 1
        ev.event_id = self._event_id
        if ts is not None:
            atf.set_timestamp_ns(ev, ts)
            self.first_ns = ts if self.first_ns is None else min(self.first_ns, ts)
            self.last_ns = ts if self.last_ns is None else max(self.last_ns, ts)
            self.count += 1
        self._f.write(atf.frame(ev.SerializeToString()))

    def define(self, name: str, module: str = "demo", source=None) -> int:
        fid = self._ids.get(name)
        if fid is None:
            fid = self._ids[name] = len(self._ids) + 1
            ev = pb.Event()
            d = ev.symbol_definition
            d.function_id, d.symbol, d.module, d.address = fid, name, module, self.address_of(name)
            if source:
                d.source_file, d.source_line = source
            self._emit(ev, None)
        return fid

    def _stamp(self, ev: pb.Event, tid: int, depth: int) -> None:
        ev.thread_id = tid
        if self.flavour == "ours":
            self._seq[tid] = self._seq.get(tid, 0) + 1
            ev.sequence = self._seq[tid]
            ev.depth = depth

    def start(self, ts: int) -> "TraceBuilder":
        ev = pb.Event()
        ev.trace_start.executable_path = self.executable
        ev.trace_start.args.extend(self.args)
        ev.trace_start.operating_system = "linux"
        ev.trace_start.cpu_architecture = "x86_64"
        if self.flavour == "ours":
            ev.trace_start.pid = self.pid
        self._emit(ev, ts)
        return self

    def call(self, tid: int, ts: int, name: str, module: str = "demo", args=None, source=None):
        ev = pb.Event()
        p = ev.function_call
        p.address = self.address_of(name)
        if self.flavour == "ours":
            p.function_id = self.define(name, module, source)
        else:
            p.symbol = name
        if args:
            p.argument_registers.update(args)
        depth = self._depth.get(tid, 0)
        self._stamp(ev, tid, depth)
        self._depth[tid] = depth + 1
        self._emit(ev, ts)
        return self

    def ret(self, tid: int, ts: int, name: str, ret=None, unwound: bool = False):
        ev = pb.Event()
        p = ev.function_return
        p.address = self.address_of(name)
        if self.flavour == "ours":
            p.function_id = self.define(name)
            p.unwound = unwound
        else:
            p.symbol = name
        if ret:
            p.return_registers.update(ret)
        depth = max(0, self._depth.get(tid, 0) - 1)
        self._depth[tid] = depth
        self._stamp(ev, tid, depth)
        self._emit(ev, ts)
        return self

    def signal(self, tid: int, ts: int, number: int, name: str):
        ev = pb.Event()
        ev.thread_id = tid
        ev.signal_delivery.number = number
        ev.signal_delivery.name = name
        self._emit(ev, ts)
        return self

    def end(self, ts: int, exit_code: int = 0):
        ev = pb.Event()
        ev.trace_end.exit_code = exit_code
        self._emit(ev, ts)
        return self

    def close(self, windows=None, threads=None, **manifest) -> str:
        self._f.close()
        if self.compact:
            path = os.path.join(self.dir, atf.EVENTS_FILE)
            with open(path, "rb") as f:
                data = compact_stream(f.read())
            with open(path, "wb") as f:
                f.write(data)
        doc = {"os": "linux", "arch": "x86_64", "pid": self.pid, "sessionId": "20261121-000000-ab12",
               "executablePath": self.executable, "timeStartNs": self.first_ns or 0,
               "timeEndNs": self.last_ns or 0, "eventCount": self.count,
               "bytesWritten": os.path.getsize(os.path.join(self.dir, atf.EVENTS_FILE)),
               "spanCount": 0, "formatVersion": atf.FORMAT_VERSION}
        if self.compact:
            doc["eventEncoding"] = atf.COMPACT_ENCODING
        if windows is not None:
            doc["windows"] = windows
        if threads is not None:
            doc["threads"] = threads
        doc.update(manifest)
        with open(os.path.join(self.dir, atf.MANIFEST_FILE), "wb") as f:
            f.write(orjson.dumps(doc))
        return self.dir


def nested_trace(trace_dir, flavour="ours", open_at_end=False, windows=None, threads=None):
    """Two threads. Thread 101: main(1000..9000) > parse(2000..4000) >
    lex(2500..3000); main > eval(5000..8000) with registers on both sides.
    Thread 202: worker(1500..6000) > parse(2000..2600). With ``open_at_end``
    thread 202's worker and a later main > hang(9500..) never return, and the
    trace ends at 10000."""
    b = TraceBuilder(trace_dir, flavour)
    b.start(500)
    b.call(101, 1000, "main", source=("/src/demo.c", 10))
    b.call(202, 1500, "worker", module="libwork.so")
    b.call(101, 2000, "parse", source=("/src/parse.c", 42))
    b.call(202, 2000, "parse", source=("/src/parse.c", 42))
    b.call(101, 2500, "lex")
    b.ret(202, 2600, "parse")
    b.ret(101, 3000, "lex")
    b.ret(101, 4000, "parse")
    b.call(101, 5000, "eval", args={"rdi": 7, "rsi": 0xFFFFFFFFFFFFFFF0})
    b.signal(101, 5500, 10, "SIGUSR1")
    if not open_at_end:
        b.ret(202, 6000, "worker")
    b.ret(101, 8000, "eval", ret={"rax": 42})
    if open_at_end:
        b.call(101, 9500, "hang")
        b.end(10000)
    else:
        b.ret(101, 9000, "main")
        b.end(9500)
    return b.close(windows=windows, threads=threads)
