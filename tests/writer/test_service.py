"""The writer process end to end: real process, real DEALER, real files,
decoded with the official protobuf runtime."""
import os
import time

import orjson
import zmq

from lanetrace.core import atf

from .harness import (ENTRY, RETURN, SESSION, UNWOUND, Client, WriterProcess, call_pairs,
                      calls_and_returns, end_header, functions_header, manifest, read_frames,
                      records, start_header)

PID = 4321


def test_writer__full_session__then_events_have_exact_fields(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID, ids=(1, 2), sourceFile="demo.c",
                                            sourceLine=12))
    rows = [(1_500_000_123, 1, 77, 1, ENTRY, 0),
            (1_600_000_000, 2, 77, 2, ENTRY, 1),
            (1_700_000_000, 3, 77, 2, UNWOUND, 1),
            (2_000_000_001, 4, 77, 1, RETURN, 0),
            (3_000_000_000, 1, 78, 2, ENTRY, 0)]
    client.ok("index", {"pid": PID, "drainer": 0, "count": len(rows)}, records(rows))
    client.ok("target_end", end_header(PID))

    events = read_frames(writer.trace_dir(PID))
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds == ["trace_start", "symbol_definition", "symbol_definition",
                     "function_call", "function_call", "function_return", "function_return",
                     "function_call", "trace_end"]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))

    ts = events[0].trace_start
    assert (ts.executable_path, list(ts.args), ts.operating_system, ts.cpu_architecture,
            ts.pid, ts.session_id, ts.attached) == (
        "/usr/bin/demo", ["demo", "--fast"], "linux", "x86_64", PID, SESSION, False)
    assert atf.timestamp_ns(events[0]) == 500

    d = events[1].symbol_definition
    assert (d.function_id, d.symbol, d.module, d.address, d.size, d.source_file,
            d.source_line) == (1, "fn_1", "libdemo.so", 0x400100, 0x40, "demo.c", 12)

    got = []
    for e, row in zip(calls_and_returns(events), rows):
        p = e.function_call if e.WhichOneof("payload") == "function_call" else e.function_return
        got.append((atf.timestamp_ns(e), e.sequence, e.thread_id, p.function_id,
                    p.address, e.depth, getattr(p, "unwound", False), p.symbol))
    # the address, like the symbol, only with --inline-symbols: the definition has it
    assert got == [(1_500_000_123, 1, 77, 1, 0, 0, False, ""),
                   (1_600_000_000, 2, 77, 2, 0, 1, False, ""),
                   (1_700_000_000, 3, 77, 2, 0, 1, True, ""),
                   (2_000_000_001, 4, 77, 1, 0, 0, False, ""),
                   (3_000_000_000, 1, 78, 2, 0, 0, False, "")]
    assert events[-1].trace_end.exit_code == 3 and atf.timestamp_ns(events[-1]) == 10**9

    m = manifest(writer.trace_dir(PID))
    assert m["complete"] is True
    assert m["eventCount"] == len(list(atf.iter_events(writer.trace_dir(PID)))) == 7
    assert m["bytesWritten"] == os.path.getsize(
        os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE))
    assert (m["os"], m["arch"], m["pid"], m["sessionId"], m["formatVersion"], m["clock"]) == (
        "linux", "x86_64", PID, SESSION, "ATF V4", "monotonic")
    assert (m["timeStartNs"], m["timeEndNs"], m["spanCount"], m["threadCount"],
            m["functionCount"], m["exitCode"], m["signal"], m["detached"]) == (
        500, 10**9, 2, 2, 2, 3, 0, False)
    assert m["drops"] == {"ring_full": 2}
    assert (m["writerDuplicates"], m["seqGaps"], m["unknownFunctions"]) == (0, 0, 0)
    assert m["modules"] == ["demo", "libdemo.so"]
    assert m["windows"] == []
    assert m["topFunctions"] == [{"id": 2, "name": "fn_2", "module": "demo", "calls": 2},
                                 {"id": 1, "name": "fn_1", "module": "libdemo.so", "calls": 1}]
    symbols = orjson.loads(open(os.path.join(writer.trace_dir(PID), atf.SYMBOLS_FILE),
                                "rb").read())
    assert [f["name"] for f in symbols["functions"]] == ["fn_1", "fn_2"]


