"""Call trees read off the columnar index: the lines of ``lanetrace replay``
and of the ``calltree.get`` method.

A walk follows one thread's events in order with a call stack, using the same
rule as the span pairing (index.py / qindex.c): a return closes the topmost
open call of the same function, and calls above it never returned. Every
call becomes one line, or two when it has children:

* ``leaf``  — ``name();``: the call's return is the thread's very next event
  (or ``maxDepth`` hides its children);
* ``entry`` — ``name() {`` and, later, ``exit`` — ``}`` carrying the duration;
* ``signal`` — a signal delivered to the thread.

A line is a dict::

    {"type": "entry"|"exit"|"leaf"|"signal", "threadId", "timestampNs",
     "depth",            # stack depth of the call, 0 = outermost (absolute)
     "functionName", "module",
     "callId",           # span id (as in spans.list / SQL calls.call_id); null if it never returned
     "durationNs",       # entry/exit/leaf; null when the call never returned
     "end",              # exit/leaf: "returned", "unwound" (longjmp/exception),
                         # "noReturn" (an outer frame returned first),
                         # "openAtTraceEnd" (still running when the trace ended)
     "args"?,            # entry/leaf inside flight-recorder windows: {"arg0": .., ...}
     "returnValue"?,     # exit/leaf inside windows: rax
     "signal"?}          # signal lines: {"number", "name"}

An exit's ``timestampNs`` is the return's time (for ``openAtTraceEnd``, the
trace end). Walks stream: the index is memory-mapped and read in chunks, so
the first lines of a 10M-event trace cost as much as those of a tiny one.
Times are raw nanoseconds; formatting is the caller's business.
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import time

import numpy as np
import orjson

from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.query import index as ix
from lanetrace.query import params as P
from lanetrace.query.errors import INTERNAL_ERROR, RpcError, invalid_params

CHUNK = 4096
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
ARG_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")  # System V AMD64 order
END_KEY = 1 << 62  # sort key of the lines that close a walk's remaining frames
CURSOR_VERSION = 1
_UNWOUND_TAG = b"\x80\x01\x01"  # FunctionReturn.unwound (field 16) = true, as encoded


class _Frame:
    __slots__ = ("rank", "span", "fidx", "depth", "hidden", "collapsed", "ts", "ret", "dur")

    def __init__(self, rank, span, fidx, depth, hidden, collapsed, ts, ret, dur):
        self.rank, self.span, self.fidx, self.depth = rank, span, fidx, depth
        self.hidden, self.collapsed, self.ts = hidden, collapsed, ts
        self.ret, self.dur = ret, dur  # the return's rank and the duration; -1/None if none


class TreeOptions:
    """What a walk shows. ``max_depth``: lines of depth < max_depth (a call at
    the last level shows as a leaf with its whole duration); ``min_duration``:
    calls at least this long (calls that never returned always show);
    ``args``: decode flight-recorder registers; ``signature(fidx)``: a
    function's (parameter count, returns a value) where known, else None
    (then all six argument registers and rax show)."""

    def __init__(self, max_depth=None, min_duration=None, args=True, signature=None):
        self.max_depth = max_depth
        self.min_duration = min_duration
        self.args = args
        self.signature = signature or (lambda fidx: None)


class TreeStats:
    def __init__(self):
        self.orphan_returns = 0   # returns whose call was never recorded (attach, drops)


class CallTree:
    """Walks over one opened trace (a ``store.Trace``)."""

    def __init__(self, t, options: TreeOptions | None = None):
        self.t = t
        self.idx = t.idx
        self.opt = options or TreeOptions()
        self.stats = TreeStats()
        self.trace_end = t.idx.meta["timeEndNs"] or 0
        self._tpos = {int(tid): j for j, tid in enumerate(np.asarray(t.idx.th_tids).tolist())}
        # traces without flight-recorder details or unwound returns skip those lookups
        self._details = len(t.idx.det_off) > 0
        self._may_unwind = t.manifest.get("unwoundCount") != 0

    # ---- positions -----------------------------------------------------

    def thread_ids(self) -> list[int]:
        """Threads with events, ascending (thread 0, the process, has no calls)."""
        return [tid for tid in sorted(self._tpos) if tid != 0]

    def thread_ranks(self, tid: int) -> np.ndarray:
        j = self._tpos.get(tid)
        if j is None:
            return np.zeros(0, np.int32)
        return self.idx.th_ranks[self.idx.th_off[j]:self.idx.th_off[j + 1]]

    def rank_at(self, ts: int, side="left") -> int:
        return int(np.searchsorted(self.idx.ev_ts, ts, side))

    def span_of(self, rank: int) -> int:
        """The span id whose call is at ``rank``, or -1 (never returned)."""
        cr = self.idx.sp_call_rank
        s = int(np.searchsorted(cr, rank))
        return s if s < len(cr) and int(cr[s]) == rank else -1

    def thread_spans(self, tid: int) -> np.ndarray:
        j = self._tpos.get(tid)
        if j is None:
            return np.zeros(0, np.int32)
        return self.idx.sp_th_ids[self.idx.sp_th_off[j]:self.idx.sp_th_off[j + 1]]

    # ---- the stack at a point --------------------------------------------

    def open_frames(self, tid: int, rank: int, floor_rank: int = -1) -> list[_Frame]:
        """The frames open on thread ``tid`` just before the event at ``rank``
        (calls before it that return at or after it, or never return before
        it), outermost first; only calls at or after ``floor_rank``."""
        idx = self.idx
        spans = np.asarray(self.thread_spans(tid))
        calls = idx.sp_call_rank[spans]
        k = int(np.searchsorted(calls, rank, "left"))
        lo = int(np.searchsorted(calls, floor_rank, "left")) if floor_rank >= 0 else 0
        cand = spans[lo:k]
        open_spans = cand[idx.sp_ret_rank[cand] >= rank]
        items = [(int(idx.sp_call_rank[s]), int(s)) for s in open_spans]
        # calls that never returned: open until the innermost span around them ends
        tr = self.thread_ranks(tid)
        before = np.asarray(tr[int(np.searchsorted(tr, max(floor_rank, 0))):
                               int(np.searchsorted(tr, rank))])
        call_ranks = before[idx.ev_kind[before] == ix.K_CALL]
        if len(call_ranks) != k - lo:
            lost = np.setdiff1d(call_ranks, calls[lo:k], assume_unique=True)
            for c in lost.tolist():
                fate = self._fate(spans, c)
                if fate is None or fate >= rank:
                    items.append((c, -1))
        items.sort()
        frames = []
        for depth, (c, s) in enumerate(items):
            frames.append(self._frame(c, s, depth, frames[-1] if frames else None))
        return frames

    def _fate(self, spans, call_rank):
        """Rank of the return that closes a call that never returned (the
        return of the innermost span around it), None if none does."""
        idx = self.idx
        calls = idx.sp_call_rank[spans]
        k = int(np.searchsorted(calls, call_rank, "left"))
        cand = spans[:k]
        around = cand[idx.sp_ret_rank[cand] > call_rank]
        return int(idx.sp_ret_rank[around[-1]]) if len(around) else None

    def _frame(self, rank, span, depth, parent, fidx=None, ts=None, ret=None, dur=None) -> _Frame:
        idx, opt = self.idx, self.opt
        if fidx is None:
            fidx, ts = int(idx.ev_fidx[rank]), int(idx.ev_ts[rank])
        if ret is None:
            ret, dur = ((int(idx.sp_ret_rank[span]), int(idx.sp_dur[span])) if span >= 0
                        else (-1, None))
        hidden = parent is not None and (parent.hidden or parent.collapsed)
        if opt.max_depth is not None and depth >= opt.max_depth:
            hidden = True
        if opt.min_duration is not None and dur is not None and dur < opt.min_duration:
            hidden = True
        collapsed = opt.max_depth is not None and depth == opt.max_depth - 1
        return _Frame(rank, span, fidx, depth, hidden, collapsed, ts, ret, dur)

    # ---- walking ---------------------------------------------------------

    def walk(self, tid: int, start_rank: int = 0, stop_rank: int | None = None,
             stack: list[_Frame] | None = None, until_empty: bool = False, group=0,
             floor_rank: int = -1, resume_from: int | None = None):
        """Lines of thread ``tid`` from its first event at or after
        ``start_rank`` to before ``stop_rank``, then closing lines for the
        frames still open. Each item is ``(key, line)``; lines of one event
        share a key ``(group, rank)``. ``stack``: the frames open at the
        start (default: rebuilt from the calls at or after ``floor_rank``;
        on a fresh start they are shown first, as entries). ``resume_from``:
        the view's own start when continuing after a cursor (nothing is
        shown again). ``until_empty``: stop once the outermost frame of
        ``stack`` closed (a subtree walk)."""
        idx = self.idx
        ranks = self.thread_ranks(tid)
        n = len(ranks)
        p = int(np.searchsorted(ranks, start_rank, "left"))
        if resume_from is not None and 0 < p < n:
            # a leaf consumed its return together with its call
            prev, here = int(ranks[p - 1]), int(ranks[p])
            if (resume_from <= prev < start_rank and idx.ev_kind[prev] == ix.K_CALL
                    and idx.ev_kind[here] == ix.K_RETURN):
                s = self.span_of(prev)
                if s >= 0 and int(idx.sp_ret_rank[s]) == here:
                    p += 1
        if stack is None:
            stack = (self.open_frames(tid, int(ranks[p]) if p < n else (1 << 31), floor_rank)
                     if p else [])
            if until_empty and not stack:
                return
            if resume_from is None and stack:
                key = (group, int(ranks[p - 1]))
                for f in stack:
                    if not f.hidden:
                        yield key, self._line("leaf" if f.collapsed else "entry", tid, f)
        stop = (1 << 31) if stop_rank is None else stop_rank
        done = False
        while p < n and not done:
            chunk = np.asarray(ranks[p:p + CHUNK + 1])
            r_list = chunk.tolist()
            kinds = idx.ev_kind[chunk].tolist()
            fidxs = idx.ev_fidx[chunk].tolist()
            tss = idx.ev_ts[chunk].tolist()
            # the span (if any) of every event as a call: one search per chunk
            cr = idx.sp_call_rank
            if len(cr):
                pos = np.minimum(np.searchsorted(cr, chunk), len(cr) - 1)
                is_span = np.asarray(cr[pos]) == chunk
                spans = np.where(is_span, pos, -1).tolist()
                rets = np.where(is_span, idx.sp_ret_rank[pos], -1).tolist()
                durs = np.where(is_span, idx.sp_dur[pos], -1).tolist()
            else:
                spans = rets = durs = [-1] * len(r_list)
            m = min(CHUNK, len(r_list))
            i = 0
            while i < m:
                r = r_list[i]
                if r >= stop:
                    done = True
                    break
                k = kinds[i]
                key = (group, r)
                if k == ix.K_CALL:
                    s = spans[i]
                    f = self._frame(r, s, len(stack), stack[-1] if stack else None, fidxs[i],
                                    tss[i], rets[i], durs[i] if s >= 0 else None)
                    leaf = s >= 0 and i + 1 < len(r_list) and r_list[i + 1] == rets[i]
                    if leaf and r_list[i + 1] < stop:
                        if not f.hidden:
                            yield key, self._line("leaf", tid, f, ret_rank=r_list[i + 1])
                        i += 2
                        if until_empty and not stack:
                            done = True
                            break
                        continue
                    stack.append(f)
                    if not f.hidden:
                        yield key, self._line("leaf" if f.collapsed else "entry", tid, f)
                elif k == ix.K_RETURN:
                    fx = fidxs[i]
                    j = len(stack) - 1
                    while j >= 0 and stack[j].fidx != fx:
                        j -= 1
                    if j < 0:
                        self.stats.orphan_returns += 1
                    else:
                        while len(stack) - 1 > j:
                            lost = stack.pop()
                            if not lost.hidden and not lost.collapsed:
                                yield key, self._exit(tid, lost, tss[i], "noReturn", None)
                        f = stack.pop()
                        if not f.hidden and not f.collapsed:
                            yield key, self._exit(tid, f, tss[i], None, r)
                        if until_empty and not stack:
                            done = True
                            break
                elif k == ix.K_SIGNAL:
                    parent = stack[-1] if stack else None
                    if parent is None or not (parent.hidden or parent.collapsed):
                        yield key, self._signal(tid, r, len(stack))
                i += 1
            p += i
        yield from self.close(tid, stack, group)

    def close(self, tid, stack, group=0):
        """Closing lines of the frames still open at the end of a walk,
        innermost first (their real end where the trace has it)."""
        key = (group, END_KEY)
        idx = self.idx
        while stack:
            f = stack.pop()
            if f.hidden or f.collapsed:
                continue
            if f.span >= 0:
                yield key, self._exit(tid, f, int(idx.ev_ts[f.ret]), None, f.ret)
            else:
                end, ts = self._lost_end(tid, f)
                yield key, self._exit(tid, f, ts, end, None)

    def _lost_end(self, tid, f: _Frame):
        """(end, time) of a call that never returned: closed by the return of
        the innermost span around it, else still open when the trace ended."""
        fate = self._fate(np.asarray(self.thread_spans(tid)), f.rank)
        if fate is None:
            return "openAtTraceEnd", self.trace_end
        return "noReturn", int(self.idx.ev_ts[fate])

    def interleaved(self, tids, start_rank=0, stop_rank=None, resume_from=None):
        """The walks of several threads merged by time (key = global rank)."""
        walks = [self.walk(tid, start_rank, stop_rank, group=0, resume_from=resume_from)
                 for tid in tids]
        return heapq.merge(*walks, key=lambda item: item[0])

    def subtree(self, span_or_rank: int, is_span=True, group=0):
        """Lines of one call and everything under it (``span_or_rank``: a
        span id, or the rank of a call that never returned)."""
        idx = self.idx
        if is_span:
            rank, s = int(idx.sp_call_rank[span_or_rank]), span_or_rank
            depth = int(idx.sp_depth[s])
        else:
            rank, s = span_or_rank, self.span_of(span_or_rank)
            depth = max(int(idx.ev_depth[rank]), 0)
        tid = int(idx.ev_tid[rank])
        return self.walk_subtree(tid, rank, s, depth, rank, group)

    def walk_subtree(self, tid, root_rank, root_span, root_depth, resume_rank, group):
        """Lines of the subtree of the call at ``root_rank`` from ``resume_rank``
        on. ``maxDepth`` counts from the root; lines carry absolute depths."""
        for key, line in self._subtree(tid, root_rank, root_span, resume_rank, group):
            line["depth"] += root_depth
            yield key, line

    def _subtree(self, tid, root_rank, root_span, resume_rank, group):
        idx = self.idx
        if resume_rank <= root_rank:
            root = self._frame(root_rank, root_span, 0, None)
            ranks = self.thread_ranks(tid)
            p = int(np.searchsorted(ranks, root_rank))
            nxt = int(ranks[p + 1]) if p + 1 < len(ranks) else -1
            key = (group, root_rank)
            if root_span >= 0 and nxt == int(idx.sp_ret_rank[root_span]):
                if not root.hidden:
                    yield key, self._line("leaf", tid, root)
                return
            if not root.hidden:
                yield key, self._line("leaf" if root.collapsed else "entry", tid, root)
            stack = [root]
            start = root_rank + 1
        else:
            stack = None  # the walk rebuilds the subtree's open frames at resume_rank
            start = resume_rank
        if root_span >= 0:
            stop = int(idx.sp_ret_rank[root_span]) + 1
        else:
            stop = self._fate(np.asarray(self.thread_spans(tid)), root_rank)
        yield from self.walk(tid, start, stop, stack=stack, until_empty=True, group=group,
                             floor_rank=root_rank,
                             resume_from=None if stack is not None else root_rank)

    # ---- lines -------------------------------------------------------------

    def _line(self, typ, tid, f: _Frame, ret_rank=None) -> dict:
        t = self.t
        line = {"type": typ, "threadId": tid, "timestampNs": f.ts, "depth": f.depth,
                "functionName": t.name_obj[f.fidx], "module": t.module_obj[f.fidx],
                "callId": f.span if f.span >= 0 else None, "durationNs": f.dur}
        if typ == "leaf":
            if f.span >= 0:
                line["end"] = "unwound" if self._unwound(f.ret) else "returned"
            else:
                line["end"] = self._lost_end(tid, f)[0]
        if self.opt.args and self._details:
            args = self._registers(f.rank)
            if args is not None:
                line["args"] = self._arguments(args, f.fidx)
            if typ == "leaf" and f.span >= 0 and self._returns(f.fidx):
                rv = self._registers(f.ret)
                if rv is not None and "rax" in rv:
                    line["returnValue"] = rv["rax"]
        return line

    def _exit(self, tid, f: _Frame, ts, end, ret_rank) -> dict:
        t = self.t
        if end is None:
            end = "unwound" if self._unwound(ret_rank) else "returned"
        line = {"type": "exit", "threadId": tid, "timestampNs": ts, "depth": f.depth,
                "functionName": t.name_obj[f.fidx], "module": t.module_obj[f.fidx],
                "callId": f.span if f.span >= 0 else None,
                "durationNs": ts - f.ts if end in ("returned", "unwound") else None,
                "end": end}
        if end == "openAtTraceEnd":
            line["durationNs"] = None
        if self.opt.args and self._details and ret_rank is not None and self._returns(f.fidx):
            rv = self._registers(ret_rank)
            if rv is not None and "rax" in rv:
                line["returnValue"] = rv["rax"]
        return line

    def _signal(self, tid, rank, depth) -> dict:
        ev = self._decode(int(self.idx.ev_off[rank]), int(self.idx.ev_len[rank]))
        sd = ev.signal_delivery
        return {"type": "signal", "threadId": tid, "timestampNs": int(self.idx.ev_ts[rank]),
                "depth": depth, "signal": {"number": sd.number, "name": sd.name or None}}

    def _decode(self, off, ln) -> pb.Event:
        ev = pb.Event()
        try:
            ev.ParseFromString(self.t.events_buffer()[off:off + ln])
        except Exception:  # the file changed under us or is corrupt; report, don't crash
            raise RpcError(INTERNAL_ERROR, f"failed to decode event at offset {off} of "
                                           f"events.bin: corrupt, or changed") from None
        return ev

    def _unwound(self, rank) -> bool:
        if not self._may_unwind:
            return False
        off, ln = int(self.idx.ev_off[rank]), int(self.idx.ev_len[rank])
        buf = self.t.events_buffer()
        if buf.find(_UNWOUND_TAG, off, off + ln) < 0:
            return False  # the common case costs a byte search, not a decode
        return self._decode(off, ln).function_return.unwound

    def _registers(self, rank):
        """Registers of the flight-recorder detail copy of an event, if any."""
        d = int(self.idx.ev_detail[rank])
        if d < 0:
            return None
        ev = self._decode(int(self.idx.det_off[d]), int(self.idx.det_len[d]))
        which = ev.WhichOneof("payload")
        if which == "function_call":
            return dict(ev.function_call.argument_registers)
        if which == "function_return":
            return dict(ev.function_return.return_registers)
        return None

    def _returns(self, fidx: int) -> bool:
        sig = self.opt.signature(fidx)
        return sig is None or sig[1]

    def _arguments(self, regs: dict, fidx: int) -> dict:
        sig = self.opt.signature(fidx)
        names = ARG_REGISTERS if sig is None else ARG_REGISTERS[:sig[0]]
        return {f"arg{i}": regs[r] for i, r in enumerate(names) if r in regs}


# ---- calltree.get ------------------------------------------------------------

CALLTREE_PARAMS = ("traceId", "threadId", "spanId", "functionName", "timeStartNs", "timeEndNs",
                   "interleave", "maxDepth", "minDurationNs", "args", "limit", "cursor")


def calltree_get(store, params, signature=None) -> dict:
    """A page of the call tree.

    Params: ``{traceId, threadId?, spanId?, functionName?, timeStartNs?,
    timeEndNs?, interleave=false, maxDepth?, minDurationNs?, args=true,
    limit=1000 (max 10000), cursor?}``

    * ``spanId``: the subtree of that call; ``functionName``: the subtrees
      rooted at the calls of that function (outermost ones; on ``threadId``
      only if given), in time order; otherwise the threads' trees (``threadId``
      or every thread), one thread after another, or merged by time with
      ``interleave``;
    * ``timeStartNs``/``timeEndNs`` (inclusive): the events in that window;
      the calls already open at its start come first as ``entry`` lines and
      the frames still open at its end are closed with their real end.

    Result: ``{lines: [line, ...], metadata: {returnedCount, limit, hasMore,
    nextCursor?, orphanReturns, executionTimeMs}}`` with lines as in this
    module's docstring. A page ends at an event boundary, so it may exceed
    ``limit`` by the few extra lines of one return that closes several frames.
    """
    t0 = time.perf_counter()
    p = P.obj(params, CALLTREE_PARAMS)
    tid = P.integer(p, "threadId", lo=P.INT32_MIN, hi=P.INT32_MAX)
    span = P.integer(p, "spanId", lo=0)
    fname = P.string(p, "functionName")
    tlo = P.integer(p, "timeStartNs")
    thi = P.integer(p, "timeEndNs")
    if tlo is not None and thi is not None and tlo >= thi:
        raise invalid_params("timeStartNs: must be < timeEndNs")
    interleave = P.boolean(p, "interleave", False)
    max_depth = P.integer(p, "maxDepth", lo=1, hi=P.INT32_MAX)
    min_dur = P.integer(p, "minDurationNs", lo=0)
    with_args = P.boolean(p, "args", True)
    limit = P.integer(p, "limit", DEFAULT_LIMIT, lo=1, hi=1 << 62)
    if limit > MAX_LIMIT:
        raise invalid_params(f"limit: must be <= {MAX_LIMIT}")
    cursor = P.string(p, "cursor")
    if span is not None and (fname is not None or tid is not None):
        raise invalid_params("spanId: excludes threadId and functionName")
    if span is not None and (tlo is not None or thi is not None):
        raise invalid_params("spanId: excludes timeStartNs and timeEndNs")
    t = store.get(p.get("traceId"))
    if span is not None and span >= len(t.idx.sp_start):
        raise invalid_params(f"spanId: no span {span} (the trace has {len(t.idx.sp_start)})")
    tree = CallTree(t, TreeOptions(max_depth, min_dur, with_args,
                                   signature(t) if signature else None))
    if tid is not None and tid not in tree.thread_ids():
        raise invalid_params(f"threadId: no thread {tid} in the trace")
    qkey = ["calltree", tid, span, fname, tlo, thi, interleave, max_depth, min_dur]
    resume = _decode_cursor(t, qkey, cursor) if cursor is not None else None
    items = lines_for(tree, tid=tid, span=span, function=fname, time_start=tlo,
                      time_end=thi, interleave=interleave, resume=resume)
    lines, last_key, more = [], None, False
    for key, line in items:
        if len(lines) >= limit and key != last_key:
            more = True
            break
        lines.append(line)
        last_key = key
    meta = {"returnedCount": len(lines), "limit": limit, "hasMore": more}
    if more:
        meta["nextCursor"] = _encode_cursor(t, qkey, list(last_key))
    meta["orphanReturns"] = tree.stats.orphan_returns
    meta["executionTimeMs"] = round((time.perf_counter() - t0) * 1000, 3)
    return {"lines": lines, "metadata": meta}


def lines_for(tree: CallTree, tid=None, span=None, function=None, time_start=None,
              time_end=None, interleave=False, resume=None):
    """``(key, line)`` items of a whole view, lazily; ``resume`` is the key of
    the last line already seen (continue right after its event)."""
    idx = tree.idx
    lo = 0 if time_start is None else tree.rank_at(time_start, "left")
    stop = None if time_end is None else tree.rank_at(time_end, "right")
    if span is not None:
        return _roots(tree, [(int(idx.sp_call_rank[span]), span)], resume)
    if function is not None:
        return _roots(tree, _function_roots(tree, function, tid, lo, stop), resume)
    tids = [tid] if tid is not None else tree.thread_ids()
    if interleave:
        if resume is None:
            return tree.interleaved(tids, lo, stop)
        if resume[1] >= END_KEY:
            return iter(())
        return tree.interleaved(tids, max(lo, resume[1] + 1), stop, resume_from=lo)
    return _sequential(tree, tids, lo, stop, resume)


def _sequential(tree, tids, lo, stop, resume):
    first = 0 if resume is None else resume[0]
    for g in range(first, len(tids)):
        if resume is not None and g == resume[0]:
            if resume[1] >= END_KEY:
                continue
            yield from tree.walk(tids[g], max(lo, resume[1] + 1), stop, group=g, resume_from=lo)
        else:
            yield from tree.walk(tids[g], lo, stop, group=g)


def _function_roots(tree, name, tid, lo, stop):
    """(call rank, span id or -1) of the outermost calls of a function."""
    t, idx = tree.t, tree.idx
    out = []
    for j in t.fidx_for([name], None).tolist():
        ranks = np.asarray(idx.fn_ranks[idx.fn_off[j]:idx.fn_off[j + 1]])
        ranks = ranks[idx.ev_kind[ranks] == ix.K_CALL]
        ranks = ranks[ranks >= lo]
        if stop is not None:
            ranks = ranks[ranks < stop]
        if tid is not None:
            ranks = ranks[idx.ev_tid[ranks] == tid]
        out.append(ranks)
    ranks = np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)
    roots, inside_until = [], {}
    for r in ranks.tolist():
        th = int(idx.ev_tid[r])
        if r < inside_until.get(th, -1):
            continue  # a recursive call inside a subtree already shown
        s = tree.span_of(r)
        end = int(idx.sp_ret_rank[s]) if s >= 0 else (1 << 31)
        inside_until[th] = end
        roots.append((r, s))
    return roots


def _roots(tree, roots, resume):
    idx = tree.idx
    first = 0 if resume is None else resume[0]
    for g in range(first, len(roots)):
        rank, s = roots[g]
        resume_rank = rank
        if resume is not None and g == resume[0]:
            if resume[1] >= END_KEY:
                continue
            resume_rank = resume[1] + 1
        tid = int(idx.ev_tid[rank])
        depth = int(idx.sp_depth[s]) if s >= 0 else max(int(idx.ev_depth[rank]), 0)
        yield from tree.walk_subtree(tid, rank, s, depth, resume_rank, g)


# ---- cursors ---------------------------------------------------------------------

def _qhash(qkey) -> str:
    return hashlib.blake2b(orjson.dumps(qkey), digest_size=6).hexdigest()


def _encode_cursor(t, qkey, key) -> str:
    body = orjson.dumps([CURSOR_VERSION, t.fp[0], t.fp[1], _qhash(qkey), key])
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def _decode_cursor(t, qkey, cursor):
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        v, size, mtime, qh, key = orjson.loads(raw)
        ok = (v == CURSOR_VERSION and isinstance(key, list) and len(key) == 2
              and all(type(x) is int and x >= 0 for x in key))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise invalid_params("cursor: malformed") from None
    if not ok:
        raise invalid_params("cursor: malformed")
    if (size, mtime) != t.fp:
        raise invalid_params("cursor: the trace changed since the cursor was issued")
    if qh != _qhash(qkey):
        raise invalid_params("cursor: issued for a different query")
    return tuple(key)
