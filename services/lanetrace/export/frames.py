"""Turns an ATF V4 event stream into per-thread slices for the exporters.

Every exporter needs the same thing from a trace: calls matched with their
returns on a per-thread stack, optionally clipped to a time range, with frames
still open at the end closed at trace end. ``SliceTracker`` does that while
streaming, holding only the open frames of each thread, and reports to a
``Sink``. The stream is ordered per thread, not globally, so all clipping
decisions are made per thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.export.tracedir import TraceMeta, Window

# Flags a slice end can carry; exporters show them as annotations/args.
OPEN_AT_TRACE_END = "openAtTraceEnd"   # never returned before the trace ended
CLIPPED_END = "clippedEnd"             # cut at --time-end
NO_RETURN = "noReturn"                 # an outer frame returned first (lost return)
UNWOUND = "unwound"                    # left by longjmp/exception

NEG_INF = -(1 << 63)
POS_INF = 1 << 64


class FuncInfo:
    """A resolved function: one object per function, shared by its frames."""

    __slots__ = ("name", "module", "source_file", "source_line", "address")

    def __init__(self, name: str, module: str = "", source_file: str = "",
                 source_line: int = 0, address: int = 0):
        self.name = name
        self.module = module
        self.source_file = source_file
        self.source_line = source_line
        self.address = address

    @property
    def location(self) -> str:
        """``file:line`` where the trace knows it, else ""."""
        if not self.source_file:
            return ""
        return f"{self.source_file}:{self.source_line}" if self.source_line else self.source_file


class Frame:
    """An open call. ``shown`` is the start the exporters see (clipped to the
    time range), None while the frame is outside the range. ``child`` sums
    the shown durations of finished direct children (for self time).
    ``node`` is free for the sink's own bookkeeping."""

    __slots__ = ("func", "start", "shown", "args", "child", "depth", "parent", "node")

    def __init__(self, func: FuncInfo, start: int, shown, args, depth: int, parent):
        self.func = func
        self.start = start
        self.shown = shown
        self.args = args
        self.child = 0
        self.depth = depth
        self.parent = parent
        self.node = None


class Sink:
    """Receiver of the slice stream. Calls arrive in this order: ``process``,
    ``windows``, then per thread ``thread`` before that thread's first
    ``begin``/``instant``, and ``finish`` last. Begin/end pairs nest per
    thread."""

    wants_events = False  # True: also receive every in-range raw event

    def process(self, meta: TraceMeta) -> None: ...
    def windows(self, windows: list[Window]) -> None: ...
    def thread(self, tid: int, name: str) -> None: ...
    def begin(self, tid: int, ts: int, frame: Frame) -> None: ...
    def end(self, tid: int, ts: int, frame: Frame, ret: dict | None, flag: str | None) -> None: ...
    def instant(self, tid: int, ts: int, name: str, args: dict) -> None: ...
    def event(self, event: pb.Event, kind: str, ts: int, func: FuncInfo | None, depth: int) -> None: ...
    def finish(self, end_ts: int) -> None: ...


@dataclass
class TrackerStats:
    events: int = 0
    slices: int = 0
    threads: int = 0
    open_at_end: int = 0
    unmatched_returns: int = 0
    clamped_timestamps: int = 0
    first_ns: int | None = None
    last_ns: int | None = None


class _Thread:
    __slots__ = ("tid", "stack", "last_ts", "phase", "announced")

    def __init__(self, tid: int, phase: int):
        self.tid = tid
        self.stack: list[Frame] = []
        self.last_ts = NEG_INF
        self.phase = phase  # 0 before the range, 1 inside, 2 after
        self.announced = False


