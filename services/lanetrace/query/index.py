"""Per-trace columnar index: built once from ``events.bin``, persisted next to
the trace as ``.npy`` files, and memory-mapped by every server replica.

Everything is kept in *rank space*: rank r is the r-th event in global time
order (ties broken by file order, which is each thread's sequence order).
Columns are stored by rank, so a time range is a contiguous rank range, and
the per-thread and per-function postings are ascending rank lists. Spans are
numbered by the rank of their call (span id i = i-th span by start time).

The index is valid for one (size, mtime_ns) of ``events.bin``; a trace that
changes gets a fresh index. Replicas serialise builds with ``flock`` and
publish a finished index with a directory rename, so a reader never sees a
half-written one.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import orjson

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb

INDEX_VERSION = 10  # 10: compact events (derived fields); 9: torn tail size, format checks
INDEX_DIR = "index"
LOCK_FILE = "index.lock"

K_UNKNOWN, K_TRACE_START, K_TRACE_END, K_CALL, K_RETURN, K_SIGNAL, K_SYMDEF = range(7)
KIND_NAMES = ("Unknown", "TraceStart", "TraceEnd", "FunctionCall", "FunctionReturn",
              "SignalDelivery")
# API spelling (camelCase) of each kind, for the eventTypes filter
KIND_FILTER_NAMES = {"unknown": K_UNKNOWN, "traceStart": K_TRACE_START,
                     "traceEnd": K_TRACE_END, "functionCall": K_CALL,
                     "functionReturn": K_RETURN, "signalDelivery": K_SIGNAL}

EVENT_COLUMNS = ("ev_ts", "ev_tid", "ev_kind", "ev_fidx", "ev_depth", "ev_off", "ev_len",
                 "ev_detail", "ev_seq")
ARRAYS = EVENT_COLUMNS + ("det_off", "det_len",
    "th_ranks", "th_tids", "th_off", "fn_ranks", "fn_off",
    "sp_start", "sp_end", "sp_dur", "sp_tid", "sp_fidx", "sp_depth", "sp_children", "sp_self",
    "sp_call_rank", "sp_ret_rank", "sp_parent", "sp_fn_ids", "sp_fn_off", "sp_th_ids", "sp_th_off")

try:  # the C scanner; the pure-Python path below gives the same columns
    from lanetrace._native import ffi as _ffi, lib as _lib
    # a stale build of native/ (older qindex.c) must not be called with new arguments
    HAVE_NATIVE = (hasattr(_lib, "lt_qindex_scan") and hasattr(_lib, "lt_qindex_group")
                   and len(_ffi.typeof(_lib.lt_qindex_scan).args) == 23)
except ImportError:  # pragma: no cover - a build without native/
    HAVE_NATIVE = False


class IndexError_(Exception):
    """The trace cannot be indexed (corrupt events.bin, unreadable files)."""


def fingerprint(trace_dir: str) -> tuple[int, int]:
    st = os.stat(os.path.join(trace_dir, atf.EVENTS_FILE))
    return st.st_size, st.st_mtime_ns


def index_location(trace_dir: str, cache_root: str | None = None) -> str:
    """``<trace>/index`` when the trace directory is writable, else a per-trace
    directory under ``cache_root`` (read-only trace roots still get indexes)."""
    if cache_root is None and os.access(trace_dir, os.W_OK):
        return os.path.join(trace_dir, INDEX_DIR)
    root = cache_root or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lanetrace", "index")
    key = hashlib.sha1(os.path.realpath(trace_dir).encode()).hexdigest()[:20]
    return os.path.join(root, key)


@dataclass
class Index:
    """A loaded index: numpy arrays (memory-mapped) plus the ``meta`` dict."""

    path: str
    meta: dict
    arrays: dict

    def __getattr__(self, name):
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None


def load(index_dir: str, fp: tuple[int, int]) -> Index | None:
    """The index in ``index_dir`` if it is complete and matches ``fp``."""
    try:
        with open(os.path.join(index_dir, "meta.json"), "rb") as f:
            meta = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    if (meta.get("version") != INDEX_VERSION or meta.get("eventsSize") != fp[0]
            or meta.get("eventsMtimeNs") != fp[1]):
        return None
    try:
        arrays = {name: np.load(os.path.join(index_dir, name + ".npy"), mmap_mode="r")
                  for name in ARRAYS}
    except (OSError, ValueError):
        return None
    return Index(index_dir, meta, arrays)


def open_or_build(trace_dir: str, cache_root: str | None = None) -> tuple[Index, bool]:
    """Load the persisted index of ``trace_dir``, building it first if it is
    missing or stale. Returns (index, built_here)."""
    index_dir = index_location(trace_dir, cache_root)
    fp = fingerprint(trace_dir)
    idx = load(index_dir, fp)
    if idx is not None:
        return idx, False
    parent = os.path.dirname(index_dir)
    os.makedirs(parent, exist_ok=True)
    lock_path = (os.path.join(trace_dir, LOCK_FILE) if parent == trace_dir
                 else index_dir + ".lock")
    with open(lock_path, "a+b") as lock:
        # another replica may be building the same index: wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fp = fingerprint(trace_dir)
            idx = load(index_dir, fp)
            if idx is not None:
                return idx, False
            tmp = tempfile.mkdtemp(prefix=".index-", dir=parent)
            try:
                build(trace_dir, tmp, fp)
                _publish(tmp, index_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    idx = load(index_dir, fp)
    if idx is None:
        raise IndexError_("index vanished right after it was built")
    return idx, True


def _publish(tmp: str, index_dir: str) -> None:
    old = None
    if os.path.exists(index_dir):
        old = f"{index_dir}.old.{os.getpid()}"
        os.rename(index_dir, old)
    os.rename(tmp, index_dir)
    if old:
        # open mmaps of the old files stay valid after the unlink
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------
# building

def build(trace_dir: str, out_dir: str, fp: tuple[int, int]) -> dict:
    """Build the index of ``trace_dir`` into ``out_dir``; return its meta.
    Raises atf.TraceFormatError for a trace that does not read as ATF V4."""
    path = os.path.join(trace_dir, atf.EVENTS_FILE)
    sidecar = _sidecar_symbols(trace_dir)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if size else b""
    try:
        cols = scan_native(buf, path) if HAVE_NATIVE else scan_python(buf, path)
        _decode_rare_frames(buf, cols, path)
        if not _compact(trace_dir):
            cols = _without_own_details(cols)
        arrays, meta = _assemble(buf, cols, sidecar)
        meta["tornTailBytes"] = cols["torn_tail_bytes"]
    finally:
        if isinstance(buf, mmap.mmap):
            try:
                buf.close()
            except BufferError:  # a view survives in a traceback: the GC unmaps it
                pass
    meta.update(version=INDEX_VERSION, eventsSize=fp[0], eventsMtimeNs=fp[1])
    for name in ARRAYS:
        np.save(os.path.join(out_dir, name + ".npy"), np.ascontiguousarray(arrays[name]))
    with open(os.path.join(out_dir, "meta.json"), "wb") as f:
        f.write(orjson.dumps(meta))
    return meta


SCAN_FIELDS = (("off", np.int64), ("plen", np.uint32), ("ts", np.int64), ("tid", np.int32),
               ("kind", np.uint8), ("fid", np.uint32), ("addr", np.uint64),
               ("sym_off", np.int64), ("sym_len", np.uint32), ("sym_hash", np.uint64),
               ("depth", np.int32), ("seq", np.uint64))


# not events: symbol definitions, and flight-recorder detail copies of calls
SIDE_FIELDS = (("def_off", np.int64), ("def_len", np.uint32), ("det_off", np.int64),
               ("det_len", np.uint32), ("det_tid", np.int32), ("det_seq", np.uint64))


def _compact(trace_dir: str) -> bool:
    """Written by the current writer, whose calls and returns carry the
    flight recorder's registers themselves (docs/format.md)."""
    try:
        return atf.read_manifest(trace_dir).get("eventEncoding") == atf.COMPACT_ENCODING
    except atf.TraceFormatError:
        return False


