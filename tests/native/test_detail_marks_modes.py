"""Shared-memory lanes without a target process: the
detail lane (records, stack copy, overwrite-oldest backpressure), marks,
per-thread drop accounting, batches in flight, the agent's mode machine as
run by the real producer code (native/agent/lanes.c) through cffi."""
import pytest

from lanetrace._native import ffi, lib
from lanetrace.core.shm import MAX_MARKS, SegmentError, TargetSegment, parse_detail, parse_records

ENTRY, RETURN = 1, 2


def detail_src(regs, stack=b""):
    ds = ffi.new("lt_detail_src *")
    keep = (ffi.new("uint64_t[]", list(regs) or [0]), ffi.new("uint8_t[]", stack or b"\0"))
    ds.regs = keep[0]
    ds.nregs = len(regs)
    ds.stack = keep[1] if stack else ffi.NULL
    ds.stack_len = len(stack)
    return ds, keep


def emit_detail(p, n, fid=1, stack=b""):
    for i in range(n):
        ds, _keep = detail_src([i, i + 1, i + 2], stack)
        lib.lt_prod_emit_detail(p, lib.lt_now_ns(), fid, ENTRY if i % 2 == 0 else RETURN, 0, ds)


def emit(p, n, fid=1):
    for i in range(n):
        lib.lt_prod_emit(p, lib.lt_now_ns(), fid, ENTRY if i % 2 == 0 else RETURN, 0)


def seqs(data):
    return [int(s) for s in parse_records(data)["seq"]]


def test_detail_record__stack_lengths_0_5_512_and_600__then_copied_padded_and_clamped(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, detail_ring_bytes=8192)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 0)
    shard = seg.shard(0)
    p = seg._attach_producer(41)
    stack = bytes(range(256)) * 3
    for n in (0, 5, 512, 600):
        ds, _keep = detail_src([7, 8], stack[:n])
        lib.lt_prod_emit_detail(p, 1000 + n, 3, RETURN, 0, ds)
    recs = parse_detail(shard.collect_detail())
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert [len(r["stack"]) for r in recs] == [0, 5, 512, 512]
    assert [r["size"] for r in recs] == [104, 104 + 8, 104 + 512, 104 + 512]
    assert recs[1]["stack"] == stack[:5] and recs[3]["stack"] == stack[:512]
    assert all(r["regs"] == [7, 8] and r["kind"] == RETURN and r["tid"] == 41 for r in recs)
    # the index record with the same seq exists too
    assert seqs(shard.collect()) == [1, 2, 3, 4]
    with pytest.raises(SegmentError, match="stack_bytes"):
        seg.set_detail(True, 513)


def test_detail_lane__off__then_no_detail_records_and_no_detail_counters(segments, session_id):
    seg = segments(session_id, slots=2, shards=1)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(5)
    emit_detail(p, 20)
    assert shard.collect_detail() == b""
    assert len(seqs(shard.collect())) == 20
    assert seg.counters()["detail_records"] == 0 and seg.detail == {"enabled": False, "stackBytes": 128}


def test_detail_lane__pool_full_without_drainer__then_oldest_ring_overwritten_and_counted(segments, session_id):
    # 4096-byte rings hold 39 stackless records (104 B); 2 rings
    seg = segments(session_id, slots=2, shards=1, detail_ring_bytes=4096, detail_rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 0)
    shard = seg.shard(0)
    p = seg._attach_producer(9)
    per_ring = 4096 // 104
    emit_detail(p, 5 * per_ring)  # rings: 1 2 | 3 overwrites 1 | 4 overwrites 2 | 5 overwrites 3
    got = [r["seq"] for r in parse_detail(shard.collect_detail())]
    # the newest data survives: ring 4 (submitted) and ring 5 (active)
    assert got == list(range(3 * per_ring + 1, 5 * per_ring + 1))
    d = seg.drops()
    assert d["detail_overwritten"] == 3 * per_ring and d["detail_pool_exhausted"] == 0
    assert seg.drops_by_thread() == [{"tid": 9, "lane": "detail", "reason": "detail_overwritten",
                                      "count": 3 * per_ring}]
    assert seg.counters()["detail_rings_overwritten"] == 3
    # the index lane (default pool) lost nothing
    assert seqs(shard.collect()) == list(range(1, 5 * per_ring + 1))


def test_detail_lane__active_ring_partly_collected_then_overwritten__then_only_uncollected_counted(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=1, detail_ring_bytes=4096, detail_rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 0)
    shard = seg.shard(0)
    p = seg._attach_producer(9)
    per_ring = 4096 // 104
    emit_detail(p, 10)
    first = [r["seq"] for r in parse_detail(shard.collect_detail())]
    assert first == list(range(1, 11))  # from the active ring, which stays active
    emit_detail(p, 3 * per_ring - 10)  # ring 1 (10 already delivered), 2, then 3 overwrites 1
    rest = [r["seq"] for r in parse_detail(shard.collect_detail())]
    assert rest == list(range(per_ring + 1, 3 * per_ring + 1))
    assert seg.drops()["detail_overwritten"] == per_ring - 10  # never counts what was delivered


