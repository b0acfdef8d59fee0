"""Comparing two traces: which functions changed most (call counts, total
time), which exist in only one run, and where each thread's sequence of
calls first diverges.

Threads are matched by creation order, i.e. by the time of their first
call. Each run's call sequences are kept as arrays of interned name ids
(12 bytes per call), which is what finding a divergence anywhere needs.
"""
from __future__ import annotations

from array import array

from lanetrace.core import atf
from lanetrace.export.frames import Frame, Sink, SliceTracker
from lanetrace.export.reader import stream_events
from lanetrace.export.tracedir import read_meta


class _FunctionStats:
    __slots__ = ("module", "calls", "total", "self_time")

    def __init__(self, module: str):
        self.module = module
        self.calls = 0
        self.total = 0
        self.self_time = 0


class _ThreadCalls:
    __slots__ = ("tid", "first_ns", "order", "names", "times")

    def __init__(self, tid: int, first_ns: int, order: int):
        self.tid = tid
        self.first_ns = first_ns
        self.order = order
        self.names = array("I")
        self.times = array("q")


class _Collector(Sink):
    def __init__(self, interned: dict[str, int]):
        self.interned = interned
        self.functions: dict[str, _FunctionStats] = {}
        self.threads: dict[int, _ThreadCalls] = {}

    def begin(self, tid: int, ts: int, frame: Frame) -> None:
        name = frame.func.name
        st = self.functions.get(name)
        if st is None:
            st = self.functions[name] = _FunctionStats(frame.func.module)
        st.calls += 1
        th = self.threads.get(tid)
        if th is None:
            th = self.threads[tid] = _ThreadCalls(tid, ts, len(self.threads))
        nid = self.interned.get(name)
        if nid is None:
            nid = self.interned[name] = len(self.interned)
        th.names.append(nid)
        th.times.append(ts)

    def end(self, tid: int, ts: int, frame: Frame, ret, flag) -> None:
        st = self.functions[frame.func.name]
        dur = ts - frame.shown
        st.total += dur
        st.self_time += dur - frame.child


def _collect(trace_dir: str, interned: dict[str, int]) -> tuple[_Collector, dict]:
    meta = read_meta(trace_dir)
    symbols = atf.SymbolTable.with_sidecar(trace_dir)
    sink = _Collector(interned)
    tracker = SliceTracker(sink, meta, symbols)
    tracker.feed(stream_events(trace_dir, symbols))
    tracker.finish()
    s = tracker.stats
    summary = {"traceDir": trace_dir, "pid": meta.pid, "executablePath": meta.executable_path,
               "events": s.events, "calls": sum(f.calls for f in sink.functions.values()),
               "threads": len(sink.threads), "functions": len(sink.functions),
               "timeStartNs": s.first_ns, "timeEndNs": s.last_ns,
               "openAtTraceEnd": s.open_at_end, "unmatchedReturns": s.unmatched_returns}
    return sink, summary


def _function_row(name: str, a: _FunctionStats, b: _FunctionStats) -> dict:
    return {"functionName": name, "module": a.module or b.module,
            "callsA": a.calls, "callsB": b.calls, "callsDelta": b.calls - a.calls,
            "totalTimeNsA": a.total, "totalTimeNsB": b.total,
            "totalTimeDeltaNs": b.total - a.total,
            "selfTimeNsA": a.self_time, "selfTimeNsB": b.self_time}


def _only_row(name: str, st: _FunctionStats) -> dict:
    return {"functionName": name, "module": st.module, "calls": st.calls,
            "totalTimeNs": st.total, "selfTimeNs": st.self_time}


def _divergence(a: _ThreadCalls, b: _ThreadCalls, names: list[str], context: int):
    na, nb = a.names, b.names
    n = min(len(na), len(nb))
    i = 0
    # Compare in blocks first: array slices compare in C.
    block = 4096
    while i + block <= n and na[i:i + block] == nb[i:i + block]:
        i += block
    while i < n and na[i] == nb[i]:
        i += 1
    if i == n and len(na) == len(nb):
        return None

    def side(t: _ThreadCalls) -> dict:
        seq = t.names
        if i < len(seq):
            return {"call": names[seq[i]], "timestampNs": t.times[i],
                    "after": [names[x] for x in seq[i + 1:i + 1 + context]]}
        return {"call": None, "timestampNs": None, "after": []}  # this thread ended first

    return {"callIndex": i,
            "before": [names[x] for x in na[max(0, i - context):i]],
            "a": side(a), "b": side(b)}


def diff_traces(trace_dir_a: str, trace_dir_b: str, context: int = 3, top: int = 20) -> dict:
    """Compare two trace directories; returns a JSON-able dict (camelCase
    keys). Raises ``atf.TraceFormatError`` for unreadable traces and
    ValueError for bad ``context``/``top``."""
    for name, value in (("context", context), ("top", top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    interned: dict[str, int] = {}
    col_a, sum_a = _collect(trace_dir_a, interned)
    col_b, sum_b = _collect(trace_dir_b, interned)
    names = [""] * len(interned)
    for name, nid in interned.items():
        names[nid] = name

    fa, fb = col_a.functions, col_b.functions
    both = [_function_row(n, fa[n], fb[n]) for n in fa.keys() & fb.keys()]
    by_calls = sorted((r for r in both if r["callsDelta"]),
                      key=lambda r: (-abs(r["callsDelta"]), r["functionName"]))[:top]
    by_time = sorted((r for r in both if r["totalTimeDeltaNs"]),
                     key=lambda r: (-abs(r["totalTimeDeltaNs"]), r["functionName"]))[:top]
    only_a = sorted((_only_row(n, fa[n]) for n in fa.keys() - fb.keys()),
                    key=lambda r: (-r["calls"], r["functionName"]))
    only_b = sorted((_only_row(n, fb[n]) for n in fb.keys() - fa.keys()),
                    key=lambda r: (-r["calls"], r["functionName"]))

    def creation_order(col: _Collector) -> list[_ThreadCalls]:
        return sorted(col.threads.values(), key=lambda t: (t.first_ns, t.order))

    ta, tb = creation_order(col_a), creation_order(col_b)
    threads = []
    for index, (a, b) in enumerate(zip(ta, tb)):
        div = _divergence(a, b, names, context)
        threads.append({"index": index, "threadIdA": a.tid, "threadIdB": b.tid,
                        "callsA": len(a.names), "callsB": len(b.names),
                        "identical": div is None, "divergence": div})
    unmatched_a = [t.tid for t in ta[len(tb):]]
    unmatched_b = [t.tid for t in tb[len(ta):]]
    identical = (not only_a and not only_b and not by_calls and not unmatched_a
                 and not unmatched_b and all(t["identical"] for t in threads))
    return {"traceA": sum_a, "traceB": sum_b, "context": context, "top": top,
            "identical": identical,
            "functions": {"byCallsDelta": by_calls, "byTotalTimeDelta": by_time,
                          "onlyInA": only_a, "onlyInB": only_b},
            "threads": threads,
            "unmatchedThreads": {"a": unmatched_a, "b": unmatched_b}}
