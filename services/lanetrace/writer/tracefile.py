"""The trace-file store: one traced process's ``events.bin`` and its
sidecars (``trace.json``, ``symbols.json``), appended to by the writer service.

The file is the only source of truth. Everything kept in memory per trace
(next event id, function table, per-thread max sequence numbers, counters)
can be rebuilt by scanning ``events.bin``; that is what happens after a
SIGKILL, and also after any failed write, so an error can never leave the
memory state ahead of the file. A torn last frame is cut on reopening.

Raw index records are encoded in C (native/src/encode.c); Python only moves
whole batches. With the flight recorder on, the encoder holds calls and
returns for a while (``hold_ns``), so that the detail records the drainers
send once a window claims them go into the same event, and writes each
thread's events in sequence order (docs/internals.md, "Flight recorder").
"""
from __future__ import annotations

import heapq
import logging
import mmap
import os
import threading
import time

from lanetrace._native import ffi, lib
from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.core import flightrec
from lanetrace.writer.holdjournal import HoldJournal

log = logging.getLogger("lanetrace.writer")

RECORD_SIZE = 32
SYNC_INTERVAL_S = 1.0
# Held calls and returns wait this long beyond the pre-roll and the mark
# latency for their detail: a drainer's release cycle and the data channel.
HOLD_SLACK_S = 0.5
TOP_FUNCTIONS = 20
U64 = (1 << 64) - 1


class TraceCorrupt(Exception):
    """events.bin cannot be continued; the message says where and why."""



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