def test_detail_lane__retired_thread_with_uncollected_detail__then_slot_freed_only_after_detail_drained(
        segments, session_id):
    seg = segments(session_id, slots=1, shards=1)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 16)
    shard = seg.shard(0)
    p = seg._attach_producer(3)
    emit_detail(p, 4, stack=b"x" * 16)
    lib.lt_prod_retire(p)
    assert seqs(shard.collect()) == [1, 2, 3, 4]
    assert shard.commit() == 0  # detail data still waiting: the slot must not be reset
    assert [r["seq"] for r in parse_detail(shard.collect_detail())] == [1, 2, 3, 4]
    assert shard.collect() == b""  # sees the slot complete: freed (no data, so no ack needed)
    shard.commit()
    c = seg.counters()
    assert (c["slots_free"], c["slots_freed"]) == (1, 1)


def test_marks__appended_by_several_writers__then_in_order_and_overflow_counted(segments, session_id):
    seg = segments(session_id, slots=2, shards=1)
    other = TargetSegment.open(seg.name)
    try:
        assert seg.add_mark(100, "time")
        assert other.add_mark(200, "crash", tid=77)
        assert seg.add_mark(150, "symbol", function_id=5, tid=8)
        assert seg.marks() == [
            {"tsNs": 100, "kind": "time", "functionId": 0, "tid": 0},
            {"tsNs": 200, "kind": "crash", "functionId": 0, "tid": 77},
            {"tsNs": 150, "kind": "symbol", "functionId": 5, "tid": 8}]
        for i in range(MAX_MARKS - 3):
            assert seg.add_mark(1000 + i, "manual")
        assert not seg.add_mark(5, "manual") and not other.add_mark(6, "manual")
        assert len(other.marks()) == MAX_MARKS and other.marks()[-1]["tsNs"] == 1000 + MAX_MARKS - 4
        assert [m["tsNs"] for m in seg.marks(start=1)[:2]] == [200, 150]  # polling from an index
        assert seg.drops()["marks_overflow"] == 2
        with pytest.raises(SegmentError, match="unknown mark kind"):
            seg.add_mark(1, "sometimes")
    finally:
        other.close()


