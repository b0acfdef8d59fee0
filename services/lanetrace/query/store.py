"""Trace ids → opened traces: root confinement, freshness checks, and the
cache of loaded indexes shared by all requests of one server process."""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import mmap
import multiprocessing
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import orjson

from lanetrace.core import atf
from lanetrace.query import index as ix
from lanetrace.query.errors import INTERNAL_ERROR, TRACE_NOT_FOUND, RpcError, invalid_params

# Traces above this size are indexed in a worker process so that the server's
# own interpreter (and its GIL) stays free for other requests.
SUBPROCESS_BUILD_BYTES = 8 << 20
MAX_TRACE_ID = 4096


@dataclass
class Trace:
    """One opened trace: its index (memory-mapped) and derived lookups."""

    trace_id: str
    path: str
    fp: tuple[int, int]
    idx: ix.Index
    manifest: dict
    manifest_size: int
    names: list
    modules: list
    name_obj: np.ndarray      # fidx → functionName (None for unnamed); [-1] → None
    module_obj: np.ndarray
    kind_obj: np.ndarray
    mfp: tuple = ()                              # trace.json (size, mtime_ns)
    cache: dict = field(default_factory=dict)   # per-trace memo (info, checksums...)
    _mm: mmap.mmap | None = None
    _mm_lock: threading.Lock = field(default_factory=threading.Lock)

    def fidx_for(self, names=None, modules=None) -> np.ndarray:
        """Function indexes matching both the name and the module filter."""
        by = self.cache.get("by_name")
        if by is None:
            by_name, by_module = {}, {}
            for j, (n, m) in enumerate(zip(self.names, self.modules)):
                by_name.setdefault(n, []).append(j)
                by_module.setdefault(m, []).append(j)
            by = self.cache["by_name"] = (by_name, by_module)
        sel = None
        if names is not None:
            # unnamed functions ("") never match a name
            sel = {j for n in set(names) if n for j in by[0].get(n, ())}
        if modules is not None:
            mods = {j for m in set(modules) for j in by[1].get(m, ())}
            sel = mods if sel is None else sel & mods
        if sel is None:
            return np.arange(len(self.names))
        return np.array(sorted(sel), dtype=np.int64)

    def events_buffer(self):
        """The events.bin mapping, opened on first use (only ``args`` and
        samples need the raw events; everything else is in the index)."""
        with self._mm_lock:
            if self._mm is None:
                with open(os.path.join(self.path, atf.EVENTS_FILE), "rb") as f:
                    self._mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            return self._mm


def _build_in_worker(path: str, cache_root):
    idx, built = ix.open_or_build(path, cache_root)
    return built