def test_writer__functions_in_several_requests__then_each_defined_before_first_use(
        writer, client):
    client.ok("target_start", start_header(PID))
    for fid in (1, 2, 3):
        client.ok("functions", functions_header(PID, ids=range(1, fid + 1)))  # resends too
        client.ok("index", {"pid": PID, "count": 2},
                  records(call_pairs(tid=5, first_seq=2 * fid - 1, n_pairs=1, func_id=fid)))
    defined, order = set(), []
    for e in read_frames(writer.trace_dir(PID)):
        which = e.WhichOneof("payload")
        if which == "symbol_definition":
            assert e.symbol_definition.function_id not in defined, "defined twice"
            defined.add(e.symbol_definition.function_id)
            order.append(("def", e.symbol_definition.function_id))
        elif which in ("function_call", "function_return"):
            fid = getattr(e, which).function_id
            assert fid in defined, f"function {fid} used before its definition"
            order.append(("use", fid))
    assert order == [("def", 1), ("use", 1), ("use", 1), ("def", 2), ("use", 2), ("use", 2),
                     ("def", 3), ("use", 3), ("use", 3)]


def test_writer__inline_symbols__then_every_call_and_return_names_its_function(tmp_path):
    w = WriterProcess(tmp_path, inline_symbols=True)
    c = Client(w.endpoint)
    try:
        c.ok("target_start", start_header(PID))
        c.ok("functions", functions_header(PID, ids=(1, 2)))
        rows = call_pairs(9, 1, 3, func_id=1) + call_pairs(9, 7, 2, func_id=2)
        c.ok("index", {"pid": PID, "count": len(rows)}, records(rows))
        evs = calls_and_returns(read_frames(w.trace_dir(PID)))
        assert len(evs) == 10
        names = [getattr(e, e.WhichOneof("payload")).symbol for e in evs]
        assert names == ["fn_1"] * 6 + ["fn_2"] * 4
        assert manifest(w.trace_dir(PID))["inlineSymbols"] is True
    finally:
        c.close()
        w.close()


