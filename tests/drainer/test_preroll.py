"""The drainer's pre-roll buffer: real C split code on real lt_detail_record
bytes."""

from lanetrace.core import flightrec
from lanetrace.drainer.preroll import PreRoll
from writer.harness import ENTRY, RETURN, detail_record


# ---- pre-roll buffer ------------------------------------------------------------

def _stream(ts_list, tid=7, first_seq=1, stack=b"\x01" * 24):
    return b"".join(
        detail_record(ts, first_seq + i, tid, 1, ENTRY if i % 2 == 0 else RETURN,
                      range(7) if i % 2 == 0 else [i, 0], stack if i % 2 == 0 else b"")
        for i, ts in enumerate(ts_list))


def _ts_of(data):
    import struct
    out, off = [], 0
    while off < len(data):
        ts, _, _, _, _, _, size = struct.unpack_from("<QQIIHHI", data, off)
        out.append(ts)
        off += size
    return out


def _balanced(pr: PreRoll):
    c = pr.counts
    return c["received"] == c["sent"] + c["discarded"] + c["budget"] + c["lost"] + pr.held_records


def test_preroll__window_over_part_of_held_data__then_exactly_inside_records_sent():
    pr = PreRoll(budget_bytes=1 << 20, pre_roll_s=0.0, latency_s=0.0)
    ts = list(range(1000, 2000, 10))
    pr.add(_stream(ts))
    sent = pr.release([{"startNs": 1200, "endNs": 1300}], now_ns=1500)
    assert _ts_of(sent) == [t for t in ts if 1200 <= t <= 1300]
    # older than the horizon (now - pre - latency = 1500) and outside: discarded;
    # younger: still held for a window that may come
    assert pr.counts["discarded"] == sum(1 for t in ts if t < 1500 and not 1200 <= t <= 1300)
    assert pr.held_records == sum(1 for t in ts if t >= 1500)
    assert _balanced(pr)


def test_preroll__no_mark_ever__then_everything_discarded_never_sent():
    pr = PreRoll(budget_bytes=1 << 20, pre_roll_s=0.5, latency_s=0.0)
    pr.add(_stream(range(0, 10_000, 100)))
    assert pr.release([], now_ns=10**10) == b""
    assert pr.counts["discarded"] == 100 and pr.held_records == 0


def test_preroll__mark_after_data_within_pre_roll__then_data_still_held_and_sent():
    pr = PreRoll(budget_bytes=1 << 20, pre_roll_s=1.0, latency_s=0.0)
    pr.add(_stream([5 * 10**9 + i for i in range(10)]))
    assert pr.release([], now_ns=5_500_000_000) == b""   # 0.5 s later: inside pre-roll
    assert pr.held_records == 10
    w = flightrec.window_of({"tsNs": 5_600_000_000}, 10**9, 0, "crash")
    assert len(_ts_of(pr.release([w], now_ns=5_600_000_000))) == 10


def test_preroll__budget_smaller_than_data__then_oldest_dropped_counted_and_window_shortened():
    one = len(_stream([0]))
    pr = PreRoll(budget_bytes=one * 4, pre_roll_s=10.0, latency_s=0.0)
    for t in range(10):
        pr.add(_stream([1000 + t], first_seq=t + 1))
        pr.enforce_budget()
    assert pr.counts["budget"] == 6 and pr.held_records == 4
    w = {"startNs": 0, "endNs": 5000, "trigger": "crash"}
    sent = pr.release([w], now_ns=2000)
    assert _ts_of(sent) == [1006, 1007, 1008, 1009]
    (ann,) = pr.annotate([w])
    assert ann["shortened"] and ann["preRollLostUntilNs"] == 1005
    assert _balanced(pr)


def test_preroll__final_release__then_unclaimed_records_discarded():
    pr = PreRoll(budget_bytes=1 << 20, pre_roll_s=100.0, latency_s=0.0)
    pr.add(_stream([10, 20, 30, 40]))
    sent = pr.release([{"startNs": 15, "endNs": 25}], now_ns=50, final=True)
    assert _ts_of(sent) == [20]
    assert pr.counts["discarded"] == 3 and pr.held_records == 0


def test_preroll__full_mode__then_everything_sent_in_order_and_budget_ignored():
    pr = PreRoll(budget_bytes=0, pre_roll_s=0.5, full=True)
    data = _stream([3, 1, 2])
    pr.add(data)
    pr.enforce_budget()
    assert pr.release([], now_ns=10**12) == data
    assert pr.counts["sent"] == 3 and pr.counts["budget"] == 0
