"""The query methods of QUERY_API.md over opened traces.

Every method takes the decoded ``params`` and returns a JSON-able result or
raises :class:`RpcError`. Selections are computed on the rank-space index
(see index.py): a time range is a binary search, a thread or function filter
a slice of its postings, and only the smallest candidate set is scanned with
vectorised masks. Materialised selections are memoised, so paging deep into
a filtered result costs O(page).
"""
from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import OrderedDict

import numpy as np
import orjson

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.query import callgraph, calltree, sql
from lanetrace.query import index as ix
from lanetrace.query import params as P
from lanetrace.query.errors import INTERNAL_ERROR, METHOD_NOT_FOUND, RpcError, invalid_params
from lanetrace.query.store import Trace, TraceStore, thread_names as _thread_names

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
FUNCTIONS_DEFAULT_LIMIT = 100
SAMPLE_SIZE = 5
CURSOR_VERSION = 1

EVENT_PROJECTION = {"timestampNs": True, "threadId": True, "eventType": True,
                    "functionName": False, "module": False, "depth": False, "args": False}
SPAN_PROJECTION = {"spanId": True, "functionName": True, "startTimeNs": True, "endTimeNs": True,
                   "durationNs": True, "threadId": False, "module": False, "depth": False,
                   "childCount": False}
EVENT_FILTERS = ("timeStartNs", "timeEndNs", "threadIds", "eventTypes", "functionNames", "modules")
SPAN_FILTERS = ("timeStartNs", "timeEndNs", "threadIds", "functionNames", "modules",
                "minDurationNs", "maxDurationNs", "minDepth", "maxDepth")
FUNCTION_FILTERS = ("modules", "threadIds", "timeStartNs", "timeEndNs")