def _without_own_details(cols: dict) -> dict:
    """Registers inside an event of another trace are not flight-recorder
    detail (only ``detail = true`` twins are): drop the self-joins."""
    keep = ~np.isin(cols["det_off"], cols["off"])
    if keep.all():
        return cols
    cols = dict(cols)
    for name in ("det_off", "det_len", "det_tid", "det_seq"):
        cols[name] = cols[name][keep]
    return cols


def scan_native(buf, path: str = atf.EVENTS_FILE) -> dict:
    """Index columns of every whole frame of ``buf`` (an events.bin image at
    ``path``), and ``torn_tail_bytes``; raises atf.TraceFormatError on
    corruption."""
    n_buf = len(buf)
    if n_buf == 0:
        return _empty_cols()
    cbuf = _ffi.from_buffer("uint8_t[]", buf)
    try:  # release the export at once: the caller closes the mmap
        valid = _ffi.new("int64_t *")
        n = _lib.lt_qindex_count(cbuf, n_buf, valid)
        cols = {name: np.empty(n, dt) for name, dt in SCAN_FIELDS}
        ptrs = [_ffi.from_buffer(_ctype(dt) + "[]", cols[name]) for name, dt in SCAN_FIELDS]
        side = {name: np.empty(n, dt) for name, dt in SIDE_FIELDS}
        ndefs = _ffi.new("int64_t *")
        ndet = _ffi.new("int64_t *")
        fb = _ffi.from_buffer
        got = _lib.lt_qindex_scan(
            cbuf, valid[0], n, *ptrs, fb("int64_t[]", side["def_off"]),
            fb("uint32_t[]", side["def_len"]), ndefs, fb("int64_t[]", side["det_off"]),
            fb("uint32_t[]", side["det_len"]), fb("int32_t[]", side["det_tid"]),
            fb("uint64_t[]", side["det_seq"]), ndet)
        valid_len = valid[0]
    finally:
        _ffi.release(cbuf)
    if got < 0:
        _corrupt_frame(buf, -got - 1, path)
    torn = atf.torn_tail(buf, valid_len, n, path)
    # views, not copies: the unused tail costs address space only
    cols = {k: v[:got] for k, v in cols.items()}
    for name, _ in SIDE_FIELDS:
        cols[name] = side[name][:(ndefs[0] if name.startswith("def") else ndet[0])]
    cols["torn_tail_bytes"] = torn
    return cols


