"""Python view of a target's shared-memory segment (``/lanetrace-<session>-<pid>-lanes``).

The layout, ownership rules and memory ordering live in
``native/include/lanetrace/shm.h``; this module is a thin cffi wrapper:

* the injector ``create()``s a segment per target, sets the mode, marks the
  target exited, reads drop counters for the manifest;
* each drainer ``open()``s it and drains its ``shard(k)``: ``collect_batch()``
  copies new committed index records out in C (one memcpy per ring span, plus
  a share of the global lane) and names the batch with a token;
  ``commit(token)`` returns what the writer acked up to that batch to the
  producers (several batches may be in flight); ``collect_detail()`` copies
  the detail lane out and gives its rings back at once (the pre-roll buffer
  lives in the drainer);
* the flight recorder: ``set_detail()`` switches the detail lane,
  ``add_mark()`` / ``marks()`` are the trigger marks, the agent's
  ``setTriggers`` RPC flags functions whose ENTRY appends a mark;
* registry modes: ``set_mode()``, ``set_shard_fallback()``, and
  ``mode_policy()`` for the agent's own mode machine (it advances
  GLOBAL_ONLY -> DUAL_WRITE -> PER_THREAD_ONLY once every drainer heartbeat
  is fresh, and falls back per shard when one goes stale);
* ``lanetrace gc`` uses ``list_segments()`` / ``remove_stale_segments()``.
"""
from __future__ import annotations

import os
import re
import stat

from lanetrace._native import ffi, lib

RECORD_SIZE = 32
DETAIL_HEADER_SIZE = 104
DETAIL_MAX_STACK = 512
MAX_MARKS = 16384
SHM_DIR = "/dev/shm"
MAX_SHARDS = 16

MODES = {"GLOBAL_ONLY": 0, "DUAL_WRITE": 1, "PER_THREAD_ONLY": 2}
MODE_NAMES = {v: k for k, v in MODES.items()}

# index == LT_DROP_* in shm.h
DROP_REASONS = ("no_slot", "pool_exhausted", "depth_overflow", "global_full",
                "thread_exiting", "alloc_failed", "detail_pool_exhausted",
                "detail_no_slot", "detail_overwritten", "marks_overflow",
                "blocked_timeout")
# reasons of the detail lane (the others are index-lane reasons)
DETAIL_DROP_REASONS = ("detail_pool_exhausted", "detail_no_slot", "detail_overwritten")
MARK_KINDS = {"symbol": 1, "crash": 2, "time": 3, "manual": 4}
MARK_KIND_NAMES = {v: k for k, v in MARK_KINDS.items()}
LANE_NAMES = ("index", "detail")
# index == LT_CLOCK_* in tsc.h: what the records in the rings count
CLOCK_NAMES = ("monotonic", "tsc")
FALLBACK_NAMES = ("off", "watchdog", "agent")
# index == LT_CTR_* in shm.h
COUNTER_NAMES = ("mode_transitions", "fallback_events", "threads_registered",
                 "threads_retired", "slots_freed", "rings_submitted",
                 "reentrant_skips", "ignored_threads", "global_records",
                 "unwound_frames", "fallback_clears", "detail_records",
                 "detail_rings_overwritten", "marks", "drop_log_overflow",
                 "agent_fallbacks")

_SESSION_RE = re.compile(r"^[A-Za-z0-9._]+(?:-[A-Za-z0-9._]+)*$")
_NAME_RE = re.compile(r"^/?lanetrace-(?P<session>.+)-(?P<pid>\d+)-lanes$")
# a segment still being built for another user (TargetSegment.create)
_BUILD_RE = re.compile(r"^lanetrace-(?P<session>.+)-(?P<pid>\d+)-lanes\.new-(?P<creator>\d+)$")


class SegmentError(Exception):
    """A segment could not be created, opened or used (message says why)."""


def segment_name(session_id: str, pid: int) -> str:
    return f"/lanetrace-{session_id}-{int(pid)}-lanes"


def _err(buf) -> str:
    return ffi.string(buf).decode("utf-8", "replace")


