"""The writer service (``python -m lanetrace.writer``): receives the data
channel's requests on a ZeroMQ ROUTER (docs/internals.md, "Data channel"),
appends ATF V4 events to ``<trace-root>/<session>/pid_<pid>/events.bin`` and
acks each request once its bytes are in the file.

The file is the only source of truth. Everything the writer keeps in memory
per target (next event id, function table, per-thread max sequence numbers,
counters) can be rebuilt by scanning ``events.bin``; that is what happens
after a SIGKILL, and also after any failed write, so an error can never leave
the memory state ahead of the file.

Raw index records are encoded in C (native/src/encode.c); Python only moves
whole batches. Flight-recorder detail records are encoded there too, filtered
by the target's windows (docs/internals.md, "Flight recorder").
"""
from __future__ import annotations

import argparse
import heapq
import logging
import mmap
import os
import signal
import sys
import threading
import time
import types

import orjson
import zmq

from lanetrace.core import flightrec

from lanetrace._native import ffi, lib
from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.core.bus import Bus

log = logging.getLogger("lanetrace.writer")

RECORD_SIZE = 32
KINDS = ("target_start", "functions", "index", "detail", "window", "threads", "signal",
         "target_end", "ping")
SYNC_INTERVAL_S = 1.0
MANIFEST_INTERVAL_S = 1.0
# Drainers may still deliver a finished target's last batches; keep its file
# open that long instead of rescanning it for each late batch.
ENDED_CLOSE_AFTER_S = 10.0
TOP_FUNCTIONS = 20
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
I32 = (-(1 << 31), (1 << 31) - 1)


class RequestError(Exception):
    """The request is refused (nack); the message says why."""


class TraceCorrupt(RequestError):
    pass


# ---- header validation -----------------------------------------------------

def _field(header: dict, key: str, kind, default=..., lo=None, hi=None):
    if key not in header or header[key] is None:
        if default is ...:
            raise RequestError(f"header field {key!r} is required")
        return default
    value = header[key]
    # bool is an int subclass; a JSON true is never a valid number here
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"header field {key!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise RequestError(f"header field {key!r} must be {kind.__name__}, got {value!r}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise RequestError(f"header field {key!r} = {value} is out of range [{lo}, {hi}]")
    return value


def _window(raw) -> dict:
    if not isinstance(raw, dict):
        raise RequestError(f"window must be an object, got {raw!r}")
    start = _field(raw, "startNs", int, lo=0, hi=U64)
    end = _field(raw, "endNs", int, lo=0, hi=U64)
    if end < start:
        raise RequestError(f"window endNs {end} is before startNs {start}")
    w = {"startNs": start, "endNs": end, "trigger": _field(raw, "trigger", str, "")}
    if _field(raw, "shortened", bool, False):
        w["shortened"] = True
        w["preRollLostUntilNs"] = _field(raw, "preRollLostUntilNs", int, 0, lo=0, hi=U64)
    return w


def _function_entry(raw) -> dict:
    if not isinstance(raw, dict):
        raise RequestError(f"functions entry must be an object, got {raw!r}")
    try:
        entry = {
            "id": _field(raw, "id", int, lo=1, hi=U32),
            "name": _field(raw, "name", str),
            "module": _field(raw, "module", str, ""),
            "address": _field(raw, "address", int, 0, lo=0, hi=U64),
            "size": _field(raw, "size", int, 0, lo=0, hi=U64),
        }
        source_file = _field(raw, "sourceFile", str, "")
        source_line = _field(raw, "sourceLine", int, 0, lo=0, hi=U32)
    except RequestError as exc:
        raise RequestError(f"functions entry {raw!r}: {exc}") from None
    if source_file:
        entry["sourceFile"] = source_file
    if source_line:
        entry["sourceLine"] = source_line
    return entry


# ---- one trace file ----------------------------------------------------------

def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _ns_event(event_id: int, ts_ns: int | None) -> pb.Event:
    ev = pb.Event(event_id=event_id)
    if ts_ns is not None:
        atf.set_timestamp_ns(ev, ts_ns)
    return ev