def _decode_rare_frames(buf, c, path: str) -> None:
    """Decode, with the protobuf runtime, the frames the scanner does not
    interpret field by field (all but calls and returns; few in a trace), so
    a corrupt one fails the load rather than a later request."""
    rare = np.flatnonzero((c["kind"] != K_CALL) & (c["kind"] != K_RETURN))
    for off, ln in zip(c["off"][rare].tolist(), c["plen"][rare].tolist()):
        atf.decode_frame(buf, off, ln, path)
    for off, ln in zip(c["def_off"].tolist(), c["def_len"].tolist()):
        atf.decode_frame(buf, off, ln, path)


def _corrupt_frame(buf, number: int, path: str):
    for i, (offset, _, _) in enumerate(atf.scan_frames(buf)):
        if i == number:
            raise atf.TraceFormatError(
                f"{path}: corrupt event at offset {offset} (frame #{number}): "
                f"not an ATF V4 Event")
    raise atf.TraceFormatError(f"{path}: corrupt event (frame #{number}): not an ATF V4 Event")


def _empty_cols():
    cols = {name: np.zeros(0, dt) for name, dt in SCAN_FIELDS + SIDE_FIELDS}
    cols["torn_tail_bytes"] = 0
    return cols


def _ctype(dt) -> str:
    return {np.int64: "int64_t", np.uint32: "uint32_t", np.int32: "int32_t",
            np.uint8: "uint8_t", np.uint64: "uint64_t"}[dt]