def give_to(name: str, uid: int, gid: int) -> None:
    """Hand a segment we just created (O_EXCL, 0600) to uid:gid. Through an
    fd opened without O_CREAT and O_NOFOLLOW, so neither a symlink nor
    fs.protected_regular in the sticky /dev/shm is in play, and only after
    checking it is still the file we created."""
    path = os.path.join(SHM_DIR, name.lstrip("/"))
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentError(f"cannot open {path} to hand it to uid {uid}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise SegmentError(f"{path} is not the segment this process created")
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o600)
    except OSError as exc:
        raise SegmentError(f"cannot hand {path} to uid {uid}: {exc.strerror}") from None
    finally:
        os.close(fd)


class TargetSegment:
    """One mapped segment. Not thread-safe across shards' commit/collect of the
    same shard; different shards may be drained from different threads."""

    def __init__(self, name: str, m, created: bool):
        self.name = name
        self._m = m
        self._created = created
        self._shards: list[Shard] = []
        info = ffi.new("lt_shm_info *")
        lib.lt_shm_info_get(m, info)
        self.pid = info.target_pid
        self.session_id = ffi.string(info.session).decode()
        self.config = {
            "slots": info.slot_count, "shards": info.shard_count,
            "ring_bytes": info.ring_bytes, "rings_per_lane": info.rings_per_lane,
            "global_records": info.global_records, "size": info.total_size,
            "created_ns": info.created_ns, "creator_pid": info.creator_pid,
            "detail_ring_bytes": info.detail_ring_bytes,
            "detail_rings_per_lane": info.detail_rings_per_lane,
            "pool_rings": info.pool_rings, "prefault_bytes": info.prefault_bytes,
        }

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def create(cls, session_id: str, pid: int, slots: int = 64, shards: int = 1,
               ring_bytes: int = 65536, rings_per_lane: int = 8,
               global_records: int = 16384, detail_ring_bytes: int = 65536,
               detail_rings_per_lane: int = 4, pool_rings: int = 0,
               owner: tuple[int, int] | None = None) -> "TargetSegment":
        """Create the segment of target ``pid``. It starts in GLOBAL_ONLY with
        the agent's mode machine on and the detail lane off. The detail rings
        (slots * detail_rings_per_lane * detail_ring_bytes) take memory only
        once the detail lane is used. ``pool_rings`` more index rings of
        ring_bytes form the target's shared pool, which a thread borrows from
        when its own rings all wait for the drainer; they take memory only
        once a burst used them. ``owner`` (uid, gid): a target that runs
        as another user must open it, so it is handed to that user, still
        0600 (that user and root only)."""
        if not isinstance(session_id, str) or not _SESSION_RE.match(session_id) or len(session_id) > 63:
            raise SegmentError(f"invalid session id {session_id!r}: use letters, digits, '.', '_', '-' (max 63)")
        for k, v in (("slots", slots), ("shards", shards), ("ring_bytes", ring_bytes),
                     ("rings_per_lane", rings_per_lane), ("global_records", global_records), ("pid", pid),
                     ("detail_ring_bytes", detail_ring_bytes),
                     ("detail_rings_per_lane", detail_rings_per_lane)):
            if not isinstance(v, int) or v <= 0:
                raise SegmentError(f"invalid {k}={v!r}: must be a positive integer")
        if not isinstance(pool_rings, int) or pool_rings < 0:
            raise SegmentError(f"invalid pool_rings={pool_rings!r}: must be a non-negative integer")
        name = segment_name(session_id, pid)
        # A segment for another user is built under a private name and
        # linked into place once it is theirs: no one ever sees the public
        # name with the wrong owner.
        build_name = name if owner is None else f"{name}.new-{os.getpid()}"
        cfg = ffi.new("lt_shm_config *", {
            "slot_count": slots, "shard_count": shards, "ring_bytes": ring_bytes,
            "rings_per_lane": rings_per_lane, "global_records": global_records,
            "detail_ring_bytes": detail_ring_bytes, "detail_rings_per_lane": detail_rings_per_lane,
            "pool_rings": pool_rings})
        m = ffi.new("lt_shm_map *")
        err = ffi.new("char[512]")
        rc = lib.lt_shm_create(build_name.encode(), cfg, pid, session_id.encode(), m, err, 512)
        if rc != 0:
            raise SegmentError(_err(err))
        segment = cls(build_name, m, True)
        if owner is not None:
            try:
                give_to(build_name, *owner)
                segment._publish_as(name)
            except SegmentError:
                segment.unlink()
                segment.close()
                raise
        return segment

    def _publish_as(self, name: str) -> None:
        """Give the segment, built under a private name, its public name.
        link() fails if the name exists, as O_EXCL would."""
        built = os.path.join(SHM_DIR, self.name.lstrip("/"))
        try:
            os.link(built, os.path.join(SHM_DIR, name.lstrip("/")))
        except OSError as exc:
            raise SegmentError(f"cannot create shared memory {name}: {exc.strerror}") from None
        os.unlink(built)
        self.name = name

    @classmethod
    def open(cls, name: str) -> "TargetSegment":
        if not name.startswith("/"):
            name = "/" + name
        if "/" in name[1:]:
            raise SegmentError(f"invalid segment name {name!r}: no '/' after the first character")
        m = ffi.new("lt_shm_map *")
        err = ffi.new("char[512]")
        rc = lib.lt_shm_open(name.encode(), m, err, 512)
        if rc != 0:
            raise SegmentError(_err(err))
        return cls(name, m, False)

    def close(self) -> None:
        for s in self._shards:
            s._free()
        self._shards.clear()
        if self._m is not None and self._m.base != ffi.NULL:
            lib.lt_shm_close(self._m)
        self._m = None

    def preallocate(self) -> None:
        """Allocate the pages of everything before the detail rings (which,
        like the ring pool after them, stay untouched until used), so that a
        later populating map only has to map them. Best effort: lack of
        memory shows up later, counted, as it would without this."""
        length = self.config["prefault_bytes"]
        try:
            fd = os.open(os.path.join(SHM_DIR, self.name.lstrip("/")),
                         os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError:
            pass
        finally:
            os.close(fd)

    def unlink(self) -> None:
        rc = lib.lt_shm_unlink(self.name.encode())
        if rc != 0 and rc != -2:  # already gone is fine
            raise SegmentError(f"cannot unlink {self.name}: {os.strerror(-rc)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _map(self):
        if self._m is None:
            raise SegmentError(f"segment {self.name} is closed")
        return self._m

    # -- control block ---------------------------------------------------
    @property
    def mode(self) -> str:
        return MODE_NAMES[lib.lt_shm_mode(self._map)]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise SegmentError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
        lib.lt_shm_set_mode(self._map, MODES[mode])

    @property
    def epoch(self) -> int:
        return lib.lt_shm_epoch(self._map)

    def set_shard_fallback(self, shard: int, on: bool) -> None:
        self._check_shard(shard)
        lib.lt_shm_set_shard_fallback(self._map, shard, 1 if on else 0)

    def shard_fallback(self) -> list[bool]:
        return [bool(lib.lt_shm_shard_fallback(self._map, k)) for k in range(self.config["shards"])]

    def shard_fallback_sources(self) -> list[str]:
        """Per shard: "off", "watchdog" (set_shard_fallback) or "agent" (the
        agent saw the shard's heartbeat go stale)."""
        return [FALLBACK_NAMES[lib.lt_shm_shard_fallback(self._map, k)]
                for k in range(self.config["shards"])]

    def mode_policy(self, stale_ms: float | None = None, auto: bool | None = None) -> dict:
        """The agent's own mode machine. ``auto``: whether the agent advances
        GLOBAL_ONLY -> DUAL_WRITE -> PER_THREAD_ONLY by itself (once every
        shard's heartbeat is fresh) and falls back per shard when a heartbeat
        that existed is older than ``stale_ms``. Without arguments it only
        reports; returns {"auto", "staleMs", "modeSinceNs"}."""
        cur = ffi.new("uint64_t[3]")
        lib.lt_shm_policy(self._map, cur)
        if stale_ms is not None or auto is not None:
            if stale_ms is not None and (not isinstance(stale_ms, (int, float)) or stale_ms <= 0):
                raise SegmentError(f"invalid stale_ms={stale_ms!r}: must be a positive number")
            lib.lt_shm_set_policy(self._map, int(cur[0]) if auto is None else (1 if auto else 0),
                                  0 if stale_ms is None else int(stale_ms * 1e6))
            lib.lt_shm_policy(self._map, cur)
        return {"auto": bool(cur[0]), "staleMs": cur[1] / 1e6, "modeSinceNs": int(cur[2])}

    def drop_policy(self, no_drop: bool | None = None, block_timeout_ms: float | None = None) -> dict:
        """What a thread does when no index ring is free: drop and count
        (default), or with ``no_drop`` wait for one up to ``block_timeout_ms``,
        then drop and count blocked_timeout. Threads pick it up at their next
        periodic check. Without arguments it only reports."""
        if block_timeout_ms is not None and (not isinstance(block_timeout_ms, (int, float))
                                             or block_timeout_ms <= 0):
            raise SegmentError(f"invalid block_timeout_ms={block_timeout_ms!r}: must be a positive number")
        cur = self.pool_stats()
        if no_drop is not None or block_timeout_ms is not None:
            lib.lt_shm_set_drop_policy(
                self._map, (1 if no_drop else 0) if no_drop is not None else int(cur["noDrop"]),
                0 if block_timeout_ms is None else int(block_timeout_ms * 1e6))
            cur = self.pool_stats()
        return {"noDrop": cur["noDrop"], "blockTimeoutMs": cur["blockTimeoutMs"]}

    def pool_stats(self) -> dict:
        """The drop policy, how long threads waited for rings, and the shared
        ring pool: its size, rings out now, the most out at once, borrows."""
        out = ffi.new("uint64_t[8]")
        lib.lt_shm_pool_stats(self._map, out)
        return {"noDrop": bool(out[0]), "blockTimeoutMs": out[1] / 1e6, "blockedMs": out[2] / 1e6,
                "blockedWaits": int(out[3]), "poolRings": int(out[4]), "poolOut": int(out[5]),
                "poolPeak": int(out[6]), "poolBorrows": int(out[7])}

    # -- flight recorder ---------------------------------------------------
    def set_detail(self, enabled: bool, stack_bytes: int = 128) -> None:
        """Switch the detail lane (registers + a stack copy per ENTRY/RETURN).
        Threads pick the change up at their next periodic check (at most
        1024 events or one ring later); off costs the hot path nothing."""
        if not isinstance(stack_bytes, int) or not 0 <= stack_bytes <= DETAIL_MAX_STACK:
            raise SegmentError(f"invalid stack_bytes={stack_bytes!r}: 0..{DETAIL_MAX_STACK}")
        lib.lt_shm_set_detail(self._map, 1 if enabled else 0, stack_bytes)

    @property
    def detail(self) -> dict:
        out = ffi.new("uint32_t[2]")
        lib.lt_shm_detail(self._map, out)
        return {"enabled": bool(out[0]), "stackBytes": int(out[1])}

    def enable_tsc_clock(self, choice: str = "auto", min_span_ms: float = 50.0) -> str:
        """Before the agent's init: let it stamp records with the TSC where
        the TSC is invariant here (native/include/lanetrace/tsc.h); choice
        "monotonic" keeps clock_gettime. The calibration spans creation to
        now, at least ``min_span_ms`` (waits for the rest). Drainers convert
        what they collect back to CLOCK_MONOTONIC ns. Returns the record
        clock, "tsc" or "monotonic"."""
        if choice not in ("auto", "monotonic"):
            raise SegmentError(f"invalid record clock {choice!r} (LANETRACE_CLOCK): use auto or monotonic")
        if choice == "monotonic":
            return self.clock
        return CLOCK_NAMES[lib.lt_tsc_enable(lib.lt_ctl_of(self._map), int(min_span_ms * 1e6))]

    @property
    def clock(self) -> str:
        conv = ffi.new("lt_tsc_conv *")
        lib.lt_tsc_conv_of(lib.lt_ctl_of(self._map), conv)
        return CLOCK_NAMES[conv.clock]

    def add_mark(self, ts_ns: int, kind: str, function_id: int = 0, tid: int = 0) -> bool:
        """Append a trigger mark. Returns False when the mark array is full
        (counted in drops()["marks_overflow"])."""
        if kind not in MARK_KINDS:
            raise SegmentError(f"unknown mark kind {kind!r}: one of {', '.join(MARK_KINDS)}")
        for k, v in (("ts_ns", ts_ns), ("function_id", function_id), ("tid", tid)):
            if not isinstance(v, int) or v < 0:
                raise SegmentError(f"invalid {k}={v!r}: must be a non-negative integer")
        return lib.lt_shm_add_mark(self._map, ts_ns, MARK_KINDS[kind], function_id, tid) == 0

    def marks(self, start: int = 0) -> list[dict]:
        """Marks in the order they were appended, from index ``start``:
        [{tsNs, kind, functionId, tid}]. The array holds MAX_MARKS marks for
        the target's life (more are counted in drops()["marks_overflow"]);
        a reader that polls can continue at start + len(previous result)
        without missing one (a mark still being written ends the list)."""
        if not isinstance(start, int) or start < 0:
            raise SegmentError(f"invalid start={start!r}")
        out = []
        while True:
            rows = ffi.new("lt_mark_row[]", 4096)
            n = lib.lt_shm_marks(self._map, start, rows, 4096)
            out += [{"tsNs": int(r.ts_ns), "kind": MARK_KIND_NAMES.get(r.kind, str(r.kind)),
                     "functionId": int(r.func_id), "tid": int(r.tid)} for r in (rows[i] for i in range(n))]
            if n < 4096:
                return out
            start += n

    def drops_by_thread(self) -> list[dict]:
        """Exact drops per thread and lane: [{tid, lane, reason, count}],
        sorted. Drops that could not be attributed (drop log full, or no
        thread: thread_exiting, alloc_failed, marks_overflow) appear only in
        drops()."""
        rows = ffi.new("lt_drop_row[]", 4096)
        n = lib.lt_shm_drop_log(self._map, rows, 4096)
        agg: dict[tuple, int] = {}
        for i in range(n):
            r = rows[i]
            if not r.count:
                continue
            key = (int(r.tid), LANE_NAMES[r.lane] if r.lane < 2 else str(r.lane),
                   DROP_REASONS[r.reason] if r.reason < len(DROP_REASONS) else str(r.reason))
            agg[key] = agg.get(key, 0) + int(r.count)
        return [{"tid": t, "lane": l, "reason": why, "count": c}
                for (t, l, why), c in sorted(agg.items())]

    def heartbeat(self, shard: int, ns: int | None = None) -> None:
        self._check_shard(shard)
        lib.lt_shm_heartbeat_set(self._map, shard, ns or 0)

    def heartbeats(self) -> list[int]:
        return [lib.lt_shm_heartbeat_get(self._map, k) for k in range(self.config["shards"])]

    def mark_target_exited(self) -> None:
        lib.lt_shm_mark_exited(self._map)

    @property
    def target_exited(self) -> bool:
        return bool(lib.lt_shm_target_exited(self._map))

    @property
    def agent_state(self) -> int:
        return lib.lt_shm_agent_state(self._map)

    def drops(self) -> dict[str, int]:
        out = ffi.new("uint64_t[16]")
        lib.lt_shm_drops(self._map, out)
        return {name: int(out[i]) for i, name in enumerate(DROP_REASONS)}

    def counters(self) -> dict:
        out = ffi.new("uint64_t[16]")
        lib.lt_shm_counters(self._map, out)
        res = {name: int(out[i]) for i, name in enumerate(COUNTER_NAMES)}
        census = ffi.new("uint32_t[4]")
        lib.lt_shm_slot_census(self._map, census)
        (res["slots_free"], res["slots_in_use"], res["slots_retiring"],
         res["slots_resetting"]) = (int(x) for x in census)
        res["mode"] = self.mode
        res["registry_epoch"] = self.epoch
        res["target_exited"] = self.target_exited
        return res

    # -- drain side --------------------------------------------------------
    def _check_shard(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < self.config["shards"]:
            raise SegmentError(f"shard {k!r} out of range: segment {self.name} has {self.config['shards']} shard(s)")

    def shard(self, k: int) -> "Shard":
        self._check_shard(k)
        d = lib.lt_drain_open(self._map, k)
        if d == ffi.NULL:
            raise SegmentError(f"cannot open shard {k} of {self.name}: out of memory")
        s = Shard(self, k, d)
        self._shards.append(s)
        return s

    def _attach_producer(self, tid: int):
        """A native producer handle on this segment (tests and tools): returns
        an ``lt_producer *`` already holding a slot, or raises SegmentError."""
        p = ffi.new("lt_producer *")
        if lib.lt_prod_claim(p, lib.lt_ctl_of(self._map), tid) != 0:
            raise SegmentError("no free registry slot")
        return p


class Shard:
    """Drain cursor of shard k (process-local; one drainer per shard)."""

    def __init__(self, seg: TargetSegment, k: int, d):
        self.segment = seg
        self.index = k
        self._d = d
        self._buf = None
        self._buf_size = 0

    def _drain(self):
        if self._d is None:
            raise SegmentError(f"shard {self.index} of {self.segment.name} is closed")
        return self._d

    def _buffer(self, max_bytes: int):
        if self._buf_size < max_bytes:
            self._buf = ffi.new("char[]", max_bytes)
            self._buf_size = max_bytes
        return self._buf

    def collect_batch(self, max_bytes: int = 4 << 20) -> tuple[bytes, int]:
        """New committed index records (a multiple of 32 bytes: this shard's
        per-thread lanes, then a share of the global lane); never blocks.
        Returns (data, token); commit(token) once the writer acked it. An
        empty batch gets token 0 (committing it does nothing; what it moved
        rides with the newest batch in flight, or is applied at once)."""
        if max_bytes < RECORD_SIZE:
            raise SegmentError(f"max_bytes={max_bytes} is smaller than one record ({RECORD_SIZE})")
        d = self._drain()
        buf = self._buffer(max_bytes)
        tok = ffi.new("uint64_t *")
        n = lib.lt_drain_collect_batch(d, buf, max_bytes, tok)
        return ffi.buffer(buf, n)[:], int(tok[0])

    def collect_batch_into(self, buf: bytearray) -> tuple[int, int]:
        """collect_batch() straight into ``buf`` (no copy through a bytes
        object): returns (bytes written, token). The caller keeps ``buf``
        untouched until the batch is acked."""
        if len(buf) < RECORD_SIZE:
            raise SegmentError(f"buffer of {len(buf)} bytes is smaller than one record ({RECORD_SIZE})")
        d = self._drain()
        tok = ffi.new("uint64_t *")
        dst = ffi.from_buffer(buf)
        try:
            n = lib.lt_drain_collect_batch(d, dst, len(buf), tok)
        finally:
            ffi.release(dst)
        return int(n), int(tok[0])

    def collect(self, max_bytes: int = 4 << 20) -> bytes:
        """collect_batch() without the token (commit() then acks everything)."""
        return self.collect_batch(max_bytes)[0]

    def commit(self, token: int | None = None) -> int:
        """Batches up to and including ``token`` (None: everything collected
        so far) are acked by the writer: their rings go back to the
        producers, retired slots are freed, global cells released. Returns
        the number of slots freed."""
        d = self._drain()
        if token is None:
            return lib.lt_drain_commit(d)
        if not isinstance(token, int) or token < 0:
            raise SegmentError(f"invalid token {token!r}")
        return lib.lt_drain_commit_upto(d, token)

    @property
    def pending_batches(self) -> int:
        """Batches collected and not yet committed."""
        return int(lib.lt_drain_pending(self._drain()))

    def collect_detail(self, max_bytes: int = 8 << 20) -> bytes:
        """Concatenated lt_detail_record (whole records): filled detail rings
        and the published part of active ones. The rings go back to the
        producers right away, so the caller holds the only copy."""
        ring = self.segment.config["detail_ring_bytes"]
        if max_bytes < ring:
            raise SegmentError(f"max_bytes={max_bytes} is smaller than one detail ring ({ring})")
        d = self._drain()
        buf = self._buffer(max_bytes)
        n = lib.lt_drain_collect_detail(d, buf, max_bytes)
        return ffi.buffer(buf, n)[:]

    def idle_and_complete(self) -> bool:
        return bool(lib.lt_drain_idle_complete(self._drain()))

    def _free(self):
        if self._d is not None:
            lib.lt_drain_free(self._d)
            self._d = None

    def close(self):
        self._free()
        try:
            self.segment._shards.remove(self)
        except ValueError:
            pass


# -- gc helpers ---------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_segments(session: str | None = None) -> list[dict]:
    """Segments in /dev/shm: [{name, session, pid, alive, size}], sorted by name."""
    out = []
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return out
    for fn in sorted(entries):
        m = _NAME_RE.match(fn)
        if not m:
            continue
        if session is not None and m.group("session") != session:
            continue
        pid = int(m.group("pid"))
        try:
            size = os.stat(os.path.join(SHM_DIR, fn)).st_size
        except FileNotFoundError:
            continue
        out.append({"name": "/" + fn, "session": m.group("session"), "pid": pid,
                    "alive": _pid_alive(pid), "size": size})
    return out


def remove_stale_segments(session: str | None = None, dry_run: bool = False) -> list[str]:
    """Unlink segments whose target pid is dead, and segments left half-built
    by a creator that died; returns their names."""
    removed = []
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        entries = []
    for fn in entries:
        m = _BUILD_RE.match(fn)
        if not m or (session is not None and m.group("session") != session) or _pid_alive(int(m.group("creator"))):
            continue
        if not dry_run:
            rc = lib.lt_shm_unlink(("/" + fn).encode())
            if rc != 0 and rc != -2:
                continue
        removed.append("/" + fn)
    for seg in list_segments(session):
        if seg["alive"]:
            continue
        if not dry_run:
            rc = lib.lt_shm_unlink(seg["name"].encode())
            if rc != 0 and rc != -2:
                continue
        removed.append(seg["name"])
    return removed


def parse_records(data: bytes):
    """Decode collected bytes into a numpy structured array (tests, tools)."""
    import numpy as np
    dt = np.dtype([("ts_ns", "<u8"), ("seq", "<u8"), ("tid", "<u4"), ("func_id", "<u4"),
                   ("kind", "<u2"), ("depth", "<u2"), ("flags", "<u4")])
    return np.frombuffer(data, dtype=dt)


def parse_detail(data: bytes) -> list[dict]:
    """Decode collected detail bytes (tests, tools): [{tsNs, seq, tid,
    functionId, kind, regs: [..reg_count], stack: bytes}]."""
    import struct
    out = []
    off = 0
    hdr = struct.Struct("<QQIIHHI8QII")
    while off + DETAIL_HEADER_SIZE <= len(data):
        (ts, seq, tid, fid, kind, nregs, size, *rest) = hdr.unpack_from(data, off)
        regs, stack_len = rest[:8], rest[8]
        if size < DETAIL_HEADER_SIZE or off + size > len(data):
            raise ValueError(f"corrupt detail record at offset {off}: size {size}")
        stack = data[off + DETAIL_HEADER_SIZE: off + DETAIL_HEADER_SIZE + stack_len]
        out.append({"tsNs": ts, "seq": seq, "tid": tid, "functionId": fid, "kind": kind,
                    "regs": list(regs[:nregs]), "stack": bytes(stack), "size": size})
        off += size
    if off != len(data):
        raise ValueError(f"trailing {len(data) - off} bytes after the last detail record")
    return out