def test_writer__duplicate_resend__then_dropped_and_counted(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    batch = records(call_pairs(11, 1, 50))
    client.ok("index", {"pid": PID, "count": 100}, batch)
    client.ok("index", {"pid": PID, "count": 100}, batch)
    overlap = records(call_pairs(11, 91, 10))  # seq 91..110: 10 old, 10 new
    client.ok("index", {"pid": PID, "count": 20}, overlap)
    client.ok("target_end", end_header(PID))
    evs = calls_and_returns(read_frames(writer.trace_dir(PID)))
    assert [e.sequence for e in evs] == list(range(1, 111))
    m = manifest(writer.trace_dir(PID))
    assert m["writerDuplicates"] == 110
    assert m["writerDrops"]["duplicate"] == 110
    assert m["seqGaps"] == 0


def test_writer__sequence_gaps__then_counted_and_reported(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    rows = [(10, 3, 21, 1, ENTRY, 0), (20, 4, 21, 1, RETURN, 0),   # 1,2 lost
            (30, 9, 21, 1, ENTRY, 0),                               # 5..8 lost
            (40, 1, 22, 1, ENTRY, 0), (50, 2, 22, 1, RETURN, 0)]
    client.ok("index", {"pid": PID, "count": len(rows)}, records(rows))
    client.ok("target_end", end_header(PID, drops={"ring_full": 6}))
    m = manifest(writer.trace_dir(PID))
    assert m["seqGaps"] == 6
    assert m["drops"] == {"ring_full": 6}
    assert m["writerDuplicates"] == 0
    assert len(calls_and_returns(read_frames(writer.trace_dir(PID)))) == 5


def test_writer__slower_lane_delivers_lower_seqs_later__then_late_written_and_only_resend_dropped(
        writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    # drainer 0 (per-thread lane) is ahead; drainer 1 (global lane) brings
    # seq 5..8 afterwards, and then a true resend of seq 1..4
    client.ok("index", {"pid": PID, "drainer": 0, "count": 8},
              records(call_pairs(6, 1, 2) + call_pairs(6, 9, 2)))
    client.ok("index", {"pid": PID, "drainer": 1, "count": 4}, records(call_pairs(6, 5, 2)))
    client.ok("index", {"pid": PID, "drainer": 1, "count": 4}, records(call_pairs(6, 1, 2)))
    client.ok("target_end", end_header(PID, drops={}))
    # file order keeps the late records where they arrived; readers sort by seq
    assert [e.sequence for e in calls_and_returns(read_frames(writer.trace_dir(PID)))] == \
        [1, 2, 3, 4, 9, 10, 11, 12, 5, 6, 7, 8]
    m = manifest(writer.trace_dir(PID))
    assert m["writerDrops"] == {"duplicate": 4, "invalid_record": 0}
    assert m["lateRecords"] == 4
    assert m["seqGaps"] == 0  # the late records filled the gap
    assert m["callCount"] == m["returnCount"] == 6


def test_writer__late_records_then_sigkill_and_restart__then_counts_rebuilt_from_file(tmp_path):
    w = WriterProcess(tmp_path)
    c = Client(w.endpoint)
    try:
        c.ok("target_start", start_header(PID))
        c.ok("functions", functions_header(PID))
        c.ok("index", {"pid": PID, "count": 4}, records(call_pairs(6, 1, 1) + call_pairs(6, 5, 1)))
        c.ok("index", {"pid": PID, "count": 2}, records(call_pairs(6, 3, 1)))
        w.kill()
        w.start()
        c.ok("index", {"pid": PID, "count": 2}, records(call_pairs(6, 3, 1)))  # a resend
        c.ok("target_end", end_header(PID, drops={}))
        m = manifest(w.trace_dir(PID))
        assert (m["lateRecords"], m["seqGaps"], m["writerDrops"]["duplicate"]) == (2, 0, 2)
        assert sorted(e.sequence for e in calls_and_returns(read_frames(w.trace_dir(PID)))) == \
            list(range(1, 7))
    finally:
        c.close()
        w.close()


def test_writer__unknown_function_id__then_event_kept_and_counted(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID, ids=(1,)))
    rows = [(10, 1, 5, 1, ENTRY, 0), (20, 2, 5, 99, ENTRY, 1), (30, 3, 5, 99, RETURN, 1)]
    client.ok("index", {"pid": PID, "count": 3}, records(rows))
    evs = calls_and_returns(read_frames(writer.trace_dir(PID)))
    assert [getattr(e, e.WhichOneof("payload")).function_id for e in evs] == [1, 99, 99]
    assert evs[1].function_call.address == 0
    client.ok("target_end", end_header(PID))
    assert manifest(writer.trace_dir(PID))["unknownFunctions"] == 2


def test_writer__sigkill_mid_stream_then_restart_and_resend__then_no_loss_no_duplicates(
        tmp_path):
    w = WriterProcess(tmp_path)
    c = Client(w.endpoint)
    batches = [records(call_pairs(tid=100 + b % 3, first_seq=(b // 3) * 2000 + 1,
                                  n_pairs=1000, func_id=1 + b % 2)) for b in range(60)]
    try:
        for cycle, acks_before_kill in enumerate((1, 6, 25)):
            if cycle:
                w.start()
                c = Client(w.endpoint)
            c.ok("target_start", start_header(PID))  # the injector's resend
            c.ok("functions", functions_header(PID))
            for i, b in enumerate(batches):  # everything unacked, pipelined as drainers do
                c.send("index", {"pid": PID, "count": 2000, "msgId": f"c{cycle}b{i}"}, b)
            replies = [c.recv() for _ in range(acks_before_kill)]
            assert all(r[0] == b"ack" for r in replies), replies
            w.kill()  # while later batches are queued or half written
            c.close()
            # whatever a SIGKILL left, readers stop cleanly at the last whole frame
            list(atf.iter_events(w.trace_dir(PID)))

        w.start()
        c = Client(w.endpoint)
        c.ok("target_start", start_header(PID))
        c.ok("functions", functions_header(PID))
        for i, b in enumerate(batches):
            c.ok("index", {"pid": PID, "count": 2000, "msgId": f"r{i}"}, b)
        c.ok("target_end", end_header(PID))
    finally:
        c.close()
        w.close()

    events = read_frames(w.trace_dir(PID))
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("payload") for e in events]
    assert (kinds.count("trace_start"), kinds.count("symbol_definition"),
            kinds.count("trace_end")) == (1, 2, 1)
    by_tid = {}
    for e in calls_and_returns(events):
        by_tid.setdefault(e.thread_id, []).append(e.sequence)
    for tid in (100, 101, 102):
        assert by_tid[tid] == list(range(1, 20 * 2000 + 1)), f"tid {tid}"
    m = manifest(w.trace_dir(PID))
    assert m["eventCount"] == 60 * 2000 + 2
    assert m["complete"] and m["seqGaps"] == 0 and m["spanCount"] == 60 * 1000


def test_writer__torn_tail_on_restart__then_cut_and_appending_continues(tmp_path):
    w = WriterProcess(tmp_path)
    c = Client(w.endpoint)
    c.ok("target_start", start_header(PID))
    c.ok("functions", functions_header(PID))
    c.ok("index", {"pid": PID, "count": 20}, records(call_pairs(3, 1, 10)))
    w.kill()
    c.close()
    path = os.path.join(w.trace_dir(PID), atf.EVENTS_FILE)
    good = os.path.getsize(path)
    with open(path, "ab") as f:  # what a write cut short by SIGKILL leaves
        f.write(atf.encode_varint(60) + b"\x08\x99" + b"\x00" * 20)
    assert atf.valid_prefix_length(path) == good

    w.start()
    c = Client(w.endpoint)
    try:
        # no target_start: any request must reopen the trace
        c.ok("index", {"pid": PID, "count": 20}, records(call_pairs(3, 11, 10)))
        c.ok("target_end", end_header(PID))
    finally:
        c.close()
        w.close()
    events = read_frames(w.trace_dir(PID))
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert [e.sequence for e in calls_and_returns(events)] == list(range(1, 31))
    assert "cutting a torn tail of 23 bytes" in w.log()


def test_writer__sigterm__then_manifest_written_and_exit_0(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    client.ok("index", {"pid": PID, "count": 40}, records(call_pairs(8, 1, 20)))
    assert writer.terminate() == 0
    m = manifest(writer.trace_dir(PID))
    assert m["complete"] is False
    assert m["eventCount"] == 41 and m["spanCount"] == 20
    assert m["bytesWritten"] == os.path.getsize(
        os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE))
    assert "writer stopped" in writer.log()


def test_writer__restart_after_sigterm__then_event_ids_and_counts_continue(tmp_path):
    w = WriterProcess(tmp_path)
    c = Client(w.endpoint)
    try:
        c.ok("target_start", start_header(PID))
        c.ok("functions", functions_header(PID))
        c.ok("index", {"pid": PID, "count": 10}, records(call_pairs(8, 1, 5)))
        c.ok("index", {"pid": PID, "count": 2}, records(call_pairs(8, 1, 1)))  # 2 duplicates
        assert w.terminate() == 0
        c.close()
        w.start()
        c = Client(w.endpoint)
        c.ok("functions", functions_header(PID, ids=(1, 2, 3)))
        c.ok("index", {"pid": PID, "count": 12}, records(call_pairs(8, 9, 6, func_id=3)))
        c.ok("target_end", end_header(PID))
    finally:
        c.close()
        w.close()
    events = read_frames(w.trace_dir(PID))
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert [e.sequence for e in calls_and_returns(events)] == list(range(1, 21))
    m = manifest(w.trace_dir(PID))
    assert (m["writerDuplicates"], m["functionCount"], m["spanCount"], m["eventCount"]) == (
        4, 3, 10, 22)  # 2 dropped before the restart + seq 9, 10 resent after it
    assert sorted((f["name"], f["calls"]) for f in m["topFunctions"]) == [
        ("fn_1", 5), ("fn_3", 5)]  # seq 9, 10 of fn_3 were duplicates of fn_1's


def test_writer__bad_requests__then_specific_nack_and_trace_intact(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    client.ok("index", {"pid": PID, "count": 4}, records(call_pairs(2, 1, 2)))
    before = open(os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE), "rb").read()

    assert "expected count 3 x 32 = 96" in client.nack(
        "index", {"pid": PID, "count": 3}, records(call_pairs(2, 5, 2)))
    assert "without a payload" in client.nack("index", {"pid": PID, "count": 0})
    assert "'count' is required" in client.nack("index", {"pid": PID}, b"")
    assert "no trace for pid 999" in client.nack(
        "index", {"pid": 999, "count": 2}, records(call_pairs(2, 5, 1)))
    assert "'id' = 0 is out of range" in client.nack(
        "functions", {"pid": PID, "functions": [{"id": 0, "name": "x"}]})
    assert "'name' is required" in client.nack("functions", {"pid": PID, "functions": [{"id": 5}]})
    assert "does not match this writer's session" in client.nack(
        "target_start", start_header(PID + 1, sessionId="other"))
    assert "'pid' must be an integer" in client.nack("target_start", start_header("12"))
    assert "must be a non-negative integer" in client.nack(
        "target_end", end_header(PID, drops={"ring_full": -1}))
    assert "unknown request kind 'flush'" in client.nack("flush", {})
    reply = client.raw([b"index", b"{not json"])
    assert reply[0] == b"nack" and b"header is not JSON" in reply[2]
    reply = client.raw([b"ping", b"{}"])
    assert reply[0] == b"nack" and b"'msgId' is required" in reply[2]

    after = open(os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE), "rb").read()
    assert after == before
    client.ok("index", {"pid": PID, "count": 4}, records(call_pairs(2, 5, 2)))
    assert [e.sequence for e in calls_and_returns(read_frames(writer.trace_dir(PID)))] == \
        list(range(1, 9))


def test_writer__invalid_records_in_batch__then_skipped_counted_rest_written(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    rows = [(10, 1, 4, 1, ENTRY, 0), (20, 2, 4, 1, 7, 0), (30, 0, 4, 1, RETURN, 0),
            (40, 3, 4, 1, RETURN, 0)]
    client.ok("index", {"pid": PID, "count": 4}, records(rows))
    client.ok("target_end", end_header(PID))
    assert [e.sequence for e in calls_and_returns(read_frames(writer.trace_dir(PID)))] == [1, 3]
    m = manifest(writer.trace_dir(PID))
    assert m["writerDrops"] == {"duplicate": 0, "invalid_record": 2}
    assert m["seqGaps"] == 1  # seq 2 carried a bad kind: it never reached the trace


def test_writer__trace_dir_not_creatable__then_nack_and_other_targets_served(writer, client):
    os.makedirs(os.path.join(writer.trace_root, SESSION))
    blocker = writer.trace_dir(PID)
    open(blocker, "w").close()  # a file where the pid directory should go
    err = client.nack("target_start", start_header(PID))
    assert f"cannot open trace of pid {PID}" in err and blocker in err
    client.ok("target_start", start_header(PID + 1))
    client.ok("functions", functions_header(PID + 1))
    client.ok("index", {"pid": PID + 1, "count": 2}, records(call_pairs(1, 1, 1)))
    client.ok("target_end", end_header(PID + 1))
    assert manifest(writer.trace_dir(PID + 1))["complete"] is True
    assert "ERROR" in writer.log() or "WARNING" in writer.log()


def test_writer__broker_endpoint__then_heartbeat_and_metrics_published(tmp_path):
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    endpoint = f"ipc://{tmp_path}/bus.sock"
    sub.bind(endpoint)  # stands in for the broker's XSUB side
    w = WriterProcess(tmp_path, extra_args=("--broker-pub", endpoint))
    c = Client(w.endpoint)
    try:
        c.ok("target_start", start_header(PID))
        c.ok("functions", functions_header(PID))
        c.ok("index", {"pid": PID, "count": 6}, records(call_pairs(1, 1, 3)))
        c.ok("index", {"pid": PID, "count": 6}, records(call_pairs(1, 1, 3)))
        seen = {}
        while not ("hb.writer" in seen and seen.get("metrics.writer", {}).get("batches") == 2):
            assert sub.poll(30_000), f"nothing published; got {sorted(seen)}"
            topic, payload = sub.recv_multipart()
            seen[topic.decode()] = orjson.loads(payload)
        assert seen["hb.writer"]["service"] == "writer"
        m = seen["metrics.writer"]
        assert (m["records"], m["events"], m["duplicates"], m["gaps"]) == (12, 6, 6, 0)
        assert "eventsPerSec" in m and "bytesPerSec" in m
    finally:
        c.close()
        w.close()
        sub.close()
        ctx.term()


def test_writer__no_broker_running__then_still_serves(writer, client):
    # the default broker endpoint has no listener in this run dir
    assert not os.path.exists(os.path.join(writer.run_dir, "broker-pub.sock"))
    client.ok("target_start", start_header(PID))
    client.ok("ping", {})


def test_writer__batch_after_target_end_and_end_resent__then_kept_counted_single_trace_end(
        writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    client.ok("index", {"pid": PID, "count": 2}, records(call_pairs(3, 1, 1)))
    client.ok("target_end", end_header(PID))
    client.ok("index", {"pid": PID, "count": 2}, records(call_pairs(3, 3, 1)))  # a drainer's last
    client.ok("target_end", end_header(PID))  # the injector's resend
    client.ok("target_start", start_header(PID))  # a stale resend: still the same process
    assert writer.terminate() == 0
    events = read_frames(writer.trace_dir(PID))
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds.count("trace_end") == 1 and kinds.count("trace_start") == 1
    assert [e.sequence for e in calls_and_returns(events)] == [1, 2, 3, 4]
    m = manifest(writer.trace_dir(PID))
    assert (m["complete"], m["eventsAfterEnd"], m["eventCount"]) == (True, 2, 6)


def test_writer__pid_reused_after_finished_trace__then_nack_and_trace_untouched(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("target_end", end_header(PID))
    before = open(os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE), "rb").read()
    err = client.nack("target_start", start_header(PID, startNs=999_999))
    assert "pid reuse within one session is not supported" in err
    assert open(os.path.join(writer.trace_dir(PID), atf.EVENTS_FILE), "rb").read() == before


def test_writer__while_tracing__then_manifest_rewritten_without_target_end(writer, client):
    client.ok("target_start", start_header(PID))
    client.ok("functions", functions_header(PID))
    client.ok("index", {"pid": PID, "count": 8}, records(call_pairs(4, 1, 4)))
    deadline = time.monotonic() + 60  # a hang guard: the rewrite is due within ~1 s
    while manifest(writer.trace_dir(PID))["eventCount"] != 9:
        assert time.monotonic() < deadline, manifest(writer.trace_dir(PID))
        time.sleep(0.05)
    m = manifest(writer.trace_dir(PID))
    assert (m["complete"], m["spanCount"], m["threadCount"]) == (False, 4, 1)
    assert writer.proc.poll() is None
