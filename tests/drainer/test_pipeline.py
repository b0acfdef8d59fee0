"""The drainers' pipelined data channel against a real writer process."""


from lanetrace.drainer.pipeline import Pipeline
from writer.harness import (WriterProcess, call_pairs, calls_and_returns, end_header,
                            functions_header, manifest, read_frames, records, start_header)

PID = 6161


def _wait(pipe, n_expected, acked):
    pipe.flush(timeout_s=60)
    assert len(acked) == n_expected


def test_pipeline__several_batches_in_flight__then_callbacks_run_once_in_send_order(tmp_path):
    w = WriterProcess(tmp_path)
    pipe = Pipeline(w.endpoint, "test", depth=3)
    try:
        acked = []
        pipe.send("target_start", start_header(PID), on_ack=lambda: acked.append("start"))
        pipe.send("functions", functions_header(PID), on_ack=lambda: acked.append("fns"))
        for i in range(6):
            rows = call_pairs(9, 1 + 4 * i, 2)
            pipe.send("index", {"pid": PID, "count": len(rows)}, records(rows),
                      on_ack=lambda i=i: acked.append(i))
            assert pipe.in_flight <= 3
        _wait(pipe, 8, acked)
        assert acked == ["start", "fns", 0, 1, 2, 3, 4, 5]
        assert [e.sequence for e in calls_and_returns(read_frames(w.trace_dir(PID)))] == \
            list(range(1, 25))
    finally:
        pipe.close()
        w.close()


def test_pipeline__writer_killed_with_batches_in_flight__then_resent_and_no_duplicates(tmp_path):
    w = WriterProcess(tmp_path)
    pipe = Pipeline(w.endpoint, "test", depth=4, resend_after_s=0.5)
    try:
        acked = []
        pipe.send("target_start", start_header(PID))
        pipe.send("functions", functions_header(PID))
        pipe.flush(timeout_s=60)
        w.kill()
        for i in range(4):  # queued while nobody listens
            rows = call_pairs(9, 1 + 4 * i, 2)
            pipe.send("index", {"pid": PID, "count": len(rows)}, records(rows),
                      on_ack=lambda i=i: acked.append(i))
        w.start()
        _wait(pipe, 4, acked)
        assert acked == [0, 1, 2, 3]
        pipe.send("target_end", end_header(PID, drops={}))
        pipe.flush(timeout_s=60)
        m = manifest(w.trace_dir(PID))
        assert m["callCount"] == 8 and m["seqGaps"] == 0
        assert sorted(e.sequence for e in calls_and_returns(read_frames(w.trace_dir(PID)))) == \
            list(range(1, 17))
    finally:
        pipe.close()
        w.close()


def test_pipeline__nack_with_handler__then_handler_called_and_later_requests_go_on(tmp_path):
    w = WriterProcess(tmp_path)
    pipe = Pipeline(w.endpoint, "test", depth=2)
    try:
        refused, acked = [], []
        pipe.send("detail", {"pid": 999, "bytes": 0}, b"", on_nack=refused.append,
                  on_ack=lambda: acked.append("detail"))
        pipe.send("target_start", start_header(PID), on_ack=lambda: acked.append("start"))
        pipe.flush(timeout_s=60)
        assert len(refused) == 1 and "target_start was never acked" in refused[0]
        assert acked == ["start"]
    finally:
        pipe.close()
        w.close()