class Target:
    """One traced process: its trace directory, open ``events.bin`` and the
    encoder state that continues it."""

    def __init__(self, pid: int, trace_dir: str, inline_symbols: bool):
        self.pid = pid
        self.dir = trace_dir
        self.events_path = os.path.join(trace_dir, atf.EVENTS_FILE)
        self.inline_symbols = inline_symbols
        self.enc = ffi.gc(lib.lt_encoder_new(1 if inline_symbols else 0), lib.lt_encoder_free)
        if self.enc == ffi.NULL:
            raise MemoryError("lt_encoder_new failed")
        self.fd = -1
        self.size = 0
        self.functions: dict[int, dict] = {}
        self.start: dict | None = None
        self.end: dict | None = None
        self.agent_drops: dict[str, int] = {}
        self.drops_by_thread: list[dict] = []
        self.control: dict = {}  # registry-mode counters from target_end
        # Flight recorder: merged windows, and each drainer instance's
        # cumulative pre-roll counts (cumulative, so a resent request or a
        # repeated report never counts twice).
        self.windows: list[dict] = []
        self.drainer_detail: dict[str, dict] = {}
        self.flight: dict = {}
        self.threads: dict[int, str] = {}
        self.signals: set[tuple] = set()
        # Writer-side counts that events.bin cannot tell: restored from the
        # last manifest after a restart, added to the encoder's own.
        self.base = {"duplicates": 0, "invalid_records": 0, "events_after_end": 0,
                     "detail_discarded": 0, "detail_duplicates": 0, "detail_invalid_bytes": 0}
        self.events_after_end = 0
        self.manifest_dirty = True
        self.unsynced = False
        self.last_append = time.monotonic()
        self.lock = threading.Lock()  # guards fd against the syncer thread

    # -- opening ----------------------------------------------------------
    def open(self) -> None:
        """Open (creating if needed) events.bin and rebuild state from it."""
        os.makedirs(self.dir, exist_ok=True)
        created = not os.path.exists(self.events_path)
        self.fd = os.open(self.events_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if created:  # make the new directory entries durable, not only the data
            for d in (self.dir, os.path.dirname(self.dir)):
                dfd = os.open(d, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        try:
            self._rebuild()
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def _rebuild(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        valid = ffi.new("size_t *")
        with mmap.mmap(self.fd, size, prot=mmap.PROT_READ) as mm:
            buf = ffi.from_buffer(mm)
            try:
                rc = lib.lt_encoder_scan(self.enc, ffi.cast("const uint8_t *", buf), size, valid)
                if rc == -1:
                    raise TraceCorrupt(
                        f"{self.events_path}: the frame at offset {valid[0]} is not an ATF V4 "
                        f"Event; refusing to append to a corrupt trace")
                if rc != 0:
                    raise MemoryError(f"scanning {self.events_path}: out of memory")
                offsets = ffi.new("const uint64_t **")
                n = lib.lt_encoder_other_frames(self.enc, offsets)
                for i in range(n):
                    self._apply_other(mm, int(offsets[0][i]))
            finally:
                ffi.release(buf)
        if valid[0] < size:
            log.warning("pid %d: cutting a torn tail of %d bytes from %s",
                        self.pid, size - valid[0], self.events_path)
            os.ftruncate(self.fd, valid[0])
            os.fsync(self.fd)
        self.size = valid[0]
        self._restore_manifest_counts()

    def _apply_other(self, data, offset: int) -> None:
        length, pos = atf.decode_varint(data, offset)
        ev = pb.Event()
        ev.ParseFromString(data[pos:pos + length])
        which = ev.WhichOneof("payload")
        if which == "trace_start":
            ts = ev.trace_start
            self.start = {"executablePath": ts.executable_path, "args": list(ts.args),
                          "attached": ts.attached, "sessionId": ts.session_id,
                          "startNs": atf.timestamp_ns(ev)}
        elif which == "symbol_definition":
            d = ev.symbol_definition
            entry = {"id": d.function_id, "name": d.symbol, "module": d.module,
                     "address": d.address, "size": d.size}
            if d.source_file:
                entry["sourceFile"] = d.source_file
            if d.source_line:
                entry["sourceLine"] = d.source_line
            self.functions[d.function_id] = entry
        elif which == "signal_delivery":
            self.signals.add((ev.thread_id, atf.timestamp_ns(ev), ev.signal_delivery.number))
        elif which == "trace_end":
            te = ev.trace_end
            self.end = {"exitCode": te.exit_code, "signal": te.signal,
                        "detached": te.detached, "endNs": atf.timestamp_ns(ev)}

    def _restore_manifest_counts(self) -> None:
        try:
            old = atf.read_manifest(self.dir)
        except atf.TraceFormatError:
            return
        self.agent_drops = {k: int(v) for k, v in (old.get("drops") or {}).items()}
        wd = old.get("writerDrops") or {}
        self.base["duplicates"] = int(wd.get("duplicate", 0))
        self.base["invalid_records"] = int(wd.get("invalid_record", 0))
        self.base["events_after_end"] = int(old.get("eventsAfterEnd", 0))
        self.drops_by_thread = list(old.get("dropsByThread") or [])
        self.control = dict(old.get("registryModes") or {})
        self.windows = flightrec.merge_windows(old.get("windows") or [])
        self.threads = {int(t["threadId"]): t["name"] for t in old.get("threads") or []}
        fr = old.get("flightRecorder") or {}
        self.flight = dict(fr.get("config") or {})
        self.drainer_detail = {k: dict(v) for k, v in (fr.get("drainers") or {}).items()}
        wdd = fr.get("writer") or {}
        self.base["detail_discarded"] = int(wdd.get("discarded", 0))
        self.base["detail_duplicates"] = int(wdd.get("duplicates", 0))
        self.base["detail_invalid_bytes"] = int(wdd.get("invalidBytes", 0))

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    # -- appending ---------------------------------------------------------
    def _append(self, data) -> None:
        if not len(data):
            return
        os.lseek(self.fd, self.size, os.SEEK_SET)
        _write_all(self.fd, data)
        self.size += len(data)
        self.last_append = time.monotonic()
        self.unsynced = True
        self.manifest_dirty = True

    def _take_ids(self, n: int) -> int:
        return lib.lt_encoder_take_event_ids(self.enc, n)

    def write_start(self, start: dict) -> None:
        ev = _ns_event(self._take_ids(1), start["startNs"])
        ev.trace_start.executable_path = start["executablePath"]
        ev.trace_start.args.extend(start["args"])
        ev.trace_start.operating_system = "linux"
        ev.trace_start.cpu_architecture = "x86_64"
        ev.trace_start.pid = self.pid
        ev.trace_start.session_id = start["sessionId"]
        ev.trace_start.attached = start["attached"]
        self._append(atf.frame(ev.SerializeToString()))
        self.start = start

    def define_functions(self, entries: list[dict]) -> int:
        """Append a SymbolDefinition per new or changed id; returns how many."""
        new = [e for e in entries if self.functions.get(e["id"]) != e]
        if not new:
            return 0
        first = self._take_ids(len(new))
        chunks = []
        for i, e in enumerate(new):
            ev = pb.Event(event_id=first + i)
            d = ev.symbol_definition
            d.function_id = e["id"]
            d.symbol = e["name"]
            d.module = e["module"]
            d.address = e["address"]
            d.size = e["size"]
            d.source_file = e.get("sourceFile", "")
            d.source_line = e.get("sourceLine", 0)
            chunks.append(atf.frame(ev.SerializeToString()))
        self._append(b"".join(chunks))
        for e in new:
            name = e["name"].encode()
            if lib.lt_encoder_set_function(self.enc, e["id"], e["address"], name, len(name)):
                raise MemoryError("lt_encoder_set_function: out of memory")
            self.functions[e["id"]] = e
        return len(new)

    def append_index(self, payload, count: int, out: "OutBuffer") -> tuple:
        need = lib.lt_encode_bound(self.enc, count)
        buf = out.get(need)
        res = ffi.new("lt_batch_result *")
        src = ffi.from_buffer(payload)
        try:
            n = lib.lt_encode_index(self.enc, src, count, buf, need, res)
        finally:
            ffi.release(src)
        if n < 0:
            raise RuntimeError("encode buffer smaller than lt_encode_bound")
        self._append(ffi.buffer(buf, n))
        handled = res.events + res.duplicates + res.invalid_records  # late ones are events
        if handled != count:
            raise MemoryError(f"encoder ran out of memory after {handled} of {count} records")
        if self.end is not None:
            self.events_after_end += res.events
        return res.events, res.duplicates, res.gaps, res.unknown_function, \
            res.invalid_records, res.late, n

    def append_detail(self, payload, keep_all: bool, out: "OutBuffer"):
        """Persist the detail records of ``payload`` that lie in a window."""
        need = lib.lt_encode_detail_bound(self.enc, len(payload))
        buf = out.get(need)
        bounds = flightrec.flat_bounds(self.windows)
        win = ffi.new("uint64_t[]", bounds or [0])
        res = ffi.new("lt_detail_result *")
        src = ffi.from_buffer(payload)
        try:
            n = lib.lt_encode_detail(self.enc, ffi.cast("const uint8_t *", src), len(payload),
                                     win, len(bounds) // 2, 1 if keep_all else 0, buf, need, res)
        finally:
            ffi.release(src)
        if n < 0:
            raise RuntimeError("encode buffer smaller than lt_encode_detail_bound")
        self._append(ffi.buffer(buf, n))
        return res.kept, res.discarded, res.duplicates, res.invalid_bytes, n

    def add_windows(self, windows: list[dict]) -> bool:
        for w in windows:  # drainers know function ids only
            w["trigger"] = ", ".join(self._label(x) for x in w["trigger"].split(", ") if x)
        merged = flightrec.merge_windows(self.windows + windows)
        if merged == self.windows:
            return False
        self.windows = merged
        self.manifest_dirty = True
        return True

    def _label(self, label: str) -> str:
        fid = label[len("symbol#"):] if label.startswith("symbol#") else ""
        name = self.functions.get(int(fid), {}).get("name") if fid.isdigit() else None
        return f"symbol={name}" if name else label

    def write_signal(self, sig: dict) -> bool:
        key = (sig["tid"], sig["tsNs"], sig["number"])
        if key in self.signals:
            return False  # a resend
        ev = _ns_event(self._take_ids(1), sig["tsNs"])
        ev.thread_id = sig["tid"]
        ev.signal_delivery.number = sig["number"]
        ev.signal_delivery.name = sig["name"]
        for name, value in sig["registers"].items():
            ev.signal_delivery.registers[name] = value
        self._append(atf.frame(ev.SerializeToString()))
        self.signals.add(key)
        return True

    def write_end(self, end: dict) -> None:
        ev = _ns_event(self._take_ids(1), end["endNs"])
        ev.trace_end.exit_code = end["exitCode"]
        ev.trace_end.signal = end["signal"]
        ev.trace_end.detached = end["detached"]
        self._append(atf.frame(ev.SerializeToString()))
        self.end = end

    def sync(self) -> None:
        with self.lock:
            if self.fd >= 0:
                self.unsynced = False
                os.fdatasync(self.fd)

    # -- manifests -----------------------------------------------------------
    def stats(self):
        st = ffi.new("lt_encode_stats *")
        lib.lt_encoder_stats(self.enc, st)
        return st

    def top_functions(self) -> list[dict]:
        n = lib.lt_encoder_function_calls(self.enc, ffi.NULL, ffi.NULL, 0)
        ids = ffi.new("uint32_t[]", max(n, 1))
        calls = ffi.new("uint64_t[]", max(n, 1))
        n = lib.lt_encoder_function_calls(self.enc, ids, calls, n)
        pairs = ((calls[i], ids[i]) for i in range(n) if calls[i])
        top = heapq.nlargest(TOP_FUNCTIONS, pairs)
        return [{"id": fid, "name": self.functions.get(fid, {}).get("name", ""),
                 "module": self.functions.get(fid, {}).get("module", ""), "calls": c}
                for c, fid in top]

    def manifest(self, session: str) -> dict:
        st = self.stats()
        start = self.start or {}
        end = self.end or {}
        others = 1 if self.start else 0
        others += 1 if self.end else 0
        have_ts = st.min_ts_ns != U64
        if self.end:
            time_end = end["endNs"]
        else:
            time_end = max(st.max_ts_ns if have_ts else 0, start.get("startNs", 0))
        duplicates = st.duplicates + self.base["duplicates"]
        invalid = st.invalid_records + self.base["invalid_records"]
        detail = self.detail_counts(st)
        return {
            "formatVersion": atf.FORMAT_VERSION,
            "os": "linux",
            "arch": "x86_64",
            "pid": self.pid,
            "sessionId": start.get("sessionId", session),
            "clock": "monotonic",
            "timeStartNs": start.get("startNs", st.min_ts_ns if have_ts else 0),
            "timeEndNs": time_end,
            # events a reader sees (atf.iter_events): all but symbol definitions
            "eventCount": st.events + others,
            "bytesWritten": self.size,
            "spanCount": st.spans,
            "executablePath": start.get("executablePath", ""),
            "args": start.get("args", []),
            "attached": start.get("attached", False),
            "exitCode": end.get("exitCode"),
            "signal": end.get("signal"),
            "detached": end.get("detached"),
            "threadCount": st.threads,
            "functionCount": len(self.functions),
            "callCount": st.calls,
            "returnCount": st.returns,
            "unwoundCount": st.unwound,
            "drops": dict(self.agent_drops),
            "dropsByThread": self.drops_by_thread,
            "registryModes": self.control,
            "writerDrops": {"duplicate": duplicates, "invalid_record": invalid},
            # written although they arrived after higher numbers of their
            # thread (another lane's drainer was slower): not drops
            "lateRecords": st.late,
            "writerDuplicates": duplicates,
            "seqGaps": st.gaps,
            "unknownFunctions": st.unknown_function,
            "eventsAfterEnd": self.events_after_end + self.base["events_after_end"],
            "inlineSymbols": self.inline_symbols,
            "windows": self.windows,
            "windowsShortened": sum(1 for w in self.windows if w.get("shortened")),
            "detailEvents": st.detail_events,
            "detailKept": detail["kept"],
            "detailDiscarded": detail["discarded"],
            "flightRecorder": detail["report"],
            "threads": [{"threadId": tid, "name": name} for tid, name in sorted(self.threads.items())],
            "modules": sorted({f["module"] for f in self.functions.values() if f["module"]}),
            "topFunctions": self.top_functions(),
            "complete": self.end is not None,
        }

    def detail_counts(self, st) -> dict:
        """Detail records kept and discarded: the writer's own (outside every
        window when they arrived) plus what the drainers discarded from their
        pre-roll buffers (aged out, or over the budget)."""
        wd = {"discarded": st.detail_discarded + self.base["detail_discarded"],
              "duplicates": st.detail_duplicates + self.base["detail_duplicates"],
              "invalidBytes": st.detail_invalid_bytes + self.base["detail_invalid_bytes"]}
        aged = sum(int(d.get("discarded", 0)) for d in self.drainer_detail.values())
        budget = sum(int(d.get("budget", 0)) for d in self.drainer_detail.values())
        lost = sum(int(d.get("lost", 0)) for d in self.drainer_detail.values())
        return {"kept": st.detail_events, "discarded": wd["discarded"] + aged + budget,
                "report": {"config": self.flight, "writer": wd, "drainers": self.drainer_detail,
                           "discardedAged": aged, "discardedBudget": budget,
                           "discardedWriter": wd["discarded"], "lostUnsent": lost}}

    def write_manifest(self, session: str) -> None:
        atf.write_json_atomic(os.path.join(self.dir, atf.MANIFEST_FILE), self.manifest(session))
        self.manifest_dirty = False

    def write_symbols(self) -> None:
        table = {"pid": self.pid,
                 "functions": [self.functions[k] for k in sorted(self.functions)]}
        atf.write_json_atomic(os.path.join(self.dir, atf.SYMBOLS_FILE), table)


class OutBuffer:
    """One reusable encode buffer; the writer is single-threaded."""

    def __init__(self):
        self.cap = 0
        self.buf = None

    def get(self, need: int):
        if need > self.cap:
            self.cap = max(need, self.cap * 2, 1 << 20)
            self.buf = ffi.new("uint8_t[]", self.cap)
        return self.buf


class Syncer(threading.Thread):
    """fdatasync()s targets in the background every SYNC_INTERVAL_S, so a
    slow disk never stalls acking (acks need write(), not fsync)."""

    def __init__(self):
        super().__init__(name="writer-sync", daemon=True)
        self._targets: list[Target] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def set_targets(self, targets) -> None:
        with self._lock:
            self._targets = list(targets)

    def run(self) -> None:
        while not self._halt.wait(SYNC_INTERVAL_S):
            with self._lock:
                targets = list(self._targets)
            for t in targets:
                if t.unsynced:
                    try:
                        t.sync()
                    except OSError as exc:
                        log.error("pid %d: fdatasync failed: %s", t.pid, exc)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---- the service ---------------------------------------------------------

class Metrics:
    def __init__(self):
        self.c = dict(batches=0, records=0, events=0, bytes=0, duplicates=0, gaps=0,
                      unknownFunctions=0, invalidRecords=0, late=0, requests=0, nacks=0,
                      detailEvents=0, detailDiscarded=0, detailDuplicates=0)
        self._last = dict(self.c)
        self._last_t = time.monotonic()
        self.lanes: dict[tuple[int, str], list[int]] = {}  # (pid, lane) -> [events, bytes]
        self._last_lanes: dict[tuple[int, str], list[int]] = {}

    def lane(self, pid: int, lane: str, events: int, nbytes: int) -> None:
        c = self.lanes.setdefault((pid, lane), [0, 0])
        c[0] += events
        c[1] += nbytes

    def snapshot(self) -> dict:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        out = dict(self.c)
        out["eventsPerSec"] = (self.c["events"] - self._last["events"]) / dt
        out["bytesPerSec"] = (self.c["bytes"] - self._last["bytes"]) / dt
        by_target: dict[str, dict] = {}
        for (pid, lane), (events, nbytes) in self.lanes.items():
            last = self._last_lanes.get((pid, lane), [0, 0])
            by_target.setdefault(str(pid), {})[lane] = {
                "events": events, "bytes": nbytes, "eventsPerSec": (events - last[0]) / dt,
                "bytesPerSec": (nbytes - last[1]) / dt}
        out["byTarget"] = by_target
        self._last, self._last_t = dict(self.c), now
        self._last_lanes = {k: list(v) for k, v in self.lanes.items()}
        return out

    def forget(self, pid: int) -> None:
        for key in [k for k in self.lanes if k[0] == pid]:
            self.lanes.pop(key, None)
            self._last_lanes.pop(key, None)


class Writer:
    def __init__(self, run_dir: str, trace_root: str, session: str, inline_symbols: bool,
                 broker_pub: str | None):
        self.run_dir = run_dir
        self.trace_root = trace_root
        self.session = session
        self.inline_symbols = inline_symbols
        self.targets: dict[int, Target] = {}
        self.out = OutBuffer()
        self.metrics = Metrics()
        self.stopping = False
        self.ctx = zmq.Context()
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind("ipc://" + os.path.join(run_dir, "writer.sock"))
        endpoint = broker_pub or "ipc://" + os.path.join(run_dir, "broker-pub.sock")
        self.bus = Bus(types.SimpleNamespace(broker_pub=endpoint), "writer", self.ctx)
        self.syncer = Syncer()

    # -- targets -------------------------------------------------------------
    def trace_dir(self, pid: int) -> str:
        return os.path.join(self.trace_root, self.session, f"pid_{pid}")

    def _open(self, pid: int) -> Target:
        t = Target(pid, self.trace_dir(pid), self.inline_symbols)
        try:
            t.open()
        except OSError as exc:
            raise RequestError(f"cannot open trace of pid {pid} in {t.dir}: {exc}") from None
        self.targets[pid] = t
        self.syncer.set_targets(self.targets.values())
        return t

    def _existing(self, pid: int) -> Target:
        """The target of a non-start request, reopened from disk if needed."""
        t = self.targets.get(pid)
        if t is not None:
            return t
        if not os.path.exists(os.path.join(self.trace_dir(pid), atf.EVENTS_FILE)):
            raise RequestError(f"no trace for pid {pid} in session {self.session}: "
                               f"target_start was never acked")
        t = self._open(pid)
        log.info("pid %d: reopened %s (%d bytes)", pid, t.dir, t.size)
        if t.start is None:
            self._drop(t)
            raise RequestError(f"trace of pid {pid} has no TraceStart yet: send target_start")
        return t

    def _drop(self, t: Target) -> None:
        t.close()
        self.targets.pop(t.pid, None)
        self.syncer.set_targets(self.targets.values())

    # -- requests ------------------------------------------------------------
    def on_target_start(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        session = _field(h, "sessionId", str, self.session)
        if session != self.session:
            raise RequestError(f"sessionId {session!r} does not match this writer's "
                               f"session {self.session!r}")
        trace_dir = _field(h, "traceDir", str, "")
        if trace_dir and os.path.realpath(trace_dir) != os.path.realpath(self.trace_dir(pid)):
            raise RequestError(f"traceDir {trace_dir!r} differs from this writer's "
                               f"{self.trace_dir(pid)!r}")
        args = _field(h, "args", list, [])
        if not all(isinstance(a, str) for a in args):
            raise RequestError(f"header field 'args' must be a list of strings, got {args!r}")
        start = {"executablePath": _field(h, "executablePath", str, ""), "args": args,
                 "attached": _field(h, "attached", bool, False), "sessionId": session,
                 "startNs": _field(h, "startNs", int, time.monotonic_ns(), lo=0, hi=U64)}
        flight = _field(h, "flightRecorder", dict, {})
        t = self.targets.get(pid)
        if t is None:
            t = self._open(pid)
            if t.size:
                log.info("pid %d: reopened %s (%d bytes)", pid, t.dir, t.size)
        if flight:
            t.flight = flight
        if t.start is not None:
            if t.end is not None and t.start["startNs"] != start["startNs"]:
                raise RequestError(
                    f"{t.dir} already holds the finished trace of an earlier process with "
                    f"pid {pid} (started at {t.start['startNs']} ns); pid reuse within one "
                    f"session is not supported")
            return  # a resend, or a restart after the TraceStart was written
        self._guarded(t, lambda: (t.write_start(start), t.write_manifest(self.session),
                                  t.write_symbols()))

    def on_functions(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        raw = _field(h, "functions", list)
        entries = [_function_entry(r) for r in raw]
        t = self._existing(pid)
        self._guarded(t, lambda: t.define_functions(entries))
        try:
            t.write_symbols()
        except OSError as exc:  # a sidecar: events.bin already holds the definitions
            log.error("pid %d: cannot write %s: %s", pid, atf.SYMBOLS_FILE, exc)

    def on_index(self, h: dict, payload) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        count = _field(h, "count", int, lo=0)
        if payload is None:
            raise RequestError("index request without a payload frame")
        if len(payload) != count * RECORD_SIZE:
            raise RequestError(f"index payload is {len(payload)} bytes, expected count "
                               f"{count} x {RECORD_SIZE} = {count * RECORD_SIZE}")
        t = self._existing(pid)
        events, dups, gaps, unknown, invalid, late, nbytes = self._guarded(
            t, lambda: t.append_index(payload, count, self.out))
        m = self.metrics.c
        m["batches"] += 1
        m["records"] += count
        m["events"] += events
        m["bytes"] += nbytes
        m["duplicates"] += dups
        m["gaps"] += gaps
        m["unknownFunctions"] += unknown
        m["invalidRecords"] += invalid
        m["late"] += late
        self.metrics.lane(pid, "index", events, nbytes)
        if invalid:
            log.warning("pid %d: dropped %d invalid records (bad kind or seq 0)", pid, invalid)

    def on_detail(self, h: dict, payload) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        nbytes = _field(h, "bytes", int, 0, lo=0)
        windows = [_window(w) for w in _field(h, "windows", list, [])]
        keep_all = _field(h, "full", bool, False)
        counts = _field(h, "counts", dict, {})
        instance = _field(h, "instance", str, "")
        if payload is None:
            payload = b""
        if len(payload) != nbytes:
            raise RequestError(f"detail payload is {len(payload)} bytes, header says {nbytes}")
        t = self._existing(pid)
        if windows:
            t.add_windows(windows)
        if instance and counts:
            for k, v in counts.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise RequestError(f"counts[{k!r}] must be a non-negative integer, got {v!r}")
            old = t.drainer_detail.get(instance, {})
            # cumulative per drainer instance: keep the larger of each
            t.drainer_detail[instance] = {k: max(int(old.get(k, 0)), v) for k, v in counts.items()}
            t.manifest_dirty = True
        if not payload:
            return
        kept, discarded, dups, invalid, n = self._guarded(
            t, lambda: t.append_detail(payload, keep_all, self.out))
        m = self.metrics.c
        m["detailEvents"] += kept
        m["detailDiscarded"] += discarded
        m["detailDuplicates"] += dups
        m["bytes"] += n
        self.metrics.lane(pid, "detail", kept, n)
        if invalid:
            log.warning("pid %d: %d malformed bytes at the end of a detail batch", pid, invalid)

    def on_window(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        t = self._existing(pid)
        if t.add_windows([_window(h)]):
            self._guarded(t, lambda: t.write_manifest(self.session))

    def on_threads(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        raw = _field(h, "threads", list)
        names = {}
        for entry in raw:
            if not isinstance(entry, dict):
                raise RequestError(f"threads entry must be an object, got {entry!r}")
            names[_field(entry, "threadId", int, lo=0, hi=U32)] = _field(entry, "name", str)
        t = self._existing(pid)
        if any(t.threads.get(tid) != name for tid, name in names.items()):
            t.threads.update(names)
            # acked means durable: names live only in the manifest
            self._guarded(t, lambda: t.write_manifest(self.session))

    def on_signal(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        regs = _field(h, "registers", dict, {})
        for k, v in regs.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U64:
                raise RequestError(f"registers[{k!r}] must be an unsigned 64-bit integer, got {v!r}")
        sig = {"tid": _field(h, "tid", int, 0, lo=0, hi=I32[1]),
               "tsNs": _field(h, "tsNs", int, lo=0, hi=U64),
               "number": _field(h, "number", int, lo=0, hi=I32[1]),
               "name": _field(h, "name", str, ""), "registers": regs}
        t = self._existing(pid)
        self._guarded(t, lambda: t.write_signal(sig))

    def on_target_end(self, h: dict) -> None:
        pid = _field(h, "pid", int, lo=1, hi=I32[1])
        drops = _field(h, "drops", dict, {})
        for k, v in drops.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RequestError(f"drops[{k!r}] must be a non-negative integer, got {v!r}")
        by_thread = _field(h, "dropsByThread", list, [])
        if not all(isinstance(d, dict) for d in by_thread):
            raise RequestError("dropsByThread must be a list of objects")
        # registry-mode history from the control block: {modeTransitions, fallbackEvents, finalMode}
        control = _field(h, "control", dict, {})
        t = self._existing(pid)
        st = t.stats()
        default_end = max(st.max_ts_ns if st.min_ts_ns != U64 else 0, t.start["startNs"])
        end = {"exitCode": _field(h, "exitCode", int, 0, *I32),
               "signal": _field(h, "signal", int, 0, *I32),
               "detached": _field(h, "detached", bool, False),
               "endNs": _field(h, "endNs", int, default_end, lo=0, hi=U64)}
        if t.end is None:
            t.agent_drops = dict(drops)
            t.drops_by_thread = by_thread
            t.control = control
            self._guarded(t, lambda: (t.write_end(end), t.sync()))
        try:
            t.write_manifest(self.session)
            t.write_symbols()
        except OSError as exc:
            raise RequestError(f"pid {pid}: TraceEnd written but manifest failed: {exc}") from None
        log.info("pid %d: trace complete in %s", pid, t.dir)

    def _guarded(self, t: Target, action):
        """Run an append; on failure forget the target so that the next
        request rebuilds it from what really reached the file."""
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the file decides
            log.error("pid %d: write failed, state will be rebuilt from %s: %s",
                      t.pid, t.events_path, exc)
            self._drop(t)
            raise RequestError(f"pid {t.pid}: writing {t.events_path} failed: {exc}") from None

    def handle(self, frames: list) -> list[bytes]:
        ident = frames[0].bytes
        msg_id = b""
        try:
            if len(frames) not in (3, 4):
                raise RequestError(f"expected [kind, header] or [kind, header, payload], "
                                   f"got {len(frames) - 1} frames")
            kind = frames[1].bytes.decode("utf-8", "replace")
            try:
                header = orjson.loads(frames[2].bytes)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"header is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise RequestError("header must be a JSON object")
            if "msgId" in header:
                msg_id = str(header["msgId"]).encode()
            else:
                raise RequestError("header field 'msgId' is required")
            payload = frames[3].buffer if len(frames) == 4 else None
            self.metrics.c["requests"] += 1
            if kind == "index":
                self.on_index(header, payload)
            elif kind == "detail":
                self.on_detail(header, payload)
            elif kind == "window":
                self.on_window(header)
            elif kind == "threads":
                self.on_threads(header)
            elif kind == "signal":
                self.on_signal(header)
            elif kind == "functions":
                self.on_functions(header)
            elif kind == "target_start":
                self.on_target_start(header)
            elif kind == "target_end":
                self.on_target_end(header)
            elif kind != "ping":
                raise RequestError(f"unknown request kind {kind!r}; expected one of {KINDS}")
            return [ident, b"ack", msg_id]
        except RequestError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must cost one request, not the service
            log.exception("internal error while handling a request")
            error = f"internal writer error: {exc!r}"
        self.metrics.c["nacks"] += 1
        log.warning("nack %s: %s", msg_id.decode(errors="replace") or "?", error)
        return [ident, b"nack", msg_id, orjson.dumps({"error": error})]

    # -- loop ----------------------------------------------------------------
    def periodic(self) -> None:
        now = time.monotonic()
        for t in list(self.targets.values()):
            try:
                if t.manifest_dirty:
                    t.write_manifest(self.session)
                if t.end is not None and now - t.last_append > ENDED_CLOSE_AFTER_S:
                    t.sync()
                    self._drop(t)  # finished and quiet; a late request reopens it
                    self.metrics.forget(t.pid)
            except OSError as exc:
                log.error("pid %d: cannot write manifest: %s", t.pid, exc)
        # Bus.heartbeat() rate-limits on its own clock and could skip a tick.
        self.bus.publish("hb.writer", {"service": "writer", "pid": os.getpid(),
                                       "ts": time.monotonic_ns()})
        m = self.metrics.snapshot()
        m.update(service="writer", pid=os.getpid(), ts=time.monotonic_ns(),
                 targets=len(self.targets))
        self.bus.publish("metrics.writer", m)

    def run(self) -> int:
        self.syncer.start()
        next_tick = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if now >= next_tick:
                self.periodic()
                next_tick = now + MANIFEST_INTERVAL_S
            timeout = max(1, min(200, int((next_tick - now) * 1000)))
            if not self.sock.poll(timeout):
                continue
            # Serve what is queued, but come back to the tick and the stop flag.
            while not self.stopping and time.monotonic() < next_tick:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.sock.send_multipart(self.handle(frames))
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.syncer.stop()
        for t in list(self.targets.values()):
            try:
                t.sync()
                t.write_manifest(self.session)
                t.write_symbols()
            except OSError as exc:
                log.error("pid %d: final flush failed: %s", t.pid, exc)
            t.close()
        self.targets.clear()
        self.bus.close()
        self.sock.close()
        self.ctx.term()
        log.info("writer stopped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lanetrace.writer",
                                description="lanetrace writer: persists ATF V4 traces")
    p.add_argument("--run-dir", required=True, help="run directory; binds <run-dir>/writer.sock")
    p.add_argument("--trace-root", required=True, help="traces go to <trace-root>/<session>/")
    p.add_argument("--session", required=True, help="session id")
    p.add_argument("--inline-symbols", action="store_true",
                   help="also fill the seed's symbol string in every call/return")
    p.add_argument("--broker-pub", default=None,
                   help="broker endpoint to publish on (default ipc://<run-dir>/broker-pub.sock)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s writer[%(process)d] %(levelname)s %(message)s")
    if not args.session or "/" in args.session or args.session in (".", ".."):
        print(f"lanetrace.writer: error: invalid session id {args.session!r}", file=sys.stderr)
        return 2
    try:
        writer = Writer(args.run_dir, args.trace_root, args.session, args.inline_symbols,
                        args.broker_pub)
    except (OSError, zmq.ZMQError) as exc:
        print(f"lanetrace.writer: error: cannot start: {exc}", file=sys.stderr)
        return 1

    def stop(signum, _frame):
        writer.stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("writer listening on %s/writer.sock, traces in %s/%s%s", args.run_dir,
             args.trace_root, args.session, " (inline symbols)" if args.inline_symbols else "")
    return writer.run()


if __name__ == "__main__":
    sys.exit(main())