_ONEOF_KIND = {"trace_start": K_TRACE_START, "trace_end": K_TRACE_END,
               "function_call": K_CALL, "function_return": K_RETURN,
               "signal_delivery": K_SIGNAL, "symbol_definition": K_SYMDEF}


def fnv1a(data: bytes) -> int:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h or 1


def scan_python(buf, path: str = atf.EVENTS_FILE) -> dict:
    """Same columns as the C scanner, with the protobuf runtime (slow; used
    where the native module is missing, and as its reference in tests)."""
    rows = {name: [] for name, _ in SCAN_FIELDS}
    side = {name: [] for name, _ in SIDE_FIELDS}
    data = bytes(buf)
    frames = end = 0
    derive = atf.Derivation().apply
    for i, (offset, payload, length) in enumerate(atf.scan_frames(data)):
        frames, end = i + 1, payload + length
        ev = pb.Event()
        try:
            ev.ParseFromString(data[payload:payload + length])
        except Exception as exc:  # protobuf's DecodeError and friends
            raise atf.TraceFormatError(
                f"{path}: corrupt event at offset {offset} (frame #{i}): {exc}") from None
        derive(ev)
        which = ev.WhichOneof("payload")
        kind = _ONEOF_KIND.get(which, K_UNKNOWN)
        if kind == K_SYMDEF:
            side["def_off"].append(payload)
            side["def_len"].append(length)
            continue
        if ev.detail:
            for name, val in (("det_off", payload), ("det_len", length),
                              ("det_tid", ev.thread_id), ("det_seq", ev.sequence)):
                side[name].append(val)
            continue
        fid = addr = sym_off = sym_len = sym_hash = 0
        if kind in (K_CALL, K_RETURN):
            body = ev.function_call if kind == K_CALL else ev.function_return
            fid, addr = body.function_id, body.address
            if body.symbol:
                raw = body.symbol.encode()
                sym_len, sym_hash = len(raw), fnv1a(raw)
                sym_off = data.find(raw, payload, payload + length)
        # -1: absent (0 in an event that carries its sequence)
        depth = ev.depth if ev.HasField("depth") else -1
        if ev.sequence and atf.carries_detail(ev):  # its own detail: joined to itself
            for name, val in (("det_off", payload), ("det_len", length),
                              ("det_tid", ev.thread_id), ("det_seq", ev.sequence)):
                side[name].append(val)
        for name, val in (("off", payload), ("plen", length), ("ts", atf.timestamp_ns(ev)),
                          ("tid", ev.thread_id), ("kind", kind), ("fid", fid), ("addr", addr),
                          ("sym_off", sym_off), ("sym_len", sym_len), ("sym_hash", sym_hash),
                          ("depth", depth), ("seq", ev.sequence)):
            rows[name].append(val)
    torn = atf.torn_tail(data, end, frames, path)
    cols = {name: np.array(rows[name], dtype=dt) for name, dt in SCAN_FIELDS}
    cols.update({name: np.array(side[name], dtype=dt) for name, dt in SIDE_FIELDS})
    cols["torn_tail_bytes"] = torn
    return cols


def pair_python(tid, kind, key, ts):
    """Reference implementation of lt_qindex_pair (same rules, see qindex.c)."""
    n = len(kind)
    ev_depth = np.full(n, -1, np.int32)
    stacks: dict[int, list] = {}
    out = ([], [], [], [], [])
    for i in range(n):
        k = kind[i]
        if k != K_CALL and k != K_RETURN:
            continue
        st = stacks.setdefault(int(tid[i]), [])
        if k == K_CALL:
            ev_depth[i] = len(st)
            st.append([i, int(key[i]), len(st), 0, 0])
            continue
        j = len(st)
        while j > 0 and st[j - 1][1] != key[i]:
            j -= 1
        if j == 0:
            continue
        f = st[j - 1]
        dur = int(ts[i]) - int(ts[f[0]])
        for lst, v in zip(out, (f[0], i, f[2], f[3], f[4])):
            lst.append(v)
        ev_depth[i] = f[2]
        del st[j - 1:]
        if st:
            st[-1][3] += 1
            st[-1][4] += dur
    dts = (np.int64, np.int64, np.int32, np.int32, np.int64)
    return (ev_depth, *(np.array(v, dtype=dt) for v, dt in zip(out, dts)))


