"""The CLI's status line fed from a real ZeroMQ publisher."""
import io
import time

import orjson
import zmq

from lanetrace.cli.status import StatusLine


def test_status_line__not_a_tty__then_plain_lines_with_rates_drops_and_warning(tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/sub.sock"
    pub.bind(endpoint)
    out = io.StringIO()
    status = StatusLine(endpoint, out=out, tty=False, ctx=ctx)
    try:
        writer = {"eventsPerSec": 12345.0, "byTarget": {"7": {"detail": {"eventsPerSec": 100.0}}}}
        drainer = {"targets": {"7": {"drops": {"pool_exhausted": 5, "no_slot": 0},
                                     "drainLagMs": 3.0}}}
        budget = {"pid": 7, "drainer": "drainer-0", "needBytes": 100 << 20,
                  "budgetBytes": 32 << 20, "holdsSeconds": 0.16, "preRollSeconds": 0.5}
        deadline = time.monotonic() + 30
        while "events/s" not in out.getvalue() or "warning" not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()  # a hang guard
            pub.send_multipart([b"metrics.writer", orjson.dumps(writer)])
            pub.send_multipart([b"metrics.drainer-0", orjson.dumps(drainer)])
            pub.send_multipart([b"flight.budget", orjson.dumps(budget)])
            status.last_print = 0.0  # due now
            status.tick()
            time.sleep(0.05)
        text = out.getvalue()
        assert "\r" not in text and "\x1b" not in text
        line = [ln for ln in text.splitlines() if "events/s" in ln][-1]
        assert "12,345 events/s" in line and "+100 detail/s" in line
        assert "drops 5 (pool_exhausted=5)" in line
        assert text.count("warning") == 1 and "raise --detail-buffer-mb" in text
    finally:
        status.close()
        pub.close(0)
        ctx.term()