class TraceStore:
    def __init__(self, root: str, index_cache: str | None = None, subprocess_builds=True):
        self.root = os.path.realpath(root)
        self.index_cache = index_cache
        self._traces: dict[str, Trace] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        self._subprocess_builds = subprocess_builds
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.stats = {"index_hits": 0, "index_loads": 0, "index_builds": 0}

    # ---- trace ids ---------------------------------------------------

    def resolve(self, trace_id, name="traceId") -> str:
        """The real path of a trace id, confined to the root."""
        if not isinstance(trace_id, str):
            raise invalid_params(f"{name}: must be a string")
        if not trace_id:
            raise invalid_params(f"{name}: must not be empty")
        if len(trace_id) > MAX_TRACE_ID or "\x00" in trace_id:
            raise invalid_params(f"{name}: not a valid trace id")
        if os.path.isabs(trace_id) or trace_id.startswith("~"):
            raise invalid_params(f"{name}: must be relative to the trace root")
        if ".." in trace_id.replace("\\", "/").split("/"):
            raise invalid_params(f"{name}: must not contain '..'")
        real = os.path.realpath(os.path.join(self.root, trace_id))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise invalid_params(f"{name}: resolves outside the trace root")
        has_events = os.path.isfile(os.path.join(real, atf.EVENTS_FILE))
        if os.path.isfile(os.path.join(real, atf.MANIFEST_FILE)) and not has_events:
            raise RpcError(INTERNAL_ERROR, f"failed to load trace: {self.trace_id_of(real)}: "
                                           f"{atf.MANIFEST_FILE} is there but {atf.EVENTS_FILE} "
                                           f"is missing")
        if not has_events:
            raise RpcError(TRACE_NOT_FOUND, trace_id)
        return real

    def trace_id_of(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    # ---- opening -----------------------------------------------------

    def loaded(self, trace_id) -> Trace | None:
        """The opened trace if it is in memory and still current, else None
        (the caller then opens it off the event loop)."""
        path = self.resolve(trace_id)
        t = self._traces.get(path)
        if t is None:
            return None
        try:
            if ix.fingerprint(path) != t.fp:
                return None
            if _mfp(path) != t.mfp:
                return None  # the manifest changed: get() reloads it (not the index)
        except OSError:
            raise RpcError(TRACE_NOT_FOUND, trace_id) from None
        self.stats["index_hits"] += 1
        return t

    def get(self, trace_id, name="traceId") -> Trace:
        """Open a trace, building its index first when needed (blocking)."""
        path = self.resolve(trace_id, name)
        t = self._traces.get(path)
        try:
            fp = ix.fingerprint(path)
        except OSError:
            raise RpcError(TRACE_NOT_FOUND, trace_id) from None
        if t is not None and t.fp == fp:
            self.stats["index_hits"] += 1
            if _mfp(path) == t.mfp:
                return t
            try:
                t = self._with_manifest(t)
            except (atf.TraceFormatError, OSError) as exc:
                raise self._load_failed(exc) from None
            self._traces[path] = t
            return t
        with self._lock:
            lock = self._build_locks.setdefault(path, threading.Lock())
        with lock:  # one build per trace per process; flock covers replicas
            t = self._traces.get(path)
            fp = ix.fingerprint(path)
            if t is not None and t.fp == fp:
                return t
            try:
                t = self._open(trace_id, path)
            except RpcError:
                raise
            except (ix.IndexError_, atf.TraceFormatError, OSError, ValueError, MemoryError) as exc:
                raise self._load_failed(exc) from None
            self._traces[path] = t
            return t

    def _load_failed(self, exc) -> RpcError:
        """-32603 saying what failed, with paths relative to the root (the
        server does not show where its root is)."""
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and exc.filename:
            why = f"{exc.filename}: {why}"
        why = why.replace(self.root + os.sep, "")
        return RpcError(INTERNAL_ERROR, f"failed to load trace: {why}")

    def _with_manifest(self, t: Trace) -> Trace:
        """The same index with a re-read manifest (and fresh derived figures)."""
        manifest, size, mfp = _read_manifest(t.path)
        _check_count(manifest, t.idx, t.fp, t.path)
        return Trace(t.trace_id, t.path, t.fp, t.idx, manifest, size, t.names, t.modules,
                     t.name_obj, t.module_obj, t.kind_obj, mfp)

    def _open(self, trace_id, path) -> Trace:
        # the manifest first: events.bin, read after it, holds at least what it counts
        manifest, msize, mfp = _read_manifest(path)
        fp = ix.fingerprint(path)
        idx = ix.load(ix.index_location(path, self.index_cache), fp)
        if idx is None:
            self.stats["index_builds"] += 1
            if self._subprocess_builds and fp[0] > SUBPROCESS_BUILD_BYTES:
                try:
                    self._worker_pool().submit(_build_in_worker, path, self.index_cache).result()
                except concurrent.futures.process.BrokenProcessPool:
                    with self._lock:  # a new worker for the next build
                        self._pool = None
                    raise ix.IndexError_("the index builder process died") from None
                idx = ix.load(ix.index_location(path, self.index_cache), fp)
                if idx is None:  # the trace changed while we built: build again here
                    idx, _ = ix.open_or_build(path, self.index_cache)
            else:
                idx, _ = ix.open_or_build(path, self.index_cache)
        else:
            self.stats["index_loads"] += 1
        _check_count(manifest, idx, fp, path)
        fns = idx.meta["functions"]
        names, modules = fns["name"], fns["module"]
        name_obj = np.array([n or None for n in names] + [None], dtype=object)
        module_obj = np.array([m or None for m in modules] + [None], dtype=object)
        kind_obj = np.array(list(ix.KIND_NAMES) + ["Unknown"] * 250, dtype=object)
        return Trace(trace_id, path, fp, idx, manifest, msize, names, modules,
                     name_obj, module_obj, kind_obj, mfp)

    def _worker_pool(self):
        with self._lock:
            if self._pool is None:
                # spawn: the server has threads; a forked child would inherit their locks
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    # ---- listing -----------------------------------------------------

    def trace_dirs(self):
        """Every trace directory under the root (symlinks are not followed,
        so a listing never leaves the root)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d != ix.INDEX_DIR and not d.startswith("."))
            if atf.EVENTS_FILE in filenames and atf.MANIFEST_FILE in filenames:
                yield dirpath

    def summary(self, path) -> dict:
        """Cheap summary for trace.list: from the loaded or persisted index
        when it is current, else from the manifest alone."""
        trace_id = self.trace_id_of(path)
        try:
            fp = ix.fingerprint(path)
            with open(os.path.join(path, atf.MANIFEST_FILE), "rb") as f:
                manifest = orjson.loads(f.read())
            if not isinstance(manifest, dict):
                manifest = {}
        except (OSError, ValueError):
            fp, manifest = None, {}
        meta = None
        t = self._traces.get(path)
        if t is not None and t.fp == fp:
            meta = t.idx.meta
        elif fp is not None:
            try:
                with open(os.path.join(ix.index_location(path, self.index_cache), "meta.json"), "rb") as f:
                    m = orjson.loads(f.read())
                if m.get("eventsSize") == fp[0] and m.get("eventsMtimeNs") == fp[1]:
                    meta = m
            except (OSError, ValueError):
                pass
        start = (meta or {}).get("traceStart") or (_head_trace_start(path) if meta is None else {})
        return {
            "traceId": trace_id,
            "pid": _int_or_none(manifest.get("pid")) or _int_or_none(start.get("pid")) or _pid_from_dir(path),
            "executablePath": manifest.get("executablePath") or start.get("executablePath") or None,
            "timeStartNs": meta["timeStartNs"] if meta else _int_or_none(manifest.get("timeStartNs")),
            "timeEndNs": meta["timeEndNs"] if meta else _int_or_none(manifest.get("timeEndNs")),
            "eventCount": meta["eventCount"] if meta else _int_or_none(manifest.get("eventCount")),
        }


def _head_trace_start(path, max_bytes=1 << 16, max_frames=64) -> dict:
    """TraceStart from the first frames of events.bin: enough for trace.list
    on a trace nobody has opened yet (no index, minimal manifest)."""
    from lanetrace.core import atf_v4_pb2 as pb

    try:
        with open(os.path.join(path, atf.EVENTS_FILE), "rb") as f:
            head = f.read(max_bytes)
    except OSError:
        return {}
    for i, (_, payload, length) in enumerate(atf.scan_frames(head)):
        if i >= max_frames:
            break
        ev = pb.Event()
        try:
            ev.ParseFromString(head[payload:payload + length])
        except Exception:  # protobuf's DecodeError: not worth more than a null
            return {}
        if ev.WhichOneof("payload") == "trace_start":
            return {"executablePath": ev.trace_start.executable_path, "pid": ev.trace_start.pid}
    return {}


def _mfp(path):
    st = os.stat(os.path.join(path, atf.MANIFEST_FILE))
    return st.st_size, st.st_mtime_ns


def _read_manifest(path):
    """(manifest dict, size, fingerprint); raises atf.TraceFormatError."""
    mfp = _mfp(path)
    return atf.read_manifest(path), mfp[0], mfp


def _check_count(manifest, idx, fp, path):
    """Events indexed vs the manifest's count, when the manifest was read
    before the events.bin the index was built from (the writer appends, then
    updates the manifest: a manifest read later may count newer events)."""
    if ix.fingerprint(path) == fp:  # else events.bin grew: the next request indexes it again
        atf.check_event_count(manifest, idx.meta["eventCount"], path)


def _int_or_none(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _pid_from_dir(path):
    base = os.path.basename(path)
    if base.startswith("pid_") and base[4:].isdigit():
        return int(base[4:])
    return None


def thread_names(m) -> dict:
    """Thread id -> name from a manifest's ``threads`` (a map or a list)."""
    th = m.get("threads")
    out = {}
    if isinstance(th, dict):
        for k, v in th.items():
            if str(k).lstrip("-").isdigit() and isinstance(v, str):
                out[int(k)] = v
    elif isinstance(th, list):
        for x in th:
            if isinstance(x, dict) and isinstance(x.get("threadId"), int) and isinstance(x.get("name"), str):
                out[x["threadId"]] = x["name"]
    return out