def pair_native(tid, kind, key, ts):
    n = len(kind)
    tid, kind, key, ts = (np.ascontiguousarray(a) for a in (tid, kind, key, ts))
    ev_depth = np.empty(n, np.int32)
    ncalls = int(np.count_nonzero(kind == K_CALL))
    sp = [np.empty(ncalls, dt) for dt in (np.int64, np.int64, np.int32, np.int32, np.int64)]
    if n == 0:
        return (ev_depth, *sp)
    fb = _ffi.from_buffer
    got = _lib.lt_qindex_pair(n, fb("int32_t[]", tid), fb("uint8_t[]", kind),
                              fb("int32_t[]", key), fb("int64_t[]", ts),
                              fb("int32_t[]", ev_depth),
                              *(fb(t + "[]", a) for t, a in zip(
                                  ("int64_t", "int64_t", "int32_t", "int32_t", "int64_t"), sp)))
    if got < 0:
        raise MemoryError("span pairing ran out of memory")
    return (ev_depth, *(a[:got] for a in sp))


def _sidecar_symbols(trace_dir) -> dict:
    """id → (name, module, address, source) from our symbols.json, if any: a
    fallback for ids whose in-stream definition is missing (the stream is
    authoritative). ``source`` is "file:line" from DWARF, or ""."""
    out = {}
    for r in atf.read_symbols(trace_dir) or []:
        if not isinstance(r, dict):
            continue
        fid = r.get("id", r.get("functionId"))
        name = r.get("name", r.get("symbol"))
        if isinstance(fid, int) and fid > 0 and isinstance(name, str):
            module = r.get("module") if isinstance(r.get("module"), str) else ""
            addr = r.get("address") if isinstance(r.get("address"), int) else 0
            out[fid] = (name, module, addr, _source(r.get("sourceFile"), r.get("sourceLine")))
    return out


def _source(file, line) -> str:
    if not isinstance(file, str) or not file:
        return ""
    return f"{file}:{line}" if isinstance(line, int) and line > 0 else file


def _function_table(buf, c, is_cr, sidecar=None):
    """Map every call/return to a function index (unique name+module).

    Ours: function ids defined by in-stream SymbolDefinition events (ids the
    stream does not define are looked up in symbols.json). Foreign: symbol
    strings, interned by their FNV-1a hash (decoded once per hash)."""
    names: list[str] = []
    modules: list[str] = []
    addrs: list[int] = []
    sources: list[str] = []
    table: dict[tuple[str, str], int] = {}

    def intern(name, module, address, source=""):
        key = (name, module)
        if key not in table:
            table[key] = len(names)
            names.append(name)
            modules.append(module)
            addrs.append(int(address))
            sources.append(source)
        return table[key]

    defs = dict(sidecar or {})
    for off, ln in zip(c["def_off"].tolist(), c["def_len"].tolist()):
        d = pb.Event.FromString(bytes(buf[off:off + ln])).symbol_definition  # checked at the scan
        defs[d.function_id] = (d.symbol, d.module, d.address, _source(d.source_file, d.source_line))

    n = len(c["kind"])
    fidx = np.full(n, -1, np.int32)
    fid = c["fid"]
    defined = np.zeros(n, bool)
    if defs:
        top = max(defs) + 1
        lut = np.full(top, -1, np.int32)
        for f, (name, module, address, source) in sorted(defs.items()):
            lut[f] = intern(name, module, address, source)
        defined = is_cr & (fid > 0) & (fid < top)
        defined[defined] = lut[fid[defined]] >= 0
        fidx[defined] = lut[fid[defined]]
    by_sym = is_cr & ~defined & (c["sym_len"] > 0)
    if by_sym.any():
        hashes = c["sym_hash"][by_sym]
        uniq, first, inv = np.unique(hashes, return_index=True, return_inverse=True)
        where = np.flatnonzero(by_sym)[first]
        lut = np.empty(len(uniq), np.int32)
        for j, i in enumerate(where.tolist()):
            so, sl = int(c["sym_off"][i]), int(c["sym_len"][i])
            name = bytes(buf[so:so + sl]).decode("utf-8", "replace")
            lut[j] = intern(name, "", c["addr"][i])
        fidx[by_sym] = lut[inv.reshape(-1)]
    unnamed = is_cr & (fidx < 0)
    if unnamed.any():
        fidx[unnamed] = intern("", "", 0)
    return fidx, names, modules, addrs, sources


