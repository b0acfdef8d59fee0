"""The target's shared ring pool and the no-drop policy, with the real
producer code (native/agent/lanes.c) writing and the real drain code
(native/src/drain.c) collecting."""
import struct
import threading

from lanetrace._native import ffi, lib
from lanetrace.core.shm import parse_records

RECS_PER_RING = 1024 // 32


def emit(p, n, fid=1):
    for i in range(n):
        lib.lt_prod_emit(p, lib.lt_now_ns(), fid, 1 if i % 2 == 0 else 2, 0)


def seqs_of(data, tid):
    return [int(r["seq"]) for r in parse_records(data) if int(r["tid"]) == tid]


def drain_all(shard):
    chunks = []
    while True:
        b = shard.collect(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        shard.commit()


def test_pool__lane_needs_more_than_its_own_rings__then_borrows_and_returns_them_at_commit(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2, pool_rings=6)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(9)
    emit(p, 8 * RECS_PER_RING + 5)  # 2 own + 6 pool rings, then 5 dropped
    stats = seg.pool_stats()
    assert stats["poolOut"] == 6 and stats["poolPeak"] == 6 and stats["poolBorrows"] == 6
    assert seg.drops()["pool_exhausted"] == 5
    assert seqs_of(drain_all(shard), 9) == list(range(1, 8 * RECS_PER_RING + 1))
    # the full last ring was submitted when the first record found no room
    assert seg.pool_stats()["poolOut"] == 0
    emit(p, 7 * RECS_PER_RING)
    assert seg.drops()["pool_exhausted"] == 5
    first_new = 8 * RECS_PER_RING + 5 + 1
    assert seqs_of(drain_all(shard), 9) == list(range(first_new, first_new + 7 * RECS_PER_RING))


def test_pool__retired_thread_held_a_pool_ring__then_slot_reset_gives_it_back(segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=2, pool_rings=4)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(3)
    emit(p, 2 * RECS_PER_RING + 1)  # the third ring, active at exit, is borrowed
    lib.lt_prod_retire(p)
    assert len(seqs_of(drain_all(shard), 3)) == 2 * RECS_PER_RING + 1
    shard.collect(1 << 20)  # sees the retired slot complete; freed at its commit
    shard.commit()
    assert seg.counters()["slots_freed"] == 1
    assert seg.pool_stats()["poolOut"] == 0


def test_pool__retired_with_borrowed_rings_submitted__then_slot_reset_gives_every_one_back(
        segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=2, pool_rings=4)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(4)
    emit(p, 5 * RECS_PER_RING + 1)  # 2 own + 3 borrowed rings submitted, a 4th borrowed active
    assert seg.pool_stats()["poolOut"] == 4
    lib.lt_prod_retire(p)
    # one batch holds everything and the retirement: its commit resets the slot
    assert len(seqs_of(shard.collect(1 << 20), 4)) == 5 * RECS_PER_RING + 1
    shard.commit()
    shard.collect(1 << 20)
    shard.commit()
    assert seg.counters()["slots_freed"] == 1
    assert seg.pool_stats()["poolOut"] == 0
    q = seg._attach_producer(5)  # the whole pool is usable again
    emit(q, 6 * RECS_PER_RING)
    assert seg.drops()["pool_exhausted"] == 0


def test_pool__two_threads_share_a_small_pool__then_every_record_delivered_or_counted(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2, pool_rings=3)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    a, b = seg._attach_producer(1), seg._attach_producer(2)
    emit(a, 5 * RECS_PER_RING)  # its own 2 rings and all 3 of the pool
    emit(b, 3 * RECS_PER_RING)  # only its own 2 rings left
    data = drain_all(shard)
    assert seqs_of(data, 1) == list(range(1, 5 * RECS_PER_RING + 1))
    assert seqs_of(data, 2) == list(range(1, 2 * RECS_PER_RING + 1))
    assert seg.drops()["pool_exhausted"] == RECS_PER_RING


def test_no_drop__drainer_returns_rings_while_producer_waits__then_nothing_dropped(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    seg.drop_policy(no_drop=True, block_timeout_ms=30_000)
    shard = seg.shard(0)
    p = seg._attach_producer(7)
    n = 40 * RECS_PER_RING  # 20 times what the lane holds
    done = threading.Event()
    got = []

    def drainer():
        while True:
            finished = done.is_set()
            b = shard.collect(1 << 20)
            if b:
                got.append(b)
                shard.commit()
            elif finished:
                return

    t = threading.Thread(target=drainer)
    t.start()
    try:
        emit(p, n)  # cffi releases the GIL: the drainer runs while emit waits
    finally:
        done.set()
        t.join()
    got.append(drain_all(shard))
    assert seqs_of(b"".join(got), 7) == list(range(1, n + 1))
    assert sum(seg.drops().values()) == 0
    assert seg.pool_stats()["blockedWaits"] > 0


def test_no_drop__no_drainer__then_one_timeout_and_the_rest_dropped_as_blocked_timeout(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    seg.drop_policy(no_drop=True, block_timeout_ms=20)
    assert seg.drop_policy() == {"noDrop": True, "blockTimeoutMs": 20.0}
    shard = seg.shard(0)
    p = seg._attach_producer(8)
    emit(p, 2 * RECS_PER_RING + 50)
    drops = seg.drops()
    assert drops["blocked_timeout"] == 50 and drops["pool_exhausted"] == 0
    assert seg.drops_by_thread() == [{"tid": 8, "lane": "index", "reason": "blocked_timeout", "count": 50}]
    # rings free again: the thread records (and would wait) again
    assert seqs_of(drain_all(shard), 8) == list(range(1, 2 * RECS_PER_RING + 1))
    emit(p, 3)
    assert seqs_of(drain_all(shard), 8) == [2 * RECS_PER_RING + 51, 2 * RECS_PER_RING + 52,
                                            2 * RECS_PER_RING + 53]
    assert seg.drops()["blocked_timeout"] == 50


def mapped_pages(seg):
    """Pages of the segment mapped in this process (/proc/self/pagemap bit 63)."""
    base, size = int(ffi.cast("uintptr_t", seg._map.base)), seg._map.size
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(base // 4096 * 8)
        entries = f.read(size // 4096 * 8)
    return sum(1 for (e,) in struct.iter_unpack("<Q", entries) if e >> 63)


def test_pool__ring_borrowed_first_time__then_all_its_pages_are_mapped_before_they_are_written(
        segments, session_id):
    ring_bytes = 16384
    recs = ring_bytes // 32
    seg = segments(session_id, slots=1, shards=1, ring_bytes=ring_bytes, rings_per_lane=2, pool_rings=4)
    seg.set_mode("PER_THREAD_ONLY")
    p = seg._attach_producer(6)
    emit(p, 2 * recs)  # the lane's own rings, full
    before = mapped_pages(seg)
    emit(p, 1)  # borrows a pool ring and writes one record at its start
    assert seg.pool_stats()["poolBorrows"] == 1
    assert mapped_pages(seg) - before == ring_bytes // 4096
    emit(p, recs - 1)  # the rest of the ring takes no fault: nothing new is mapped
    assert mapped_pages(seg) - before == ring_bytes // 4096
    assert seqs_of(drain_all(seg.shard(0)), 6) == list(range(1, 3 * recs + 1))
