"""The record clock (native/include/lanetrace/tsc.h): the TSC calibrated
against CLOCK_MONOTONIC at segment creation, records stamped in ticks by the
real producer code (native/agent/lanes.c) and converted back to CLOCK_MONOTONIC
ns where drainers collect them (native/src/drain.c, tsc.c)."""
import time

import pytest

from lanetrace._native import ffi, lib
from lanetrace.core.shm import SegmentError, parse_detail, parse_records

ENTRY, RETURN = 1, 2

needs_invariant_tsc = pytest.mark.skipif(
    not lib.lt_tsc_invariant(), reason="no invariant TSC here: records keep clock_gettime")


def conv(clock, tsc_base, ns_base, mult):
    k = ffi.new("lt_tsc_conv *")
    k.clock, k.tsc_base, k.ns_base, k.mult = clock, tsc_base, ns_base, mult
    return k


def tsc_segment(segments, session_id, **kw):
    seg = segments(session_id, **kw)
    assert seg.enable_tsc_clock(min_span_ms=20) == "tsc"
    return seg


def drain_all(shard):
    chunks = []
    while True:
        b = shard.collect()
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        shard.commit()


def test_tsc_conv__fixed_calibration__then_exact_ns_on_both_sides_of_the_anchor():
    half_ns_per_tick = 1 << (lib.LT_TSC_SHIFT - 1)
    k = conv(lib.LT_CLOCK_TSC, 1_000, 5_000_000_000, half_ns_per_tick)
    assert lib.lt_tsc_conv_ns(k, 1_000) == 5_000_000_000
    assert lib.lt_tsc_conv_ns(k, 3_000) == 5_000_001_000
    assert lib.lt_tsc_conv_ns(k, 0) == 4_999_999_500  # a stamp taken before the anchor
    # 2.1 GHz over one hour of ticks: no overflow in the product
    k = conv(lib.LT_CLOCK_TSC, 0, 0, (10 << lib.LT_TSC_SHIFT) // 21)
    assert abs(lib.lt_tsc_conv_ns(k, 2_100_000_000 * 3600) - 3600 * 10**9) < 1_000


def test_tsc_conv__monotonic_clock__then_identity():
    k = conv(lib.LT_CLOCK_MONOTONIC, 1_000, 5_000_000_000, 1 << lib.LT_TSC_SHIFT)
    assert lib.lt_tsc_conv_ns(k, 123_456_789) == 123_456_789


@needs_invariant_tsc
def test_tsc_enable__invariant_tsc__then_ticks_convert_to_clock_monotonic_within_a_microsecond(
        segments, session_id):
    seg = tsc_segment(segments, session_id, slots=2)
    assert seg.clock == "tsc"
    k = ffi.new("lt_tsc_conv *")
    lib.lt_tsc_conv_of(lib.lt_ctl_of(seg._map), k)
    tsc, ns = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    for _ in range(5):
        time.sleep(0.02)
        lib.lt_tsc_pair(tsc, ns)
        assert abs(int(lib.lt_tsc_conv_ns(k, tsc[0])) - int(ns[0])) < 1_000


@needs_invariant_tsc
def test_drain__records_and_detail_stamped_in_ticks__then_collected_as_clock_monotonic_ns(
        segments, session_id):
    seg = tsc_segment(segments, session_id, slots=2, shards=1)
    seg.set_mode("PER_THREAD_ONLY")
    seg.set_detail(True, 0)
    p = seg._attach_producer(7)
    regs = ffi.new("uint64_t[]", [1, 2])
    ds = ffi.new("lt_detail_src *", {"regs": regs, "nregs": 2, "stack_len": 0, "stack": ffi.NULL})
    before = time.monotonic_ns()
    for i in range(200):
        lib.lt_prod_emit_detail(p, lib.lt_rdtsc(), 3, ENTRY if i % 2 == 0 else RETURN, 0, ds)
    lib.lt_prod_retire(p)
    after = time.monotonic_ns()
    shard = seg.shard(0)
    index = [int(t) for t in parse_records(drain_all(shard))["ts_ns"]]
    detail = parse_detail(shard.collect_detail())
    assert len(index) == len(detail) == 200
    assert all(before <= t <= after for t in index)
    assert index == sorted(index)
    assert [d["tsNs"] for d in detail] == index


def test_drain__monotonic_clock__then_timestamps_delivered_unchanged(segments, session_id):
    seg = segments(session_id, slots=2, shards=1)
    assert seg.enable_tsc_clock("monotonic") == "monotonic"
    seg.set_mode("PER_THREAD_ONLY")
    p = seg._attach_producer(7)
    for i, ts in enumerate((11, 22, 33, 44)):
        lib.lt_prod_emit(p, ts, 3, ENTRY if i % 2 == 0 else RETURN, 0)
    lib.lt_prod_retire(p)
    assert [int(t) for t in parse_records(drain_all(seg.shard(0)))["ts_ns"]] == [11, 22, 33, 44]


@needs_invariant_tsc
def test_mode_machine__records_stamped_in_ticks_and_fresh_heartbeat__then_agent_sees_it_fresh(
        segments, session_id):
    """The agent's policy compares its stamp with heartbeats in ns: unconverted
    ticks (about 2 to 4 per ns) would make every fresh heartbeat look stale."""
    seg = tsc_segment(segments, session_id, slots=2, shards=1)
    seg.mode_policy(stale_ms=2_000)
    p = seg._attach_producer(4)
    before = time.monotonic_ns()
    seg.heartbeat(0, before)
    for i in range(1025):  # one periodic check
        lib.lt_prod_emit(p, lib.lt_rdtsc(), 1, ENTRY if i % 2 == 0 else RETURN, 0)
    after = time.monotonic_ns()
    assert seg.mode == "PER_THREAD_ONLY"
    # the moment the agent stores is ns too: the watchdog compares it with its own
    assert before <= seg.mode_policy()["modeSinceNs"] <= after


def test_tsc_enable__agent_already_attached__then_record_clock_unchanged(segments, session_id):
    seg = segments(session_id, slots=2)
    lib.lt_shm_set_agent_state(seg._map, 1)
    assert seg.enable_tsc_clock(min_span_ms=0) == "monotonic"
    assert seg.clock == "monotonic"


def test_enable_tsc_clock__unknown_choice__then_segment_error_names_it(segments, session_id):
    seg = segments(session_id, slots=2)
    with pytest.raises(SegmentError, match="invalid record clock 'rdtsc'.*auto or monotonic"):
        seg.enable_tsc_clock("rdtsc")