def _groups(keys: np.ndarray, nkeys: int):
    """Stable grouping: (permutation, offsets) so that ``perm[off[k]:off[k+1]]``
    are the positions with key k, ascending."""
    if HAVE_NATIVE and len(keys):
        keys = np.ascontiguousarray(keys, np.int32)
        perm = np.empty(len(keys), np.int32)
        off = np.empty(nkeys + 1, np.int64)
        _lib.lt_qindex_group(len(keys), _ffi.from_buffer("int32_t[]", keys), nkeys,
                             _ffi.from_buffer("int32_t[]", perm), _ffi.from_buffer("int64_t[]", off))
        return perm, off
    perm = np.argsort(keys, kind="stable").astype(np.int32)
    counts = np.bincount(keys, minlength=nkeys) if len(keys) else np.zeros(nkeys, np.int64)
    off = np.zeros(nkeys + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    return perm, off


def _assemble(buf, c, sidecar=None):
    is_cr = (c["kind"] == K_CALL) | (c["kind"] == K_RETURN)
    fidx, names, modules, addrs, sources = _function_table(buf, c, is_cr, sidecar)
    n = len(c["kind"])
    ours = bool(n and ((c["fid"] > 0).any() or (c["seq"] > 0).any() or (c["depth"] >= 0).any()))

    pair = pair_native if HAVE_NATIVE else pair_python
    ev_depth_calc, sp_call, sp_ret, sp_depth, sp_children, sp_child_ns = pair(
        c["tid"], c["kind"], fidx, c["ts"])
    if ours:
        # our writer records the depth at capture time, which survives drops
        ev_depth = np.where(is_cr, np.maximum(c["depth"], 0), -1).astype(np.int32)
    else:
        ev_depth = ev_depth_calc

    order = np.argsort(c["ts"], kind="stable")
    rank = np.empty(n, np.int32)
    rank[order] = np.arange(n, dtype=np.int32)
    a = {"ev_ts": c["ts"][order], "ev_tid": c["tid"][order], "ev_kind": c["kind"][order],
         "ev_fidx": fidx[order], "ev_depth": ev_depth[order], "ev_off": c["off"][order],
         "ev_len": c["plen"][order], "ev_seq": c["seq"][order]}
    a["ev_detail"], a["det_off"], a["det_len"] = _join_details(a, c, is_cr[order], order)

    tids, tid_idx = thread_numbers(a["ev_tid"])
    a["th_tids"] = tids
    a["th_ranks"], a["th_off"] = _groups(tid_idx, len(tids))

    nfun = len(names)
    fmask = a["ev_fidx"] >= 0
    franks = np.flatnonzero(fmask).astype(np.int32)
    perm, a["fn_off"] = _groups(a["ev_fidx"][fmask], nfun)
    a["fn_ranks"] = franks[perm]

    call_rank = rank[sp_call]
    sorder = np.argsort(call_rank, kind="stable")
    call_rank = call_rank[sorder]
    ret_rank = rank[sp_ret][sorder]
    a["sp_call_rank"] = call_rank.astype(np.int32)
    a["sp_ret_rank"] = ret_rank.astype(np.int32)
    a["sp_start"] = a["ev_ts"][call_rank]
    a["sp_end"] = a["ev_ts"][ret_rank]
    a["sp_tid"] = a["ev_tid"][call_rank]
    a["sp_fidx"] = a["ev_fidx"][call_rank]
    a["sp_depth"] = sp_depth[sorder]
    a["sp_children"] = sp_children[sorder]
    dur = a["sp_dur"] = a["sp_end"] - a["sp_start"]
    a["sp_self"] = dur - sp_child_ns[sorder]
    a["sp_fn_ids"], a["sp_fn_off"] = _groups(a["sp_fidx"], nfun)
    a["sp_th_ids"], a["sp_th_off"] = _groups(tid_idx[call_rank], len(tids))
    a["sp_parent"] = span_parents(tid_idx[call_rank], a["sp_depth"], a["sp_call_rank"],
                                  a["sp_ret_rank"])

    functions = function_stats(a, a["ev_kind"] == K_CALL, None, nfun,
                               grouped=(a["sp_fn_ids"], a["sp_fn_off"]))
    counts = np.diff(a["th_off"])
    threads = []
    for j, t in enumerate(tids.tolist()):
        ranks = a["th_ranks"][a["th_off"][j]:a["th_off"][j + 1]]
        threads.append({"threadId": int(t), "eventCount": int(counts[j]),
                        "firstNs": int(a["ev_ts"][ranks[0]]), "lastNs": int(a["ev_ts"][ranks[-1]])})
    meta = {
        "eventCount": n, "spanCount": int(len(dur)), "ours": ours,
        "timeStartNs": int(a["ev_ts"][0]) if n else None,
        "timeEndNs": int(a["ev_ts"][-1]) if n else None,
        "functions": {"name": names, "module": modules, "address": addrs, "source": sources},
        "functionStats": functions, "threads": threads,
        "traceStart": _trace_start(buf, c),
        "eventsValidSize": int(c["off"][-1] + c["plen"][-1]) if n else 0,
    }
    return a, meta


def span_parents(thread_no, depth, call_rank, ret_rank) -> np.ndarray:
    """Per span (start order), the id of the completed span that called it, or
    -1. On one thread the spans at one depth never overlap, so the caller is
    the last span one level up that started before it, if it still runs;
    when that frame never returned (no span), the call has no parent."""
    n = len(depth)
    parent = np.full(n, -1, np.int32)
    if n == 0:
        return parent
    levels = int(depth.max()) + 2
    group = thread_no.astype(np.int64) * levels + depth.astype(np.int64)
    key = (group << 32) | call_rank.astype(np.int64)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    child = np.flatnonzero(depth > 0)
    want = ((group[child] - 1) << 32) | call_rank[child].astype(np.int64)
    pos = np.searchsorted(skey, want, "left") - 1
    ok = pos >= 0
    pos = np.maximum(pos, 0)
    cand = order[pos]
    ok &= (skey[pos] >> 32) == (group[child] - 1)
    ok &= ret_rank[cand] > call_rank[child]
    parent[child[ok]] = cand[ok]
    return parent


def thread_numbers(tid: np.ndarray):
    """(sorted distinct thread ids, per-event index into them)."""
    n = len(tid)
    if HAVE_NATIVE and n and hasattr(_lib, "lt_qindex_threads"):
        tid = np.ascontiguousarray(tid, np.int32)
        idx = np.empty(n, np.int32)
        cap = 1 << 16
        seen = np.empty(cap, np.int32)
        k = _lib.lt_qindex_threads(n, _ffi.from_buffer("int32_t[]", tid),
                                   _ffi.from_buffer("int32_t[]", idx),
                                   _ffi.from_buffer("int32_t[]", seen), cap)
        if k >= 0:
            order = np.argsort(seen[:k], kind="stable")
            remap = np.empty(k, np.int32)
            remap[order] = np.arange(k, dtype=np.int32)
            return seen[:k][order].copy(), remap[idx]
    tids, inv = np.unique(tid, return_inverse=True)
    return tids.astype(np.int32), inv.reshape(-1).astype(np.int32)


def _join_details(a, c, is_cr, order):
    """Per event (rank order), the index of its flight-recorder detail frame
    (same thread and sequence), or -1. Details are few: only in windows."""
    nd = len(c["det_off"])
    ev_detail = np.full(len(a["ev_ts"]), -1, np.int32)
    if nd == 0 or not len(ev_detail):
        return ev_detail, c["det_off"].copy(), c["det_len"].copy()
    seq_r = c["seq"][order]
    ev_key = (a["ev_tid"].astype(np.int64) << 40) | (seq_r.astype(np.int64) & ((1 << 40) - 1))
    det_key = (c["det_tid"].astype(np.int64) << 40) | (c["det_seq"].astype(np.int64) & ((1 << 40) - 1))
    order = np.argsort(det_key, kind="stable")
    skeys = det_key[order]
    pos = np.searchsorted(skeys, ev_key)
    pos_c = np.minimum(pos, nd - 1)
    hit = is_cr & (seq_r > 0) & (skeys[pos_c] == ev_key)
    ev_detail[hit] = order[pos_c[hit]]
    return ev_detail, c["det_off"].copy(), c["det_len"].copy()


def function_stats(a, call_mask, span_mask, nfun, grouped=None):
    """Per function: calls (FunctionCall events under ``call_mask``) and time
    figures of the completed spans under ``span_mask`` (None = all spans).
    ``grouped`` = (span ids by function, offsets) saves the sort."""
    calls = (np.bincount(np.asarray(a["ev_fidx"])[call_mask], minlength=nfun)
             if nfun else np.zeros(0, np.int64))
    total = np.zeros(nfun, np.int64)
    selft = np.zeros(nfun, np.int64)
    mx = np.zeros(nfun, np.int64)
    spans = np.zeros(nfun, np.int64)
    if grouped is not None and span_mask is None:
        ids, off = grouped
        counts = np.diff(off)
    else:
        fid = np.asarray(a["sp_fidx"])
        ids = np.flatnonzero(span_mask) if span_mask is not None else np.arange(len(fid))
        ids = ids[np.argsort(fid[ids], kind="stable")]
        counts = np.bincount(fid[ids], minlength=nfun) if nfun else np.zeros(0, np.int64)
        off = np.concatenate([[0], np.cumsum(counts)])
    if len(ids):
        dur = np.asarray(a["sp_dur"])[ids]
        self_ = np.asarray(a["sp_self"])[ids]
        has = np.flatnonzero(counts)
        starts = np.asarray(off[:-1])[has]
        total[has] = np.add.reduceat(dur, starts)
        selft[has] = np.add.reduceat(self_, starts)
        mx[has] = np.maximum.reduceat(dur, starts)
        spans[:] = counts
    return {"calls": calls.astype(np.int64).tolist(), "totalTimeNs": total.tolist(),
            "selfTimeNs": selft.tolist(), "maxDurationNs": mx.tolist(), "spans": spans.tolist()}


def _trace_start(buf, c) -> dict:
    where = np.flatnonzero(c["kind"] == K_TRACE_START)
    if not len(where):
        return {}
    off, ln = int(c["off"][where[0]]), int(c["plen"][where[0]])
    ev = pb.Event()
    ev.ParseFromString(bytes(buf[off:off + ln]))
    s = ev.trace_start
    return {"executablePath": s.executable_path, "args": list(s.args),
            "os": s.operating_system, "arch": s.cpu_architecture, "pid": s.pid,
            "sessionId": s.session_id}
