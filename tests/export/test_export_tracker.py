"""How calls become slices when the stream is not a clean call tree: returns
without calls, lost returns, unwinding, clock hiccups, empty traces."""
import json

import pytest

from .atf_builder import TraceBuilder
from .perfetto_model import load

from lanetrace.export import export_trace


def chrome(trace_dir, tmp_path):
    out = tmp_path / "run.json"
    stats = export_trace(trace_dir, "chrome", str(out))
    events = json.loads(out.read_text())["traceEvents"]
    return stats, {e["name"]: e for e in events if e["ph"] == "X"}, events


def test_tracker__return_before_any_call__then_skipped_and_counted(tmp_path):
    b = TraceBuilder(tmp_path / "t", "foreign")
    # Attached mid-call: the first event is a return from a frame we never saw enter.
    b.start(0).ret(1, 5, "entered_before_attach").call(1, 10, "f").ret(1, 20, "f")
    stats, x, _ = chrome(b.close(), tmp_path)
    assert list(x) == ["f"]
    assert stats.unmatched_returns == 1


def test_tracker__inner_return_lost__then_inner_closed_with_outer_and_flagged(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "outer").call(1, 20, "inner").ret(1, 50, "outer")
    stats, x, _ = chrome(b.close(), tmp_path)
    assert (x["inner"]["ts"], x["inner"]["dur"]) == (0.02, 0.03)
    assert x["inner"]["args"]["noReturn"] is True
    assert "noReturn" not in x["outer"].get("args", {})
    assert stats.open_at_end == 0


def test_tracker__unwound_return__then_flagged(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "thrower").ret(1, 30, "thrower", unwound=True)
    _, x, _ = chrome(b.close(), tmp_path)
    assert x["thrower"]["args"]["unwound"] is True


def test_tracker__timestamp_goes_back_on_a_thread__then_clamped_no_negative_duration(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 100, "f").ret(1, 90, "f")
    _, x, _ = chrome(b.close(), tmp_path)
    assert x["f"]["dur"] == 0


@pytest.mark.parametrize("fmt", ["perfetto", "chrome", "folded", "jsonl"])
def test_tracker__empty_event_stream__then_valid_output(tmp_path, fmt):
    trace = TraceBuilder(tmp_path / "t").close(
        windows=[{"startNs": 1, "endNs": 2, "trigger": "x"}])
    out = tmp_path / "out"
    stats = export_trace(trace, fmt, str(out))
    assert stats.events == 0 and stats.slices == 0
    if fmt == "perfetto":
        model = load(out)
        assert any(d.HasField("process") for d in model.tracks.values())
        assert [s.name for s in model.slices] == ["window: x"]
    elif fmt == "chrome":
        events = json.loads(out.read_text())["traceEvents"]
        assert {e["ph"] for e in events} == {"M", "i"}
    elif fmt == "folded":
        assert all(line.startswith("#") for line in out.read_text().splitlines())
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["eventType"] for r in rows] == ["PersistenceWindow"]


def test_tracker__manifest_clock_boottime__then_perfetto_uses_boottime_clock(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "f").ret(1, 20, "f")
    trace = b.close(clock="boottime")
    out = tmp_path / "run.pftrace"
    export_trace(trace, "perfetto", str(out))
    from lanetrace.export import perfetto_trace_subset_pb2 as ppb
    packets = ppb.Trace.FromString(out.read_bytes()).packet
    assert packets[0].clock_snapshot.primary_trace_clock == 6
    assert {p.timestamp_clock_id for p in packets if p.HasField("track_event")} == {6}
