"""The writer's flight-recorder side: detail records persisted only inside
windows, in the event of their own call or return (held until the detail can
have come); thread names; SignalDelivery events. Real writer process, decoded
with the official runtime."""
import glob
import os
import time

from lanetrace.core import atf

from .harness import (ENTRY, ENTRY_REGS, RETURN, RETURN_REGS, Client, WriterProcess, call_pairs,
                      calls_and_returns, detail_record, end_header, functions_header, manifest,
                      read_frames, records, start_header)

PID = 5150
TID = 77


# Records as the writer sees them live, so they are held for their detail
# (a pre-roll long enough that none ages out while the module runs); T0 +
# offsets keeps the tests' windows readable.
T0 = time.monotonic_ns()
FLIGHT = {"triggers": ["symbol=fn_1"], "full": False, "preRollNs": 600 * 10**9,
          "postRollNs": 10**8, "stackBytes": 128, "bufferBytes": 1 << 20}


def _details(trace_dir):
    return [e for e in read_frames(trace_dir) if atf.carries_detail(e)]


def _pairs_with_detail(tid, first_seq, n, ts0=T0 + 1000):
    """n call/return pairs (index records) and their detail records; ENTRY
    regs are (seq, seq+1, ...), RETURN's rax is seq*10."""
    idx = call_pairs(tid, first_seq, n, ts0=ts0)
    det = []
    for ts, seq, t, fid, kind, _ in idx:
        if kind == ENTRY:
            det.append(detail_record(ts, seq, t, fid, ENTRY, [seq + i for i in range(7)],
                                     bytes(range(seq % 7, seq % 7 + 20))))
        else:
            det.append(detail_record(ts, seq, t, fid, RETURN, [seq * 10, 5]))
    return idx, b"".join(det)


def _start(client, **kw):
    kw.setdefault("flightRecorder", FLIGHT)
    client.ok("target_start", start_header(PID, **kw))
    client.ok("functions", functions_header(PID))


def test_writer_detail__records_inside_and_outside_window__then_only_inside_kept_with_registers(
        writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 10)           # ts 1010 .. 1205
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    client.ok("window", {"pid": PID, "startNs": T0 + 1050, "endNs": T0 + 1100, "trigger": "symbol=fn_1"})
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)
    client.ok("target_end", end_header(PID, drops={}))
    trace_dir = writer.trace_dir(PID)
    kept = _details(trace_dir)
    want = [(ts, seq) for ts, seq, *_ in idx if T0 + 1050 <= ts <= T0 + 1100]
    assert [(atf.timestamp_ns(e), e.sequence) for e in kept] == want
    for e in kept:
        assert e.thread_id == TID
        if e.WhichOneof("payload") == "function_call":
            regs = dict(e.function_call.argument_registers)
            assert regs == {name: e.sequence + i for i, name in enumerate(ENTRY_REGS)}
            assert e.function_call.stack_shallow_copy == \
                bytes(range(e.sequence % 7, e.sequence % 7 + 20))
            assert e.function_call.function_id == 1
        else:
            assert dict(e.function_return.return_registers) == \
                {RETURN_REGS[0]: e.sequence * 10, RETURN_REGS[1]: 5}
    # one event per call and per return, the detail inside it
    frames = read_frames(trace_dir)
    assert not any(e.detail for e in frames)
    assert [e.sequence for e in calls_and_returns(frames)] == list(range(1, 21))
    m = manifest(trace_dir)
    assert m["windows"] == [{"startNs": T0 + 1050, "endNs": T0 + 1100, "trigger": "symbol=fn_1"}]
    assert (m["detailKept"], m["detailDiscarded"]) == (len(want), 20 - len(want))
    assert m["eventCount"] == 22  # start + 20 calls/returns + end; detail not counted


def test_writer_detail__full_mode__then_every_record_kept(writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 5)
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det), "full": True}, det)
    client.ok("target_end", end_header(PID, drops={}))
    m = manifest(writer.trace_dir(PID))
    assert (m["detailKept"], m["detailDiscarded"]) == (10, 0)


