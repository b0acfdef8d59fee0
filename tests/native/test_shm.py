"""Shared-memory lanes: segment lifecycle, producer/drainer protocol, slot
reuse and drop accounting, with the real producer code
(native/agent/lanes.c) writing."""
import os
import subprocess
import threading

import pytest

from lanetrace._native import ffi, lib
from lanetrace.core.shm import (SegmentError, TargetSegment, list_segments, parse_records,
                           remove_stale_segments, segment_name)


def emit(p, n, fid=1):
    for i in range(n):
        lib.lt_prod_emit(p, lib.lt_now_ns(), fid, 1 if i % 2 == 0 else 2, 0)


def by_tid(data):
    recs = parse_records(data)
    out = {}
    for r in recs:
        out.setdefault(int(r["tid"]), []).append(int(r["seq"]))
    return out


def drain_all(shard, max_bytes=1 << 20):
    chunks = []
    while True:
        b = shard.collect(max_bytes)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        shard.commit()


def test_segment_create__then_open_sees_same_config_and_control_state(segments, session_id):
    seg = segments(session_id, 4242, slots=8, shards=2, ring_bytes=4096, rings_per_lane=4)
    assert seg.name == segment_name(session_id, 4242)
    assert oct(os.stat("/dev/shm" + seg.name).st_mode & 0o777) == "0o600"
    other = TargetSegment.open(seg.name)
    try:
        assert other.pid == 4242 and other.session_id == session_id
        assert other.config["slots"] == 8 and other.config["shards"] == 2
        assert other.config["ring_bytes"] == 4096 and other.config["rings_per_lane"] == 4
        assert other.mode == "GLOBAL_ONLY"
        seg.set_mode("PER_THREAD_ONLY")
        seg.heartbeat(1, 12345)
        seg.mark_target_exited()
        assert other.mode == "PER_THREAD_ONLY"
        assert other.heartbeats() == [0, 12345]
        assert other.target_exited is True
        assert other.counters()["mode_transitions"] == 1
        assert other.counters()["slots_free"] == 8
        with pytest.raises(SegmentError, match="unknown mode"):
            other.set_mode("FAST")
        with pytest.raises(SegmentError, match="out of range"):
            other.shard(2)
    finally:
        other.close()


def test_segment_open__missing_name__then_segment_error_names_it(session_id):
    name = segment_name(session_id, 1)
    with pytest.raises(SegmentError, match=f"cannot open shared memory {name}: No such file"):
        TargetSegment.open(name)


def test_segment_open__foreign_file__then_bad_magic_error(session_id):
    path = f"/dev/shm/lanetrace-{session_id}-1-lanes"
    with open(path, "wb") as f:
        f.write(b"x" * 65536)
    try:
        with pytest.raises(SegmentError, match="bad magic"):
            TargetSegment.open(path[len("/dev/shm"):])
    finally:
        os.unlink(path)


def test_segment_create__existing_name_or_bad_config__then_segment_error(segments, session_id):
    segments(session_id, 7)
    with pytest.raises(SegmentError, match="File exists"):
        TargetSegment.create(session_id, 7)
    with pytest.raises(SegmentError, match="invalid segment config"):
        TargetSegment.create(session_id, 8, ring_bytes=1000)
    with pytest.raises(SegmentError, match="invalid session id"):
        TargetSegment.create("a/b", 9)
    assert not os.path.exists(f"/dev/shm/lanetrace-{session_id}-8-lanes")


def test_shard_collect__partial_active_ring__then_records_visible_before_ring_full(segments, session_id):
    seg = segments(session_id, slots=4, shards=1, ring_bytes=4096, rings_per_lane=4)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(501)
    emit(p, 5)
    data = shard.collect()
    assert by_tid(data) == {501: [1, 2, 3, 4, 5]}
    assert shard.collect() == b""  # nothing new: no duplicates from the active ring
    emit(p, 3)
    assert by_tid(shard.collect()) == {501: [6, 7, 8]}
    recs = parse_records(data)
    assert list(recs["kind"]) == [1, 2, 1, 2, 1]
    assert all(recs["ts_ns"][i] <= recs["ts_ns"][i + 1] for i in range(4))