class SliceTracker:
    def __init__(self, sink: Sink, meta: TraceMeta, symbols: atf.SymbolTable,
                 time_start: int | None = None, time_end: int | None = None):
        self.sink = sink
        self.meta = meta
        self.symbols = symbols
        self.t0 = NEG_INF if time_start is None else time_start
        self.t1 = POS_INF if time_end is None else time_end
        self.ranged = time_start is not None or time_end is not None
        self.threads: dict[int, _Thread] = {}
        self.stats = TrackerStats()
        self._by_id: dict[int, FuncInfo] = {}
        self._by_key: dict = {}
        self._process_announced = False

    # -- symbol resolution -------------------------------------------------
    def resolve(self, p) -> FuncInfo:
        """FuncInfo of a FunctionCall/FunctionReturn payload: by function id
        (our flavour, via SymbolDefinition) or by symbol string / address
        (foreign flavour)."""
        fid = p.function_id
        if fid:
            fi = self._by_id.get(fid)
            if fi is not None:
                return fi
            sym = self.symbols.by_id.get(fid)
            if sym is not None:
                fi = FuncInfo(p.symbol or sym.name, sym.module, sym.source_file,
                              sym.source_line, sym.address or p.address)
                self._by_id[fid] = fi
                return fi
            # Used before its definition (a writer bug): still show something.
            return FuncInfo(p.symbol or f"<function {fid}>", "", "", 0, p.address)
        key = p.symbol or p.address
        fi = self._by_key.get(key)
        if fi is None:
            fi = FuncInfo(p.symbol or f"0x{p.address:x}", "", "", 0, p.address)
            self._by_key[key] = fi
        return fi

    # -- stream ------------------------------------------------------------
    def _announce_process(self) -> None:
        self._process_announced = True
        self.sink.process(self.meta)
        visible = [w for w in self.meta.windows if w.end_ns >= self.t0 and w.start_ns <= self.t1]
        if self.ranged:
            visible = [Window(max(w.start_ns, self.t0), min(w.end_ns, self.t1), w.trigger)
                       for w in visible]
        self.sink.windows(visible)

    def _thread(self, tid: int) -> _Thread:
        th = _Thread(tid, 0 if self.ranged else 1)
        self.threads[tid] = th
        return th

    def _announce(self, th: _Thread) -> None:
        th.announced = True
        self.stats.threads += 1
        self.sink.thread(th.tid, self.meta.thread_names.get(th.tid, ""))

    def _advance(self, th: _Thread, ts: int) -> None:
        """Move a thread's range phase forward to ``ts``."""
        if th.phase == 0 and ts >= self.t0:
            th.phase = 1
            if th.stack:
                if not th.announced:
                    self._announce(th)
                for f in th.stack:  # outermost first, so begins nest
                    f.shown = self.t0
                    self.sink.begin(th.tid, self.t0, f)
        if th.phase == 1 and ts > self.t1:
            th.phase = 2
            self._close_all(th, self.t1, CLIPPED_END)

    def _close_all(self, th: _Thread, ts: int, flag: str) -> None:
        stack = th.stack
        for i in range(len(stack) - 1, -1, -1):
            f = stack[i]
            if f.shown is None:
                continue
            self._end(th, ts, f, None, flag)
            f.shown = None

    def _end(self, th: _Thread, ts: int, f: Frame, ret, flag) -> None:
        parent = f.parent
        if parent is not None and parent.shown is not None:
            parent.child += ts - f.shown
        self.stats.slices += 1
        if flag == OPEN_AT_TRACE_END:
            self.stats.open_at_end += 1
        self.sink.end(th.tid, ts, f, ret, flag)

    def feed(self, events: Iterable[pb.Event]) -> None:
        sink = self.sink
        wants_events = sink.wants_events
        threads = self.threads
        stats = self.stats
        ranged = self.ranged
        resolve = self.resolve
        first = last = None
        count = 0
        for ev in events:
            count += 1
            kind = ev.WhichOneof("payload")
            tsm = ev.timestamp
            ts = tsm.seconds * 1_000_000_000 + tsm.nanos
            if kind == "trace_start":
                st = ev.trace_start
                if st.pid:
                    self.meta.pid = st.pid
                if st.executable_path:
                    self.meta.executable_path = st.executable_path
                    self.meta.args = list(st.args)
            if not self._process_announced:
                self._announce_process()
            if first is None or ts < first:
                first = ts
            if last is None or ts > last:
                last = ts
            tid = ev.thread_id
            th = threads.get(tid)
            if th is None:
                th = self._thread(tid)
            if ts < th.last_ts:
                stats.clamped_timestamps += 1
                ts = th.last_ts
            th.last_ts = ts
            if ranged:
                self._advance(th, ts)
            inside = th.phase == 1
            if kind == "function_call":
                p = ev.function_call
                func = resolve(p)
                stack = th.stack
                depth = len(stack)
                args = dict(p.argument_registers) if len(p.argument_registers) else None
                f = Frame(func, ts, ts if inside else None, args, depth,
                          stack[-1] if stack else None)
                stack.append(f)
                if inside:
                    if not th.announced:
                        self._announce(th)
                    sink.begin(tid, ts, f)
                    if wants_events:
                        sink.event(ev, kind, ts, func, ev.depth if ev.sequence else depth)
            elif kind == "function_return":
                p = ev.function_return
                func = resolve(p)
                depth = self._return(th, ts, p, func)
                if inside and wants_events:
                    sink.event(ev, kind, ts, func, ev.depth if ev.sequence else depth)
            elif kind == "signal_delivery":
                if inside:
                    if not th.announced:
                        self._announce(th)
                    sd = ev.signal_delivery
                    args = {"number": sd.number}
                    if sd.name:
                        args["name"] = sd.name
                    if len(sd.registers):
                        args["registers"] = dict(sd.registers)
                    sink.instant(tid, ts, f"signal {sd.name or sd.number}", args)
                    if wants_events:
                        sink.event(ev, kind, ts, None, len(th.stack))
            elif inside and wants_events:
                sink.event(ev, kind, ts, None, len(th.stack))
        stats.events += count
        if first is not None:
            stats.first_ns = first if stats.first_ns is None else min(first, stats.first_ns)
            stats.last_ns = last if stats.last_ns is None else max(last, stats.last_ns)

    def _return(self, th: _Thread, ts: int, p, func: FuncInfo) -> int:
        """Pop the frame a return closes; returns the depth of that frame."""
        stack = th.stack
        name = func.name
        i = len(stack) - 1
        while i >= 0 and stack[i].func.name != name:
            i -= 1
        if i < 0:
            # Entered before tracing began (attach) or its call was dropped:
            # no begin to pair with, so nothing to export.
            self.stats.unmatched_returns += 1
            return len(stack)
        while len(stack) - 1 > i:
            lost = stack.pop()
            if lost.shown is not None:
                self._end(th, ts, lost, None, NO_RETURN)
        f = stack.pop()
        if f.shown is not None:
            ret = dict(p.return_registers) if len(p.return_registers) else None
            self._end(th, ts, f, ret, UNWOUND if p.unwound else None)
        return i

    def finish(self) -> None:
        """Close what is still open at trace end and tell the sink."""
        if not self._process_announced:
            self._announce_process()
        end = self.stats.last_ns if self.stats.last_ns is not None else 0
        for th in self.threads.values():
            if self.ranged:
                self._advance(th, end)
            if th.phase == 1:
                self._close_all(th, min(end, self.t1), OPEN_AT_TRACE_END)
            th.stack.clear()
        self.sink.finish(end)