class TraceFile:
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
        self.hooks: dict = {}  # hook summary from target_end (hooksafety.summarize)
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
                     "detail_discarded": 0, "detail_duplicates": 0, "detail_invalid_bytes": 0,
                     "detail_late": 0, "detail_unmatched": 0, "hold_early": 0}
        self.events_after_end = 0
        self.hold_ns = 0  # 0: calls and returns are written as they come
        self.hold_budget = 0
        self.journal = HoldJournal(trace_dir)
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
            self._replay_journal()
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
        self.hooks = dict(old.get("hooks") or {})
        self.windows = flightrec.merge_windows(old.get("windows") or [])
        self.threads = {int(t["threadId"]): t["name"] for t in old.get("threads") or []}
        fr = old.get("flightRecorder") or {}
        self.flight = dict(fr.get("config") or {})
        self.drainer_detail = {k: dict(v) for k, v in (fr.get("drainers") or {}).items()}
        wdd = fr.get("writer") or {}
        self.base["detail_discarded"] = int(wdd.get("discarded", 0))
        self.base["detail_duplicates"] = int(wdd.get("duplicates", 0))
        self.base["detail_invalid_bytes"] = int(wdd.get("invalidBytes", 0))
        self.base["detail_late"] = int(wdd.get("late", 0))
        self.base["detail_unmatched"] = int(wdd.get("unmatched", 0))
        self.base["hold_early"] = int(wdd.get("releasedEarly", 0))

    def _replay_journal(self) -> None:
        """Hold again what a killed writer held (acked, not yet written);
        records events.bin has already are dropped by sequence number, and
        are not counted as duplicates or late detail a second time."""
        if not self.journal.existing():
            return
        if not self.flight:
            self.flight = {"full": False}
        self._start_hold()
        recounted = ("duplicates", "detail_late", "detail_duplicates", "detail_discarded")
        before = self.stats()
        before = {k: getattr(before, k) for k in recounted}
        replayed = 0
        for entry in self.journal.replay():
            if entry[0] == "index":
                self._hold_index(entry[1], len(entry[1]) // RECORD_SIZE, None)
            else:
                self._hold_detail(entry[1], entry[2], entry[3])
            replayed += 1
        after = self.stats()
        for k in recounted:
            self.base[k] -= getattr(after, k) - before[k]
        log.info("pid %d: replayed %d held batches from the journal", self.pid, replayed)

    def close(self) -> None:
        self.journal.close()
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

    def _start_hold(self) -> None:
        """With the flight recorder on, hold calls and returns until their
        detail can have come (see module doc); the budget is the drainers'
        own pre-roll budget."""
        if self.hold_ns or not self.flight:
            return
        pre_ns = int(self.flight.get("preRollNs", 0))
        if self.flight.get("full"):
            pre_ns = 0  # --full: the drainers send detail as they take it
        self.hold_ns = pre_ns + flightrec.seconds_to_ns(flightrec.MARK_LATENCY_S + HOLD_SLACK_S)
        self.hold_budget = int(self.flight.get("bufferBytes") or
                               flightrec.DEFAULT_BUFFER_MB << 20)
        lib.lt_encoder_set_hold(self.enc, self.hold_budget)

    def release(self, out: "OutBuffer", everything: bool = False) -> tuple:
        """Write the held calls and returns whose detail cannot come any more
        (all of them with ``everything``, or once the trace has ended)."""
        if not self.hold_ns or not lib.lt_encoder_held_bytes(self.enc):
            return 0, 0
        horizon = U64 if everything or self.end is not None else \
            max(0, time.monotonic_ns() - self.hold_ns)
        need = lib.lt_encoder_flush_bound(self.enc)
        buf = out.get(need)
        res = ffi.new("lt_flush_result *")
        n = lib.lt_encoder_flush(self.enc, horizon, buf, need, res)
        if n < 0:
            raise RuntimeError("encode buffer smaller than lt_encoder_flush_bound")
        self._append(ffi.buffer(buf, n))
        if self.end is not None:
            self.events_after_end += res.events
        if not lib.lt_encoder_held_bytes(self.enc):
            self.journal.clear()
        else:
            self.journal.released_until(horizon)
        return res.events, n

    def _hold_index(self, payload, count: int, out: "OutBuffer | None"):
        """Encode (or, holding, take in) ``count`` raw index records."""
        need = lib.lt_encode_bound(self.enc, count) if out is not None else 0
        buf = out.get(need) if out is not None else ffi.NULL
        res = ffi.new("lt_batch_result *")
        src = ffi.from_buffer(payload)
        try:
            n = lib.lt_encode_index(self.enc, src, count, buf, need, res)
        finally:
            ffi.release(src)
        if n < 0:
            raise RuntimeError("encode buffer smaller than lt_encode_bound")
        handled = res.events + res.duplicates + res.invalid_records  # late ones are events
        if handled != count:
            raise MemoryError(f"encoder ran out of memory after {handled} of {count} records")
        return res, n, buf

    def append_index(self, payload, count: int, out: "OutBuffer") -> tuple:
        self._start_hold()
        if self.hold_ns:
            res, n, _ = self._hold_index(payload, count, None)
            self.journal.add_index(payload)  # acked means durable
        else:
            res, n, buf = self._hold_index(payload, count, out)
            self._append(ffi.buffer(buf, n))
            if self.end is not None:
                self.events_after_end += res.events
        _, held_out = self.release(out)
        return res.events, res.duplicates, res.gaps, res.unknown_function, \
            res.invalid_records, res.late, n + held_out

    def _hold_detail(self, payload, keep_all: bool, windows: list[dict]):
        bounds = flightrec.flat_bounds(windows)
        win = ffi.new("uint64_t[]", bounds or [0])
        res = ffi.new("lt_detail_result *")
        src = ffi.from_buffer(payload)
        try:
            rc = lib.lt_encode_detail(self.enc, ffi.cast("const uint8_t *", src), len(payload),
                                      win, len(bounds) // 2, 1 if keep_all else 0, res)
        finally:
            ffi.release(src)
        if rc != 0:
            raise MemoryError("lt_encode_detail: out of memory")
        return res

    def append_detail(self, payload, keep_all: bool, out: "OutBuffer"):
        """Hold the detail records of ``payload`` that lie in a window for the
        events of their calls and returns."""
        if not self.flight:  # detail without a flight-recorder config: hold from now on
            self.flight = {"full": keep_all}
        self._start_hold()
        res = self._hold_detail(payload, keep_all, self.windows)
        if res.kept:
            self.journal.add_detail(payload, keep_all, self.windows)
        self.manifest_dirty = True
        _, n = self.release(out)
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

    def write_end(self, end: dict, out: "OutBuffer") -> None:
        self.release(out, everything=True)
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
            "eventEncoding": atf.COMPACT_ENCODING,
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
            "hooks": self.hooks,
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
              "invalidBytes": st.detail_invalid_bytes + self.base["detail_invalid_bytes"],
              "late": st.detail_late + self.base["detail_late"],
              "unmatched": st.detail_unmatched + self.base["detail_unmatched"],
              "releasedEarly": st.hold_early + self.base["hold_early"],
              "holdNs": self.hold_ns, "holdBudgetBytes": self.hold_budget}
        aged = sum(int(d.get("discarded", 0)) for d in self.drainer_detail.values())
        budget = sum(int(d.get("budget", 0)) for d in self.drainer_detail.values())
        lost = sum(int(d.get("lost", 0)) for d in self.drainer_detail.values())
        lost_in_writer = wd["discarded"] + wd["late"] + wd["unmatched"]
        return {"kept": st.detail_events, "discarded": lost_in_writer + aged + budget,
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
        self._targets: list[TraceFile] = []
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