def test_writer_detail__windows_in_detail_header_overlap__then_merged_and_labels_resolved(
        writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 10)
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    wins = [{"startNs": T0 + 1000, "endNs": T0 + 1060, "trigger": "symbol#2, symbol#1"},
            {"startNs": T0 + 1050, "endNs": T0 + 1080, "trigger": "crash"}]
    client.ok("detail", {"pid": PID, "drainer": 1, "bytes": len(det), "windows": wins,
                         "instance": "drainer-1:99:1", "counts": {"discarded": 7, "budget": 2}},
              det)
    client.ok("target_end", end_header(PID, drops={}))
    m = manifest(writer.trace_dir(PID))
    assert m["windows"] == [{"startNs": T0 + 1000, "endNs": T0 + 1080,
                             "trigger": "symbol=fn_2, symbol=fn_1, crash"}]
    kept = sum(1 for ts, *_ in idx if T0 + 1000 <= ts <= T0 + 1080)
    assert m["detailKept"] == kept
    # the drainer's own discards (aged out, over budget) are in the total
    assert m["detailDiscarded"] == (20 - kept) + 7 + 2
    assert m["flightRecorder"]["discardedBudget"] == 2


def test_writer_detail__resent_batch_and_repeated_counts__then_nothing_counted_twice(writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 4)
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    header = {"pid": PID, "drainer": 0, "bytes": len(det), "full": True,
              "instance": "drainer-0:1:1", "counts": {"discarded": 3, "budget": 0}}
    client.ok("detail", header, det)
    client.ok("detail", header, det)
    client.ok("target_end", end_header(PID, drops={}))
    m = manifest(writer.trace_dir(PID))
    assert m["detailKept"] == 8
    assert m["detailDiscarded"] == 3
    assert m["flightRecorder"]["writer"]["duplicates"] == 8
    assert len(_details(writer.trace_dir(PID))) == 8


def test_writer_detail__sigkill_and_restart__then_detail_state_rebuilt_no_duplicates(tmp_path):
    w = WriterProcess(tmp_path)
    c = Client(w.endpoint)
    try:
        _start(c)
        idx, det = _pairs_with_detail(TID, 1, 4)
        c.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
        c.ok("window", {"pid": PID, "startNs": T0, "endNs": T0 + 10**6, "trigger": "time=0"})
        c.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)
        w.kill()
        w.start()
        c.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)  # the resend
        c.ok("target_end", end_header(PID, drops={}))
        m = manifest(w.trace_dir(PID))
        assert m["detailKept"] == 8
        assert m["eventCount"] == 10
        assert m["callCount"] == 4
        assert [x["trigger"] for x in m["windows"]] == ["time=0"]
        assert len(_details(w.trace_dir(PID))) == 8
    finally:
        c.close()
        w.close()


def test_writer_detail__malformed_tail__then_whole_records_kept_and_tail_counted(writer, client):
    _start(client)
    client.ok("index", {"pid": PID, "count": 2}, records(call_pairs(TID, 1, 1, ts0=T0)))
    good = detail_record(T0 + 10, 1, TID, 1, ENTRY, range(7))
    bad = bytearray(detail_record(T0 + 15, 2, TID, 1, RETURN, [1, 2]))
    bad[28:32] = (12345).to_bytes(4, "little")  # size field not matching
    payload = good + bytes(bad)
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(payload), "full": True}, payload)
    client.ok("target_end", end_header(PID, drops={}))
    m = manifest(writer.trace_dir(PID))
    assert m["detailKept"] == 1
    assert m["flightRecorder"]["writer"]["invalidBytes"] == len(bad)


def test_writer_detail__bad_window__then_specific_nack(writer, client):
    _start(client)
    err = client.nack("window", {"pid": PID, "startNs": 10, "endNs": 5})
    assert "before startNs" in err
    err = client.nack("detail", {"pid": PID, "bytes": 9}, b"x")
    assert "header says 9" in err


def test_writer_threads__names_sent_twice_and_renamed__then_manifest_lists_latest(writer, client):
    _start(client)
    client.ok("threads", {"pid": PID, "threads": [{"threadId": 10, "name": "main"},
                                                  {"threadId": 11, "name": "worker-0"}]})
    client.ok("threads", {"pid": PID, "threads": [{"threadId": 11, "name": "renamed"}]})
    m = manifest(writer.trace_dir(PID))
    assert m["threads"] == [{"threadId": 10, "name": "main"}, {"threadId": 11, "name": "renamed"}]
    assert "must be an object" in client.nack("threads", {"pid": PID, "threads": [3]})