def test_drops_by_thread__pool_exhausted_and_no_slot_threads__then_exact_per_thread_and_lane(
        segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    a = seg._attach_producer(1)
    b = ffi.new("lt_producer *")
    assert lib.lt_prod_claim(b, lib.lt_ctl_of(seg._m), 2) == -1
    emit(a, 70)  # 64 fit
    emit(b, 3)
    assert seg.drops_by_thread() == [
        {"tid": 1, "lane": "index", "reason": "pool_exhausted", "count": 6},
        {"tid": 2, "lane": "index", "reason": "no_slot", "count": 3}]
    d = seg.drops()
    assert d["pool_exhausted"] == 6 and d["no_slot"] == 3
    assert seqs(shard.collect()) == list(range(1, 65))


def test_shard_commit__three_batches_in_flight_commit_second_then_restart__then_only_third_resent(
        segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=4)
    seg.set_mode("PER_THREAD_ONLY")
    p = seg._attach_producer(5)
    emit(p, 96)
    first = seg.shard(0)
    batches = [first.collect_batch(32 * 32) for _ in range(3)]
    assert [seqs(d) for d, _ in batches] == [list(range(1, 33)), list(range(33, 65)), list(range(65, 97))]
    assert len({t for _, t in batches}) == 3 and first.pending_batches == 3
    first.commit(batches[1][1])
    assert first.pending_batches == 1
    emit(p, 64)  # the two acked rings are free again: no drops
    assert seg.drops()["pool_exhausted"] == 0
    first.close()  # "crash" with batch 3 unacked
    second = seg.shard(0)
    assert seqs(second.collect()) == list(range(65, 161))
    second.commit()


def test_global_lane__two_batches_in_flight_first_committed__then_only_its_cells_released(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, global_records=16)
    assert seg.mode == "GLOBAL_ONLY"
    s = seg.shard(0)
    p = seg._attach_producer(11)
    emit(p, 10)
    a, ta = s.collect_batch()
    emit(p, 6)
    b, tb = s.collect_batch()
    assert seqs(a) == list(range(1, 11)) and seqs(b) == list(range(11, 17))
    emit(p, 1)
    assert seg.drops()["global_full"] == 1  # all 16 cells held by unacked batches
    s.commit(ta)
    emit(p, 10)  # the 10 cells of batch a are free again
    assert seg.drops()["global_full"] == 1
    c, tc = s.collect_batch()
    assert seqs(c) == list(range(18, 28))
    s.commit(tc)
    assert s.pending_batches == 0


def test_mode_machine__heartbeats_fresh_then_stale_then_fresh__then_global_dual_per_thread_and_agent_fallback(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=2)
    seg.mode_policy(stale_ms=10_000)
    p = seg._attach_producer(4)
    now = lib.lt_now_ns()
    emit(p, 1)
    assert seg.mode == "GLOBAL_ONLY"  # no heartbeat yet: drainers not up
    seg.heartbeat(0, now)
    seg.heartbeat(1, now)
    emit(p, 1024)  # one periodic check
    assert seg.mode == "DUAL_WRITE"
    emit(p, 1024)  # no beat since DUAL_WRITE began: stay
    assert seg.mode == "DUAL_WRITE"
    seg.heartbeat(0)
    seg.heartbeat(1)
    emit(p, 1024)
    assert seg.mode == "PER_THREAD_ONLY"
    seg.mode_policy(stale_ms=1)
    stale = lib.lt_now_ns() - 5_000_000
    seg.heartbeat(0, stale)
    seg.heartbeat(1, stale)
    emit(p, 1024)
    assert seg.shard_fallback_sources() == ["agent", "agent"]
    seg.mode_policy(stale_ms=10_000)
    seg.heartbeat(0)
    seg.heartbeat(1)
    emit(p, 1024)
    assert seg.shard_fallback_sources() == ["off", "off"]
    c = seg.counters()
    assert (c["mode_transitions"], c["fallback_events"], c["agent_fallbacks"], c["fallback_clears"]) == (2, 2, 2, 2)
    assert sum(seg.drops().values()) == 0


def test_mode_machine__drainers_up_before_the_first_record__then_straight_to_per_thread_lanes(
        segments, session_id):
    seg = segments(session_id, slots=2, shards=2)
    seg.mode_policy(stale_ms=10_000)
    seg.heartbeat(0)
    seg.heartbeat(1)
    p = seg._attach_producer(4)
    emit(p, 10)
    assert seg.mode == "PER_THREAD_ONLY"
    c = seg.counters()
    assert (c["mode_transitions"], c["global_records"]) == (1, 0)
    data = b"".join(seg.shard(k).collect() for k in range(2))
    assert seqs(data) == list(range(1, 11))


def test_mode_machine__watchdog_fallback_with_fresh_heartbeat__then_agent_leaves_it_set(segments, session_id):
    seg = segments(session_id, slots=2, shards=1)
    seg.set_mode("PER_THREAD_ONLY")
    seg.heartbeat(0)
    seg.set_shard_fallback(0, True)
    p = seg._attach_producer(4)
    emit(p, 2048)
    assert seg.shard_fallback_sources() == ["watchdog"]
    assert seg.counters()["global_records"] >= 1024  # routed to the global lane
    seg.set_shard_fallback(0, False)
    assert seg.counters()["fallback_clears"] == 1


def test_detail_lane__4_hot_producer_threads_tiny_pools_drained_concurrently__then_intact_records_and_exact_accounting(
        segments, session_id, producer_bin):
    import struct
    import subprocess
    import threading
    seg = segments(session_id, slots=8, shards=2, ring_bytes=1024, rings_per_lane=2,
                   detail_ring_bytes=4096, detail_rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 24)
    events = 20000
    proc = subprocess.Popen([producer_bin, seg.name, "4", "4", str(events), "900", "noretire", "detail"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index, detail = [], []
    stop = threading.Event()

    def run(shard):
        while True:
            data, tok = shard.collect_batch(1 << 16)
            index.append(data)
            shard.commit(tok)
            d = shard.collect_detail(1 << 16)
            detail.append(d)
            if not data and not d and stop.is_set() and shard.idle_and_complete():
                return

    ts = [threading.Thread(target=run, args=(seg.shard(k),)) for k in range(2)]
    for t in ts:
        t.start()
    out, err = proc.communicate(timeout=120)
    seg.mark_target_exited()
    stop.set()
    for t in ts:
        t.join(120)
    assert proc.returncode == 0, err
    drops = {}
    for row in seg.drops_by_thread():
        drops[(row["tid"], row["lane"])] = drops.get((row["tid"], row["lane"]), 0) + row["count"]
    got = {}
    for r in parse_records(b"".join(index)):
        got.setdefault(int(r["tid"]), []).append(int(r["seq"]))
    dgot = {}
    for d in parse_detail(b"".join(detail)):
        seq = d["seq"]
        # a torn or misplaced copy would not carry its own seq everywhere
        assert d["regs"] == [seq, d["tid"], ~seq & (2 ** 64 - 1)]
        assert d["stack"] == struct.pack("<3Q", seq, seq * 3, seq * 5)
        dgot.setdefault(d["tid"], []).append(seq)
    for tid in range(900, 904):
        s, ds = got.get(tid, []), dgot.get(tid, [])
        assert len(set(s)) == len(s) and len(set(ds)) == len(ds)
        assert len(s) + drops.get((tid, "index"), 0) == events
        assert len(ds) + drops.get((tid, "detail"), 0) == events
        assert set(ds) <= set(range(1, events + 1))