def test_shard_commit__collect_and_commit_between_rounds__then_rings_reused_without_drops(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=3)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(77)
    seen = []
    for _ in range(20):  # 20 x 40 records through a pool of 3 x 32 records
        emit(p, 40)
        data = shard.collect(max_bytes=64 * 32)  # small budget: partial reads
        seen += by_tid(data).get(77, [])
        shard.commit()
        seen += by_tid(drain_all(shard)).get(77, [])
    assert seen == list(range(1, 801))
    assert sum(seg.drops().values()) == 0
    assert seg.counters()["rings_submitted"] >= 20


def test_producer__pool_exhausted_without_drainer__then_drops_counted_and_gaps_match(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    p = seg._attach_producer(9)
    emit(p, 100)  # only 64 fit
    seqs = by_tid(drain_all(shard))[9]
    assert seqs == list(range(1, 65))
    assert seg.drops()["pool_exhausted"] == 36
    emit(p, 10)  # after the commit rings are free again: gap of 36 then 101..110
    seqs = by_tid(drain_all(shard))[9]
    assert seqs == list(range(101, 111))
    assert seg.drops()["pool_exhausted"] == 36


def test_shard_collect__collected_but_not_committed_then_drainer_restarted__then_records_sent_again(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=4)
    seg.set_mode("PER_THREAD_ONLY")
    p = seg._attach_producer(5)
    emit(p, 50)
    first = seg.shard(0)
    assert by_tid(first.collect())[5] == list(range(1, 51))
    first.commit()
    emit(p, 30)
    assert by_tid(first.collect())[5] == list(range(51, 81))
    first.close()  # "crash": collected, never acked
    again = TargetSegment.open(seg.name)
    try:
        second = again.shard(0)
        assert by_tid(second.collect())[5] == list(range(51, 81))
        second.commit()
        assert second.collect() == b""
    finally:
        again.close()


def test_slot__retired_then_committed__then_freed_and_reused_by_next_thread(segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    a = seg._attach_producer(1)
    emit(a, 3)
    lib.lt_prod_retire(a)
    assert seg.counters()["slots_retiring"] == 1
    assert by_tid(shard.collect()) == {1: [1, 2, 3]}
    assert shard.commit() == 1
    c = seg.counters()
    assert (c["slots_free"], c["slots_freed"], c["threads_retired"]) == (1, 1, 1)
    b = seg._attach_producer(2)
    emit(b, 2)
    assert by_tid(drain_all(shard)) == {2: [1, 2]}


def test_slot__retired_and_not_yet_drained__then_next_thread_takes_over_lane(segments, session_id):
    seg = segments(session_id, slots=1, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    a = seg._attach_producer(1)
    emit(a, 3)
    lib.lt_prod_retire(a)
    assert by_tid(shard.collect()) == {1: [1, 2, 3]}  # drainer saw RETIRING ...
    b = seg._attach_producer(2)  # ... but a new thread takes the slot before the commit
    emit(b, 4)
    lib.lt_prod_retire(b)
    assert shard.commit() == 0  # generation moved: b's records must not be reset away
    assert by_tid(shard.collect()) == {2: [1, 2, 3, 4]}
    assert shard.commit() == 1
    assert sum(seg.drops().values()) == 0


def test_registry__more_threads_alive_than_slots__then_no_slot_drops_counted(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, ring_bytes=1024, rings_per_lane=2)
    seg.set_mode("PER_THREAD_ONLY")
    shard = seg.shard(0)
    a, b = seg._attach_producer(1), seg._attach_producer(2)
    with pytest.raises(SegmentError, match="no free registry slot"):
        seg._attach_producer(3)
    c = ffi.new("lt_producer *")
    assert lib.lt_prod_claim(c, lib.lt_ctl_of(seg._m), 3) == -1
    emit(c, 5)
    assert seg.drops()["no_slot"] == 5
    lib.lt_prod_retire(a)  # a slot becomes claimable: c retries on its next event
    emit(c, 2)
    emit(b, 1)
    assert by_tid(drain_all(shard)) == {3: [6, 7], 2: [1]}
    assert seg.drops()["no_slot"] == 5


def test_global_lane__global_only_mode__then_any_shard_drains_and_full_is_counted(segments, session_id):
    seg = segments(session_id, slots=4, shards=2, global_records=16)
    assert seg.mode == "GLOBAL_ONLY"
    s0, s1 = seg.shard(0), seg.shard(1)
    p = seg._attach_producer(11)
    emit(p, 20)  # 16 fit
    assert seg.drops()["global_full"] == 4
    got = by_tid(s1.collect())[11]
    assert got == list(range(1, 17))
    emit(p, 3)  # cells still claimed by shard 1 until it commits
    assert seg.drops()["global_full"] == 7
    assert s0.collect() == b""
    s1.commit()
    emit(p, 3)
    assert by_tid(s0.collect())[11] == [24, 25, 26]
    assert s1.collect() == b""
    s0.commit()
    assert seg.counters()["global_records"] == 19


def test_drainer__restarted_with_claimed_global_cells__then_cells_collected_again(segments, session_id):
    seg = segments(session_id, slots=2, shards=1, global_records=64)
    p = seg._attach_producer(3)
    emit(p, 10)
    first = seg.shard(0)
    assert len(first.collect()) == 10 * 32
    first.close()
    second = seg.shard(0)
    assert by_tid(second.collect())[3] == list(range(1, 11))
    second.commit()
    assert second.collect() == b""


def _drain_concurrently(seg, proc):
    results = {}
    shards = [seg.shard(k) for k in range(seg.config["shards"])]
    stop = threading.Event()

    def run(shard):
        chunks = []
        while True:
            data = shard.collect(1 << 20)
            if data:
                chunks.append(data)
            shard.commit()  # "the writer acked"
            if not data and stop.is_set() and shard.idle_and_complete():
                break
        results[shard.index] = b"".join(chunks)

    ts = [threading.Thread(target=run, args=(s,)) for s in shards]
    for t in ts:
        t.start()
    out, err = proc.communicate(timeout=120)
    seg.mark_target_exited()
    stop.set()
    for t in ts:
        t.join(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "ok"
    return results


def test_lanes__2000_short_threads_max_8_alive_drained_concurrently__then_every_record_delivered_or_counted(
        segments, session_id, producer_bin):
    # the producer writes flat out (~400k records in a few ms): a drainer
    # that lags drops with pool_exhausted; never silently, never no_slot
    seg = segments(session_id, slots=16, shards=2, ring_bytes=16384, rings_per_lane=16)
    seg.set_mode("PER_THREAD_ONLY")
    proc = subprocess.Popen([producer_bin, seg.name, "2000", "8", "200", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = _drain_concurrently(seg, proc)
    per_tid = {}
    for k, data in results.items():
        recs = parse_records(data)
        for r in recs:
            per_tid.setdefault(int(r["tid"]), []).append((int(r["seq"]), int(r["ts_ns"])))
    drops = seg.drops()
    assert drops["no_slot"] == 0
    lost = sum(drops.values())
    total = sum(len(v) for v in per_tid.values())
    assert total + lost == 2000 * 200
    for tid, seqs in per_tid.items():
        s = [q for q, _ in seqs]
        assert s == sorted(s) and len(set(s)) == len(s), f"tid {tid} out of order or duplicated"
        ts = [t for _, t in seqs]
        assert ts == sorted(ts)
    if lost == 0:
        assert len(per_tid) == 2000
        assert all([q for q, _ in v] == list(range(1, 201)) for v in per_tid.values())
    c = seg.counters()
    assert c["threads_retired"] == 2000
    assert c["slots_in_use"] == 0 and c["slots_retiring"] == 0


def test_lanes__threads_never_retire_and_process_exits__then_partial_rings_still_drained(
        segments, session_id, producer_bin):
    seg = segments(session_id, slots=8, shards=2, ring_bytes=4096, rings_per_lane=8)
    seg.set_mode("PER_THREAD_ONLY")
    proc = subprocess.Popen([producer_bin, seg.name, "8", "8", "1001", "500", "noretire"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = _drain_concurrently(seg, proc)
    data = b"".join(results.values())
    got = by_tid(data)
    assert sorted(got) == list(range(500, 508))
    assert all(v == list(range(1, 1002)) for v in got.values())
    assert seg.counters()["slots_in_use"] == 8


def test_list_segments__dead_and_live_targets__then_remove_stale_removes_only_dead(segments, session_id):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = segments(session_id, os.getpid())
    gone = segments(session_id, dead.pid)
    listed = {s["name"]: s for s in list_segments(session_id)}
    assert set(listed) == {live.name, gone.name}
    assert listed[live.name]["alive"] is True and listed[gone.name]["alive"] is False
    assert remove_stale_segments(session_id, dry_run=True) == [gone.name]
    assert os.path.exists("/dev/shm" + gone.name)
    assert remove_stale_segments(session_id) == [gone.name]
    assert not os.path.exists("/dev/shm" + gone.name)
    assert [s["name"] for s in list_segments(session_id)] == [live.name]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a segment to another user needs root")
def test_segment_create__for_another_user__then_its_name_is_never_seen_with_another_owner(segments, session_id):
    nobody = (65534, 65534)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            for fn in os.listdir("/dev/shm"):
                if fn.startswith(f"lanetrace-{session_id}-") and fn.endswith("-lanes"):
                    try:
                        seen.append(os.stat("/dev/shm/" + fn).st_uid)
                    except FileNotFoundError:
                        pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        made = [segments(session_id, 1000 + i, slots=2, owner=nobody) for i in range(20)]
    finally:
        stop.set()
        watcher.join()
    for seg in made:
        st = os.stat("/dev/shm" + seg.name)
        assert seg.name == segment_name(session_id, seg.pid)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*nobody, 0o600)
    assert set(seen) <= {nobody[0]}
    assert not [fn for fn in os.listdir("/dev/shm") if fn.startswith(f"lanetrace-{session_id}-") and ".new-" in fn]


def test_remove_stale__segment_left_half_built_by_a_dead_creator__then_removed(session_id):
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"/dev/shm/lanetrace-{session_id}-{os.getpid()}-lanes.new-{dead.pid}"
    building = f"/dev/shm/lanetrace-{session_id}-{os.getpid()}-lanes.new-{os.getpid()}"
    for path in (orphan, building):
        open(path, "wb").close()
    try:
        assert remove_stale_segments(session_id) == [orphan[len("/dev/shm"):]]
        assert not os.path.exists(orphan) and os.path.exists(building)
    finally:
        for path in (orphan, building):
            if os.path.exists(path):
                os.unlink(path)


def test_global_lane__concurrent_producers_and_two_shards_draining__then_every_record_exactly_once(
        segments, session_id, producer_bin):
    seg = segments(session_id, slots=8, shards=2, global_records=1 << 16)
    assert seg.mode == "GLOBAL_ONLY"
    proc = subprocess.Popen([producer_bin, seg.name, "16", "8", "3000", "700"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = _drain_concurrently(seg, proc)
    assert sum(seg.drops().values()) == 0
    merged = {}
    for data in results.values():
        for tid, seqs in by_tid(data).items():
            merged.setdefault(tid, []).extend(seqs)
    assert sorted(merged) == list(range(700, 716))
    assert all(sorted(v) == list(range(1, 3001)) for v in merged.values())
    assert seg.counters()["global_records"] == 16 * 3000
