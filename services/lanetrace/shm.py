"""Python view of a target's shared-memory segment (``/lanetrace-<session>-<pid>-lanes``).

The layout, ownership rules and memory ordering live in
``native/include/lanetrace/shm.h``; this module is a thin cffi wrapper:

* the injector ``create()``s a segment per target, sets the mode, marks the
  target exited, reads drop counters for the manifest;
* each drainer ``open()``s it and drains its ``shard(k)``: ``collect()`` copies
  new committed records out in C (one memcpy per ring span), ``commit()``
  returns what the writer acked to the producers;
* ``lanetrace gc`` uses ``list_segments()`` / ``remove_stale_segments()``.
"""
from __future__ import annotations

import os
import re

from lanetrace._native import ffi, lib

RECORD_SIZE = 32
SHM_DIR = "/dev/shm"
MAX_SHARDS = 16

MODES = {"GLOBAL_ONLY": 0, "DUAL_WRITE": 1, "PER_THREAD_ONLY": 2}
MODE_NAMES = {v: k for k, v in MODES.items()}

# index == LT_DROP_* in shm.h
DROP_REASONS = ("no_slot", "pool_exhausted", "depth_overflow", "global_full",
                "thread_exiting", "alloc_failed")
# index == LT_CTR_* in shm.h
COUNTER_NAMES = ("mode_transitions", "fallback_events", "threads_registered",
                 "threads_retired", "slots_freed", "rings_submitted",
                 "reentrant_skips", "ignored_threads", "global_records",
                 "unwound_frames")

_SESSION_RE = re.compile(r"^[A-Za-z0-9._]+(?:-[A-Za-z0-9._]+)*$")
_NAME_RE = re.compile(r"^/?lanetrace-(?P<session>.+)-(?P<pid>\d+)-lanes$")


class SegmentError(Exception):
    """A segment could not be created, opened or used (message says why)."""


def segment_name(session_id: str, pid: int) -> str:
    return f"/lanetrace-{session_id}-{int(pid)}-lanes"


def _err(buf) -> str:
    return ffi.string(buf).decode("utf-8", "replace")


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
        }

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def create(cls, session_id: str, pid: int, slots: int = 64, shards: int = 1,
               ring_bytes: int = 65536, rings_per_lane: int = 8,
               global_records: int = 16384) -> "TargetSegment":
        if not isinstance(session_id, str) or not _SESSION_RE.match(session_id) or len(session_id) > 63:
            raise SegmentError(f"invalid session id {session_id!r}: use letters, digits, '.', '_', '-' (max 63)")
        for k, v in (("slots", slots), ("shards", shards), ("ring_bytes", ring_bytes),
                     ("rings_per_lane", rings_per_lane), ("global_records", global_records), ("pid", pid)):
            if not isinstance(v, int) or v <= 0:
                raise SegmentError(f"invalid {k}={v!r}: must be a positive integer")
        name = segment_name(session_id, pid)
        cfg = ffi.new("lt_shm_config *", {
            "slot_count": slots, "shard_count": shards, "ring_bytes": ring_bytes,
            "rings_per_lane": rings_per_lane, "global_records": global_records})
        m = ffi.new("lt_shm_map *")
        err = ffi.new("char[512]")
        rc = lib.lt_shm_create(name.encode(), cfg, pid, session_id.encode(), m, err, 512)
        if rc != 0:
            raise SegmentError(_err(err))
        return cls(name, m, True)

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
        out = ffi.new("uint64_t[8]")
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

    def collect(self, max_bytes: int = 4 << 20) -> bytes:
        """New committed records (a multiple of 32 bytes); never blocks."""
        if max_bytes < RECORD_SIZE:
            raise SegmentError(f"max_bytes={max_bytes} is smaller than one record ({RECORD_SIZE})")
        d = self._drain()
        if self._buf_size < max_bytes:
            self._buf = ffi.new("char[]", max_bytes)
            self._buf_size = max_bytes
        n = lib.lt_drain_collect(d, self._buf, max_bytes)
        return ffi.buffer(self._buf, n)[:]

    def commit(self) -> int:
        """Everything collected so far is acked by the writer. Returns slots freed."""
        return lib.lt_drain_commit(self._drain())

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
    """Unlink segments whose target pid is dead; returns their names."""
    removed = []
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