class _LRU:
    """Memo of materialised selections, bounded by bytes."""

    def __init__(self, max_bytes=256 << 20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.d: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self.lock:
            v = self.d.get(key)
            if v is None:
                self.misses += 1
                return None
            self.d.move_to_end(key)
            self.hits += 1
            return v[0]

    def put(self, key, value, nbytes):
        if nbytes > self.max_bytes // 4:
            return
        with self.lock:
            if key in self.d:
                return
            self.d[key] = (value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes and self.d:
                _, (_, b) = self.d.popitem(last=False)
                self.bytes -= b


class Selection:
    """An ordered result: segments of ascending ranks (or span ids). With one
    segment the order is the key order; with several (orderBy threadId) the
    segments are the threads in ascending id order, ``keys`` their ids."""

    def __init__(self, segments, keys=None):
        self.segments = segments  # each an ndarray, or a (lo, hi) tuple for a range
        self.keys = keys
        self.sizes = np.array([_seglen(s) for s in segments], np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.sizes)])
        self.total = int(self.cum[-1])

    def take(self, a: int, b: int) -> np.ndarray:
        """Items at ascending positions [a, b)."""
        parts = []
        j = int(np.searchsorted(self.cum, a, "right")) - 1
        while a < b and j < len(self.segments):
            seg, base = self.segments[j], int(self.cum[j])
            lo, hi = a - base, min(b - base, int(self.sizes[j]))
            if hi > lo:
                parts.append(_segslice(seg, lo, hi))
                a = base + hi
            j += 1
        if not parts:
            return np.zeros(0, np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def count_before(self, key, inclusive: bool) -> int:
        """How many items sort before (or at, if ``inclusive``) ``key``."""
        side = "right" if inclusive else "left"
        if self.keys is None:
            return _segsearch(self.segments[0], key, side) if self.segments else 0
        group, item = key
        j = int(np.searchsorted(self.keys, group, "left"))
        n = int(self.cum[j])
        if j < len(self.keys) and self.keys[j] == group:
            n += _segsearch(self.segments[j], item, side)
        return n

    def key_at(self, pos: int, value: int):
        if self.keys is None:
            return int(value)
        j = int(np.searchsorted(self.cum, pos, "right")) - 1
        return [int(self.keys[j]), int(value)]

    def nbytes(self):
        return sum(s.nbytes for s in self.segments if isinstance(s, np.ndarray)) + 64


def _seglen(s):
    return s[1] - s[0] if isinstance(s, tuple) else len(s)


def _segslice(s, lo, hi):
    if isinstance(s, tuple):
        return np.arange(s[0] + lo, s[0] + hi, dtype=np.int64)
    return np.asarray(s[lo:hi])


def _segsearch(s, v, side):
    if isinstance(s, tuple):
        pos = (v + 1 if side == "right" else v) - s[0]
        return int(min(max(pos, 0), s[1] - s[0]))
    return int(np.searchsorted(s, v, side))


def _isin(a, values):
    """np.isin, with a fast path for the usual handful of values."""
    values = np.asarray(values)
    if len(values) <= 4:
        if len(values) == 0:
            return np.zeros(len(a), bool)
        out = a == values[0]
        for v in values[1:]:
            out |= a == v
        return out
    return np.isin(a, values)


def _restrict(sorted_arr, lo, hi):
    """The part of an ascending array with values in [lo, hi)."""
    a = int(np.searchsorted(sorted_arr, lo, "left"))
    b = int(np.searchsorted(sorted_arr, hi, "left"))
    return sorted_arr[a:b]


def _union(parts):
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros(0, np.int32)
    if len(parts) == 1:
        return np.asarray(parts[0])
    return np.sort(np.concatenate(parts), kind="stable")


class Engine:
    """All query methods over one trace root."""

    def __init__(self, root: str, index_cache: str | None = None, subprocess_builds=True,
                 result_cache_bytes=256 << 20):
        self.store = TraceStore(root, index_cache, subprocess_builds)
        self.memo = _LRU(result_cache_bytes)
        self.methods = {
            "trace.list": self.trace_list,
            "trace.info": self.trace_info,
            "events.get": self.events_get,
            "spans.list": self.spans_list,
            "functions.list": self.functions_list,
            "threads.list": self.threads_list,
            "trace.diff": self.trace_diff,
            "calltree.get": self.calltree_get,
            "callgraph.get": self.callgraph_get,
            "sql.query": self.sql_query,
        }

    def call(self, method: str, params):
        fn = self.methods.get(method)
        if fn is None or (method == "trace.diff" and _diff_module() is None):
            raise RpcError(METHOD_NOT_FOUND, method)
        if params is not None and not isinstance(params, dict):
            raise invalid_params("params: must be an object (by-name parameters)")
        return fn(params or {})

    def fast_call(self, method: str, params):
        """Answer without blocking if the request only needs an already
        loaded trace's cached figures; ``None`` means "use call() off-loop"."""
        if method != "trace.info" or not isinstance(params, dict):
            return None
        if params.get("include_checksums") or params.get("includeChecksums") \
                or params.get("include_samples") or params.get("includeSamples"):
            return None
        t = self.store.loaded(params.get("traceId"))
        if t is None:
            return None
        return self.trace_info(params, t)

    def pending_open(self, method: str, params):
        """The traceId this request needs opened first, if it is not yet in
        memory (so that the server can open it once for all waiting requests)."""
        if method in ("trace.list", "trace.diff") or not isinstance(params, dict):
            return None
        tid = params.get("traceId")
        try:
            return tid if self.store.loaded(tid) is None else None
        except RpcError:
            return None  # the call itself reports it

    def open_quietly(self, trace_id) -> None:
        try:
            self.store.get(trace_id)
        except RpcError:
            pass  # reported by the request itself

    def close(self):
        self.store.close()

    # ---- trace.list / trace.info / threads.list ----------------------

    def trace_list(self, params):
        P.obj(params, ())
        return {"traces": [self.store.summary(p) for p in self.store.trace_dirs()]}

    def trace_info(self, params, t: Trace | None = None):
        p = P.obj(params, ("traceId", "include_checksums", "include_samples",
                           "includeChecksums", "includeSamples"))
        checks = P.boolean(p, "include_checksums", False) or P.boolean(p, "includeChecksums", False)
        samples = P.boolean(p, "include_samples", False) or P.boolean(p, "includeSamples", False)
        t = t or self.store.get(p.get("traceId"))
        info = t.cache.get("info")
        if info is None:
            info = t.cache["info"] = self._info(t)
        if not checks and not samples:
            return info
        out = dict(info)
        if checks:
            out["checksums"] = self._checksums(t)
        if samples:
            out["samples"] = self._samples(t)
        return out

    def _info(self, t: Trace) -> dict:
        meta, m = t.idx.meta, t.manifest
        start = meta.get("traceStart") or {}
        ts0 = meta["timeStartNs"] if meta["timeStartNs"] is not None else _int(m.get("timeStartNs"))
        ts1 = meta["timeEndNs"] if meta["timeEndNs"] is not None else _int(m.get("timeEndNs"))
        events_size = t.fp[0]
        total = 0
        for name in os.listdir(t.path):
            full = os.path.join(t.path, name)
            if name in (ix.INDEX_DIR, ix.LOCK_FILE) or name.startswith(".index-"):
                continue
            if os.path.isfile(full) and not os.path.islink(full):
                total += os.path.getsize(full)
        drops = dict(m.get("drops")) if isinstance(m.get("drops"), dict) else {}
        if isinstance(m.get("writerDrops"), dict):  # our writer's own, by reason
            drops.update({f"writer.{k}": v for k, v in m["writerDrops"].items()})
        return {
            "traceId": t.trace_id,
            "os": m.get("os") or start.get("os") or None,
            "arch": m.get("arch") or start.get("arch") or None,
            "pid": _int(m.get("pid")) or _int(start.get("pid")) or _pid_from(t.path),
            "timeStartNs": ts0,
            "timeEndNs": ts1,
            "durationNs": (ts1 - ts0) if ts0 is not None and ts1 is not None else None,
            "eventCount": meta["eventCount"],
            "spanCount": meta["spanCount"],
            "threadCount": sum(1 for th in meta["threads"] if th["threadId"] != 0),
            "functionCount": sum(1 for n in t.names if n),
            "drops": {str(k): v for k, v in drops.items()},
            "windows": _windows(m.get("windows")),
            "files": {"manifestSize": t.manifest_size, "eventsSize": events_size,
                      "totalSize": total,
                      "avgEventSize": round(events_size / meta["eventCount"], 2)
                      if meta["eventCount"] else 0,
                      "tornTailBytes": meta["tornTailBytes"]},
        }

    def _checksums(self, t: Trace) -> dict:
        sums = t.cache.get("checksums")
        if sums is None:
            out = {}
            for key, name in (("manifestMd5", atf.MANIFEST_FILE), ("eventsMd5", atf.EVENTS_FILE)):
                h = hashlib.md5()
                with open(os.path.join(t.path, name), "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[key] = h.hexdigest()
            sums = t.cache["checksums"] = out
        return sums

    def _samples(self, t: Trace) -> dict:
        n = t.idx.meta["eventCount"]
        proj = dict(EVENT_PROJECTION, functionName=True, module=True, depth=True)
        k = min(SAMPLE_SIZE, n)
        # seeded by the content's size: the same trace always shows the same sample
        rng = np.random.default_rng(t.fp[0])
        rand = np.sort(rng.choice(n, size=k, replace=False)) if n else np.zeros(0, np.int64)
        return {"firstEvents": self._format_events(t, np.arange(k), proj),
                "lastEvents": self._format_events(t, np.arange(n - k, n), proj),
                "randomEvents": self._format_events(t, rand, proj)}

    def threads_list(self, params):
        p = P.obj(params, ("traceId",))
        t = self.store.get(p.get("traceId"))
        names = _thread_names(t.manifest)
        out = []
        for th in t.idx.meta["threads"]:
            if th["threadId"] == 0:
                continue  # process-level events (TraceStart/TraceEnd)
            row = {"threadId": th["threadId"]}
            if th["threadId"] in names:
                row["name"] = names[th["threadId"]]
            row.update(eventCount=th["eventCount"], firstNs=th["firstNs"], lastNs=th["lastNs"])
            out.append(row)
        return {"threads": out}

    # ---- events.get ------------------------------------------------------

    def events_get(self, params):
        t0 = time.perf_counter()
        p = P.obj(params, ("traceId", "filters", "projection", "offset", "limit", "cursor",
                           "orderBy", "ascending"))
        f = P.obj(p.get("filters"), EVENT_FILTERS, "filters")
        tlo, thi = _time_bounds(f)
        threads = P.int_list(f, "threadIds", where="filters.")
        kinds = P.str_list(f, "eventTypes", choices=tuple(ix.KIND_FILTER_NAMES), where="filters.")
        fnames = P.str_list(f, "functionNames", where="filters.")
        modules = P.str_list(f, "modules", where="filters.")
        proj = P.projection(p.get("projection"), EVENT_PROJECTION)
        offset, limit, asc, cursor = _paging(p)
        order_by = P.string(p, "orderBy", "timestamp", choices=("timestamp", "threadId"))
        t = self.store.get(p.get("traceId"))

        qkey = ("events", _norm(tlo), _norm(thi), _norm(threads), _norm(kinds), _norm(fnames),
                _norm(modules), order_by)
        sel = self._memo(t, qkey, lambda: self._select_events(
            t, tlo, thi, threads, kinds, fnames, modules, order_by))
        ranks, meta = _page(t, sel, qkey, asc, offset, limit, cursor)
        events = self._format_events(t, ranks, proj)
        meta["executionTimeMs"] = round((time.perf_counter() - t0) * 1000, 3)
        return {"events": events, "metadata": meta}

    def _memo(self, t, qkey, compute):
        key = (t.path, t.fp) + qkey
        sel = self.memo.get(key)
        if sel is None:
            sel = compute()
            self.memo.put(key, sel, sel.nbytes())
        return sel

    def _select_events(self, t, tlo, thi, threads, kinds, fnames, modules, order_by):
        idx = t.idx
        lo = 0 if tlo is None else int(np.searchsorted(idx.ev_ts, tlo, "left"))
        hi = len(idx.ev_ts) if thi is None else int(np.searchsorted(idx.ev_ts, thi, "right"))
        hi = max(hi, lo)
        th_pos = None
        if threads is not None:
            th_pos = np.flatnonzero(_isin(idx.th_tids, np.asarray(threads, np.int64)))
        fidx = None
        if fnames is not None or modules is not None:
            fidx = t.fidx_for(fnames, modules)
        kind_codes = None
        if kinds is not None:
            kind_codes = np.array(sorted({ix.KIND_FILTER_NAMES[k] for k in kinds}), np.uint8)

        def masked(c, skip_threads=False, skip_funcs=False):
            keep = None
            if th_pos is not None and not skip_threads:
                keep = _isin(idx.ev_tid[c], idx.th_tids[th_pos])
            if fidx is not None and not skip_funcs:
                m = _isin(idx.ev_fidx[c], fidx)
                keep = m if keep is None else keep & m
            if kind_codes is not None:
                m = _isin(idx.ev_kind[c], kind_codes)
                keep = m if keep is None else keep & m
            return c if keep is None else c[keep]

        if order_by == "threadId":
            segs, keys = [], []
            positions = th_pos if th_pos is not None else range(len(idx.th_tids))
            for j in positions:
                seg = _restrict(idx.th_ranks[idx.th_off[j]:idx.th_off[j + 1]], lo, hi)
                if fidx is not None or kind_codes is not None:
                    seg = masked(np.asarray(seg), skip_threads=True)
                if len(seg):
                    segs.append(seg)
                    keys.append(int(idx.th_tids[j]))
            return Selection(segs, np.array(keys, np.int64))

        if th_pos is None and fidx is None and kind_codes is None:
            return Selection([(lo, hi)])
        # candidates from the smallest of: time range, thread postings, function postings
        best, best_n = None, hi - lo
        if th_pos is not None:
            parts = [_restrict(idx.th_ranks[idx.th_off[j]:idx.th_off[j + 1]], lo, hi) for j in th_pos]
            n = sum(len(x) for x in parts)
            if n <= best_n:
                best, best_n, src = parts, n, "threads"
        if fidx is not None:
            parts = [_restrict(idx.fn_ranks[idx.fn_off[j]:idx.fn_off[j + 1]], lo, hi) for j in fidx]
            n = sum(len(x) for x in parts)
            if n <= best_n:
                best, best_n, src = parts, n, "functions"
        if best is None:
            cand = self._mask_range(idx, lo, hi, th_pos, fidx, kind_codes)
        else:
            cand = masked(_union(best), skip_threads=src == "threads", skip_funcs=src == "functions")
        return Selection([np.ascontiguousarray(cand, dtype=np.int32)])

    @staticmethod
    def _mask_range(idx, lo, hi, th_pos, fidx, kind_codes):
        """Filter a contiguous rank range with slices (no index gathers)."""
        keep = np.ones(hi - lo, bool)
        if th_pos is not None:
            keep &= _isin(idx.ev_tid[lo:hi], idx.th_tids[th_pos])
        if fidx is not None:
            keep &= _isin(idx.ev_fidx[lo:hi], fidx)
        if kind_codes is not None:
            keep &= _isin(idx.ev_kind[lo:hi], kind_codes)
        return (np.flatnonzero(keep) + lo).astype(np.int32)

    def _format_events(self, t: Trace, ranks, proj) -> list:
        idx = t.idx
        ranks = np.asarray(ranks, np.int64)
        cols, keys = [], []
        if proj["timestampNs"]:
            keys.append("timestampNs")
            cols.append(idx.ev_ts[ranks].tolist())
        if proj["threadId"]:
            keys.append("threadId")
            cols.append(idx.ev_tid[ranks].tolist())
        if proj["eventType"]:
            keys.append("eventType")
            cols.append(t.kind_obj[idx.ev_kind[ranks]].tolist())
        if proj["functionName"] or proj["module"]:
            fidx = idx.ev_fidx[ranks]
            if proj["functionName"]:
                keys.append("functionName")
                cols.append(t.name_obj[fidx].tolist())
            if proj["module"]:
                keys.append("module")
                cols.append(t.module_obj[fidx].tolist())
        if proj["depth"]:
            keys.append("depth")
            cols.append([d if d >= 0 else None for d in idx.ev_depth[ranks].tolist()])
        if proj["args"]:
            keys.append("args")
            cols.append(self._args(t, ranks))
        if not keys:
            return [{} for _ in range(len(ranks))]
        return [dict(zip(keys, row)) for row in zip(*cols)]

    def _args(self, t, ranks):
        """Registers of each event: from its flight-recorder detail copy when
        the capture kept one, else from the event itself."""
        buf = t.events_buffer()
        idx = t.idx
        offs, lens = idx.ev_off[ranks].copy(), idx.ev_len[ranks].copy()
        det = idx.ev_detail[ranks]
        has = det >= 0
        if has.any():
            offs[has] = idx.det_off[det[has]]
            lens[has] = idx.det_len[det[has]]
        out = []
        for off, ln in zip(offs.tolist(), lens.tolist()):
            ev = pb.Event()
            try:
                ev.ParseFromString(buf[off:off + ln])
            except Exception:  # the file changed under us or is corrupt; report, don't crash
                raise RpcError(INTERNAL_ERROR, f"failed to decode event at offset {off} of "
                                               f"{atf.EVENTS_FILE}: corrupt, or changed") from None
            which = ev.WhichOneof("payload")
            if which == "function_call":
                out.append(dict(ev.function_call.argument_registers))
            elif which == "function_return":
                out.append(dict(ev.function_return.return_registers))
            elif which == "signal_delivery":
                out.append(dict(ev.signal_delivery.registers))
            elif which == "trace_start":
                out.append(list(ev.trace_start.args))
            else:
                out.append(None)
        return out

    # ---- spans.list ------------------------------------------------------

    def spans_list(self, params):
        t0 = time.perf_counter()
        p = P.obj(params, ("traceId", "filters", "projection", "offset", "limit", "cursor",
                           "includeChildren"))
        f = P.obj(p.get("filters"), SPAN_FILTERS, "filters")
        tlo, thi = _time_bounds(f)
        threads = P.int_list(f, "threadIds", where="filters.")
        fnames = P.str_list(f, "functionNames", where="filters.")
        modules = P.str_list(f, "modules", where="filters.")
        dmin = P.integer(f, "minDurationNs", lo=0, where="filters.")
        dmax = P.integer(f, "maxDurationNs", lo=0, where="filters.")
        if dmin is not None and dmax is not None and dmin > dmax:
            raise invalid_params("filters.minDurationNs: must be <= filters.maxDurationNs")
        pmin = P.integer(f, "minDepth", lo=0, hi=P.INT32_MAX, where="filters.")
        pmax = P.integer(f, "maxDepth", lo=0, hi=P.INT32_MAX, where="filters.")
        if pmin is not None and pmax is not None and pmin > pmax:
            raise invalid_params("filters.minDepth: must be <= filters.maxDepth")
        if not P.boolean(p, "includeChildren", True):
            pmax = 0 if pmax is None else min(pmax, 0)
            if pmin is not None and pmin > 0:
                pmax = -1  # nothing is both a root and deeper than minDepth
        proj = P.projection(p.get("projection"), SPAN_PROJECTION)
        offset, limit, _, cursor = _paging(p, with_order=False)
        t = self.store.get(p.get("traceId"))

        qkey = ("spans", _norm(tlo), _norm(thi), _norm(threads), _norm(fnames), _norm(modules),
                dmin, dmax, pmin, pmax)
        sel = self._memo(t, qkey, lambda: self._select_spans(
            t, tlo, thi, threads, fnames, modules, dmin, dmax, pmin, pmax))
        ids, meta = _page(t, sel, qkey, True, offset, limit, cursor)
        spans = self._format_spans(t, ids, proj)
        meta["executionTimeMs"] = round((time.perf_counter() - t0) * 1000, 3)
        return {"spans": spans, "metadata": meta}

    def _select_spans(self, t, tlo, thi, threads, fnames, modules, dmin, dmax, pmin, pmax):
        idx = t.idx
        n = len(idx.sp_start)
        # containment: start >= tlo and end <= thi (start <= end, so start <= thi too)
        lo = 0 if tlo is None else int(np.searchsorted(idx.sp_start, tlo, "left"))
        hi = n if thi is None else int(np.searchsorted(idx.sp_start, thi, "right"))
        hi = max(hi, lo)
        th_pos = None
        if threads is not None:
            th_pos = np.flatnonzero(_isin(idx.th_tids, np.asarray(threads, np.int64)))
        fidx = None
        if fnames is not None or modules is not None:
            fidx = t.fidx_for(fnames, modules)
        plain = (thi is None and th_pos is None and fidx is None and dmin is None
                 and dmax is None and pmin is None and pmax is None)
        if plain:
            return Selection([(lo, hi)])
        best, best_n, src = None, hi - lo, None
        if th_pos is not None:
            parts = [_restrict(idx.sp_th_ids[idx.sp_th_off[j]:idx.sp_th_off[j + 1]], lo, hi)
                     for j in th_pos]
            n_ = sum(len(x) for x in parts)
            if n_ <= best_n:
                best, best_n, src = parts, n_, "threads"
        if fidx is not None:
            parts = [_restrict(idx.sp_fn_ids[idx.sp_fn_off[j]:idx.sp_fn_off[j + 1]], lo, hi)
                     for j in fidx]
            n_ = sum(len(x) for x in parts)
            if n_ <= best_n:
                best, best_n, src = parts, n_, "functions"
        if best is None:
            # the whole time range is the candidate set: contiguous slices, no gathers
            c = None
            col = lambda a: a[lo:hi]  # noqa: E731
        else:
            c = _union(best)
            col = lambda a: a[c]  # noqa: E731
        keep = None

        def both(m):
            nonlocal keep
            keep = m if keep is None else np.logical_and(keep, m, out=keep)

        if thi is not None:
            both(col(idx.sp_end) <= thi)
        if th_pos is not None and src != "threads":
            both(_isin(col(idx.sp_tid), idx.th_tids[th_pos]))
        if fidx is not None and src != "functions":
            both(_isin(col(idx.sp_fidx), fidx))
        if dmin is not None or dmax is not None:
            dur = col(idx.sp_dur)
            if dmin is not None:
                both(dur >= dmin)
            if dmax is not None:
                both(dur <= dmax)
        if pmin is not None:
            both(col(idx.sp_depth) >= pmin)
        if pmax is not None:
            both(col(idx.sp_depth) <= pmax)
        if keep is None:  # only the postings restricted the set
            return Selection([np.ascontiguousarray(c, dtype=np.int32)])
        if c is None:
            return Selection([(np.flatnonzero(keep) + lo).astype(np.int32)])
        return Selection([np.ascontiguousarray(c[keep], dtype=np.int32)])

    def _format_spans(self, t, ids, proj):
        idx = t.idx
        ids = np.asarray(ids, np.int64)
        cols, keys = [], []
        start = idx.sp_start[ids]
        end = idx.sp_end[ids]
        fidx = idx.sp_fidx[ids]
        for key, on, values in (
                ("spanId", proj["spanId"], lambda: ids.tolist()),
                ("functionName", proj["functionName"], lambda: t.name_obj[fidx].tolist()),
                ("startTimeNs", proj["startTimeNs"], lambda: start.tolist()),
                ("endTimeNs", proj["endTimeNs"], lambda: end.tolist()),
                ("durationNs", proj["durationNs"], lambda: idx.sp_dur[ids].tolist()),
                ("threadId", proj["threadId"], lambda: idx.sp_tid[ids].tolist()),
                ("module", proj["module"], lambda: t.module_obj[fidx].tolist()),
                ("depth", proj["depth"], lambda: idx.sp_depth[ids].tolist()),
                ("childCount", proj["childCount"], lambda: idx.sp_children[ids].tolist())):
            if on:
                keys.append(key)
                cols.append(values())
        if not keys:
            return [{} for _ in range(len(ids))]
        return [dict(zip(keys, row)) for row in zip(*cols)]

    # ---- functions.list --------------------------------------------------

    def functions_list(self, params):
        p = P.obj(params, ("traceId", "filters", "orderBy", "limit"))
        f = P.obj(p.get("filters"), FUNCTION_FILTERS, "filters")
        tlo, thi = _time_bounds(f)
        threads = P.int_list(f, "threadIds", where="filters.")
        modules = P.str_list(f, "modules", where="filters.")
        order_by = P.string(p, "orderBy", "calls", choices=("calls", "totalTimeNs", "selfTimeNs"))
        limit = P.integer(p, "limit", FUNCTIONS_DEFAULT_LIMIT, lo=0, hi=MAX_LIMIT)
        t = self.store.get(p.get("traceId"))
        qkey = ("functions", _norm(tlo), _norm(thi), _norm(threads), _norm(modules))
        stats = self._memo(t, qkey, lambda: _Boxed(self._function_stats(
            t, tlo, thi, threads, modules))).value
        calls, total, selft, mx, spans = (np.asarray(stats[k]) for k in (
            "calls", "totalTimeNs", "selfTimeNs", "maxDurationNs", "spans"))
        present = np.flatnonzero((calls > 0) | (spans > 0))
        key = {"calls": calls, "totalTimeNs": total, "selfTimeNs": selft}[order_by]
        names = t.names
        order = sorted(present.tolist(), key=lambda j: (-int(key[j]), names[j], t.modules[j]))
        addrs = t.idx.meta["functions"]["address"]
        # DWARF file:line, where the binary had it (absent from older indexes)
        sources = t.idx.meta["functions"].get("source") or [""] * len(addrs)
        out = []
        for j in order[:limit]:
            row = {"functionName": names[j] or None, "module": t.modules[j] or None,
                   "address": addrs[j], "calls": int(calls[j]), "totalTimeNs": int(total[j]),
                   "selfTimeNs": int(selft[j]), "maxDurationNs": int(mx[j])}
            if sources[j]:
                file, _, line = sources[j].rpartition(":")
                row["sourceFile"], row["sourceLine"] = (file, int(line)) if line.isdigit() \
                    else (sources[j], 0)
            out.append(row)
        return {"functions": out}

    def _function_stats(self, t, tlo, thi, threads, modules):
        idx = t.idx
        if tlo is None and thi is None and threads is None and modules is None:
            return idx.meta["functionStats"]
        lo = 0 if tlo is None else int(np.searchsorted(idx.ev_ts, tlo, "left"))
        hi = len(idx.ev_ts) if thi is None else int(np.searchsorted(idx.ev_ts, thi, "right"))
        call_mask = np.zeros(len(idx.ev_ts), bool)
        call_mask[lo:max(hi, lo)] = True
        call_mask &= idx.ev_kind == ix.K_CALL
        slo = 0 if tlo is None else int(np.searchsorted(idx.sp_start, tlo, "left"))
        shi = len(idx.sp_start) if thi is None else int(np.searchsorted(idx.sp_start, thi, "right"))
        span_mask = np.zeros(len(idx.sp_start), bool)
        span_mask[slo:max(shi, slo)] = True
        if thi is not None:
            span_mask &= idx.sp_end <= thi
        if threads is not None:
            tids = np.asarray(threads, np.int64)
            call_mask &= _isin(idx.ev_tid, tids)
            span_mask &= _isin(idx.sp_tid, tids)
        if modules is not None:
            fidx = t.fidx_for(None, modules)
            call_mask &= _isin(idx.ev_fidx, fidx)
            span_mask &= _isin(idx.sp_fidx, fidx)
        return ix.function_stats(idx.arrays, call_mask, span_mask, len(t.names))

    # ---- calltree.get / callgraph.get ---------------------------------------

    def calltree_get(self, params):
        """A page of the replay tree; see calltree.calltree_get for params and result."""
        return calltree.calltree_get(self.store, params)

    def callgraph_get(self, params):
        """The aggregated call graph; see callgraph.callgraph_get."""
        return callgraph.callgraph_get(self.store, params)

    def sql_query(self, params):
        """One sandboxed read-only SQL query; see sql.sql_query."""
        return sql.sql_query(self.store, params)

    # ---- trace.diff ------------------------------------------------------

    def trace_diff(self, params):
        p = P.obj(params, ("traceIdA", "traceIdB"))
        a = self.store.resolve(p.get("traceIdA"), "traceIdA")
        b = self.store.resolve(p.get("traceIdB"), "traceIdB")
        mod = _diff_module()
        try:
            result = mod.diff_traces(a, b)
            orjson.dumps(result)
        except RpcError:
            raise
        except Exception as exc:  # a foreign module's failure is an Internal error
            raise RpcError(INTERNAL_ERROR, f"trace.diff failed: {type(exc).__name__}: {exc}") from None
        return result


class _Boxed:
    """Memo entry for a plain dict."""

    def __init__(self, value):
        self.value = value

    def nbytes(self):
        return 1024


def _diff_module():
    try:
        from lanetrace.export import diff as mod
    except Exception:  # absent or broken: the method does not exist here
        return None
    return mod if callable(getattr(mod, "diff_traces", None)) else None


# ---- shared helpers ----------------------------------------------------------

def _time_bounds(f):
    tlo = P.integer(f, "timeStartNs", where="filters.")
    thi = P.integer(f, "timeEndNs", where="filters.")
    if tlo is not None and thi is not None and tlo >= thi:
        raise invalid_params("filters.timeStartNs: must be < filters.timeEndNs")
    return tlo, thi


def _paging(p, with_order=True):
    offset = P.integer(p, "offset", 0, lo=0, hi=P.INT64_MAX)
    limit = P.integer(p, "limit", DEFAULT_LIMIT, lo=0, hi=(1 << 62))
    if limit > MAX_LIMIT:
        raise invalid_params(f"limit: must be <= {MAX_LIMIT}")
    asc = P.boolean(p, "ascending", True) if with_order else True
    cursor = P.string(p, "cursor")
    return offset, limit, asc, cursor


def _norm(v):
    if isinstance(v, list):
        return tuple(sorted(set(v)))
    return v


def _qhash(qkey, asc) -> str:
    return hashlib.blake2b(orjson.dumps([list(x) if isinstance(x, tuple) else x for x in qkey]
                                        + [asc]), digest_size=6).hexdigest()


def _encode_cursor(t: Trace, qkey, asc, key) -> str:
    body = orjson.dumps([CURSOR_VERSION, t.fp[0], t.fp[1], _qhash(qkey, asc), key])
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def _decode_cursor(t: Trace, qkey, asc, cursor: str):
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        v, size, mtime, qh, key = orjson.loads(raw)
        ok = v == CURSOR_VERSION and isinstance(size, int) and isinstance(mtime, int)
        if isinstance(key, list):
            ok = ok and len(key) == 2 and all(type(x) is int for x in key)
        else:
            ok = ok and type(key) is int
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise invalid_params("cursor: malformed") from None
    if not ok:
        raise invalid_params("cursor: malformed")
    if (size, mtime) != t.fp:
        raise invalid_params("cursor: the trace changed since the cursor was issued")
    if qh != _qhash(qkey, asc):
        raise invalid_params("cursor: issued for a different query (filters, order or direction)")
    if (isinstance(key, list)) != (qkey[-1] == "threadId" if qkey[0] == "events" else False):
        raise invalid_params("cursor: malformed")
    return tuple(key) if isinstance(key, list) else key


def _page(t, sel: Selection, qkey, asc, offset, limit, cursor):
    total = sel.total
    if cursor is not None:
        key = _decode_cursor(t, qkey, asc, cursor)
        start = sel.count_before(key, True) if asc else total - sel.count_before(key, False)
        start += offset
    else:
        start = offset
    start = min(start, total)
    end = min(start + limit, total)
    if asc:
        a, b = start, end
        items = sel.take(a, b)
    else:
        a, b = total - end, total - start
        items = sel.take(a, b)[::-1]
    returned = len(items)
    meta = {"totalCount": total, "returnedCount": returned, "offset": start, "limit": limit,
            "hasMore": end < total}
    if end < total and returned:
        last_pos = b - 1 if asc else a
        meta["nextCursor"] = _encode_cursor(t, qkey, asc, sel.key_at(last_pos, items[-1]))
    return items, meta


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _pid_from(path):
    base = os.path.basename(path)
    return int(base[4:]) if base.startswith("pid_") and base[4:].isdigit() else None


def _windows(w):
    out = []
    if isinstance(w, list):
        for x in w:
            if isinstance(x, dict):
                out.append({"startNs": x.get("startNs"), "endNs": x.get("endNs"),
                            "trigger": x.get("trigger")})
    return out