def test_writer_signal__sent_and_resent__then_one_signal_delivery_with_registers(writer, client):
    _start(client)
    h = {"pid": PID, "tid": 12, "tsNs": 5000, "number": 11, "name": "SIGSEGV",
         "registers": {"rip": 0x401000, "rsp": 0x7ffd0000, "rax": 0}}
    client.ok("signal", h)
    client.ok("signal", h)
    client.ok("target_end", end_header(PID, signal=11))
    sigs = [e for e in read_frames(writer.trace_dir(PID))
            if e.WhichOneof("payload") == "signal_delivery"]
    assert len(sigs) == 1
    s = sigs[0]
    assert (s.thread_id, atf.timestamp_ns(s), s.signal_delivery.number, s.signal_delivery.name) \
        == (12, 5000, 11, "SIGSEGV")
    assert dict(s.signal_delivery.registers) == h["registers"]


def test_writer_hold__thread_records_arrive_out_of_order__then_written_in_sequence_order(
        writer, client):
    _start(client)
    idx, _ = _pairs_with_detail(TID, 1, 5)
    client.ok("index", {"pid": PID, "count": 6}, records(idx[4:]))  # seq 5..10 first
    client.ok("index", {"pid": PID, "count": 4}, records(idx[:4]))  # then 1..4 (another lane)
    client.ok("target_end", end_header(PID, drops={}))
    trace_dir = writer.trace_dir(PID)
    assert [e.sequence for e in calls_and_returns(read_frames(trace_dir))] == list(range(1, 11))
    m = manifest(trace_dir)
    assert (m["lateRecords"], m["seqGaps"], m["callCount"]) == (0, 0, 5)
    assert not glob.glob(os.path.join(trace_dir, "held.*.journal"))  # all written: journal gone


def test_writer_hold__detail_before_its_index_record__then_merged_into_it(writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 3)
    client.ok("window", {"pid": PID, "startNs": T0, "endNs": T0 + 10**6, "trigger": "time=0"})
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    client.ok("target_end", end_header(PID, drops={}))
    frames = calls_and_returns(read_frames(writer.trace_dir(PID)))
    assert len(frames) == 6 and all(atf.carries_detail(e) for e in frames)
    assert manifest(writer.trace_dir(PID))["detailKept"] == 6


def test_writer_hold__index_record_never_comes__then_its_detail_counted_unmatched(writer, client):
    _start(client)
    idx, det = _pairs_with_detail(TID, 1, 3)
    client.ok("window", {"pid": PID, "startNs": T0, "endNs": T0 + 10**6, "trigger": "time=0"})
    client.ok("index", {"pid": PID, "count": 4}, records(idx[:4]))  # seq 5, 6 dropped
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)
    client.ok("target_end", end_header(PID, drops={}))
    m = manifest(writer.trace_dir(PID))
    assert (m["detailKept"], m["flightRecorder"]["writer"]["unmatched"]) == (4, 2)
    assert m["detailKept"] + m["detailDiscarded"] == 6


def test_writer_hold__budget_full__then_written_at_once_and_later_detail_counted_late(
        writer, client):
    _start(client, flightRecorder=dict(FLIGHT, bufferBytes=256))  # 8 records
    idx, det = _pairs_with_detail(TID, 1, 10)
    client.ok("index", {"pid": PID, "count": len(idx)}, records(idx))
    client.ok("window", {"pid": PID, "startNs": T0, "endNs": T0 + 10**6, "trigger": "time=0"})
    client.ok("detail", {"pid": PID, "drainer": 0, "bytes": len(det)}, det)
    client.ok("target_end", end_header(PID, drops={}))
    trace_dir = writer.trace_dir(PID)
    m = manifest(trace_dir)
    w = m["flightRecorder"]["writer"]
    assert (w["releasedEarly"], w["late"], w["holdBudgetBytes"]) == (20, 20, 256)
    assert (m["detailKept"], m["detailDiscarded"]) == (0, 20)
    assert [e.sequence for e in calls_and_returns(read_frames(trace_dir))] == list(range(1, 21))
