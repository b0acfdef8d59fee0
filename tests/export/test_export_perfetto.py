import pytest

from .atf_builder import TraceBuilder, nested_trace
from .perfetto_model import load

from lanetrace.export import ExportOptions, export_trace
from lanetrace.export import perfetto_trace_subset_pb2 as ppb
from lanetrace.export.perfetto import process_uuid


def export(trace_dir, tmp_path, **options):
    out = tmp_path / "run.pftrace"
    export_trace(trace_dir, "perfetto", str(out), ExportOptions(**options))
    return load(out)


def shape(model, tid):
    return [(s.name, s.ts, s.dur, s.depth) for s in model.slices_on(model.thread_track(tid))]


EXPECTED_101 = [("main", 1000, 8000, 0), ("parse", 2000, 2000, 1), ("lex", 2500, 500, 2),
                ("eval", 5000, 3000, 1)]
EXPECTED_202 = [("worker", 1500, 4500, 0), ("parse", 2000, 600, 1)]


@pytest.mark.parametrize("flavour", ["ours", "foreign"])
def test_perfetto_export__two_threads__then_one_track_per_thread_with_nested_slices(tmp_path, flavour):
    model = export(nested_trace(tmp_path / "t", flavour), tmp_path)
    assert shape(model, 101) == EXPECTED_101
    assert shape(model, 202) == EXPECTED_202


def test_perfetto_export__process_and_threads__then_descriptors_name_them(tmp_path):
    model = export(nested_trace(tmp_path / "t", threads=[{"threadId": 202, "name": "worker-1"}]),
                   tmp_path)
    proc = model.tracks[process_uuid(4242)]
    assert proc.process.pid == 4242 and proc.process.process_name == "demo"
    assert list(proc.process.cmdline) == ["demo", "--run"]  # args already hold argv[0]
    t101 = model.tracks[model.thread_track(101)]
    t202 = model.tracks[model.thread_track(202)]
    assert t101.parent_uuid == t202.parent_uuid == process_uuid(4242)
    assert (t101.thread.pid, t101.thread.tid) == (4242, 101)
    assert "101" in t101.thread.thread_name
    assert "worker-1" in t202.thread.thread_name and "202" in t202.thread.thread_name


def test_perfetto_export__sequence__then_first_packet_clears_state_and_others_need_it(tmp_path):
    model = export(nested_trace(tmp_path / "t"), tmp_path)
    flags = [p.sequence_flags for p in model.packets]
    assert flags[0] == ppb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert set(flags[1:]) == {ppb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE}
    assert {p.trusted_packet_sequence_id for p in model.packets} == {4242}


def test_perfetto_export__many_calls_of_one_long_name__then_name_stored_once(tmp_path):
    name = "very_long_function_name_" * 8
    b = TraceBuilder(tmp_path / "t")
    b.start(0)
    for i in range(2000):
        b.call(7, 10 + 10 * i, name).ret(7, 15 + 10 * i, name)
    out = tmp_path / "run.pftrace"
    export_trace(b.close(), "perfetto", str(out))
    data = out.read_bytes()
    assert data.count(name.encode()) == 1
    model = load(out)
    interned = [e.name for p in model.packets for e in p.interned_data.event_names]
    assert interned.count(name) == 1
    assert len([s for s in model.slices if s.name == name]) == 2000
    # Proportional to events, not to name length x events.
    assert len(data) < 2000 * 2 * 40


def test_perfetto_export__detail_registers__then_annotations_on_their_slice(tmp_path):
    model = export(nested_trace(tmp_path / "t"), tmp_path)
    (ev,) = [s for s in model.slices if s.name == "eval"]
    assert ev.args == {"arg.rdi": 7, "arg.rsi": 0xFFFFFFFFFFFFFFF0, "ret.rax": 42}
    (lex,) = [s for s in model.slices if s.name == "lex"]
    assert lex.args == {}


def test_perfetto_export__calls_open_at_end__then_closed_at_trace_end_and_flagged(tmp_path):
    model = export(nested_trace(tmp_path / "t", open_at_end=True), tmp_path)
    assert all(s.dur >= 0 for s in model.slices)
    by_name = {(s.name, s.track): s for s in model.slices}
    main = by_name[("main", model.thread_track(101))]
    hang = by_name[("hang", model.thread_track(101))]
    worker = by_name[("worker", model.thread_track(202))]
    assert (main.ts + main.dur, hang.ts + hang.dur, worker.ts + worker.dur) == (10000, 10000, 10000)
    assert main.args.get("openAtTraceEnd") is True
    assert worker.args.get("openAtTraceEnd") is True
    (ev,) = [s for s in model.slices if s.name == "eval"]
    assert "openAtTraceEnd" not in ev.args


def test_perfetto_export__dwarf_source_in_definition__then_interned_source_location(tmp_path):
    model = export(nested_trace(tmp_path / "t"), tmp_path)
    (main,) = [s for s in model.slices if s.name == "main"]
    assert main.source == ("/src/demo.c", 10, "main")
    (lex,) = [s for s in model.slices if s.name == "lex"]
    assert lex.source is None
    (parse,) = [s for s in model.slices if s.name == "parse" and s.depth == 1
                and s.track == model.thread_track(101)]
    assert parse.category == "demo"


def test_perfetto_export__overlapping_windows__then_marked_on_non_overlapping_tracks(tmp_path):
    windows = [{"startNs": 1200, "endNs": 3000, "trigger": "sigsegv"},
               {"startNs": 2000, "endNs": 4000, "trigger": "slow-call"},
               {"startNs": 5000, "endNs": 6000, "trigger": "manual"}]
    model = export(nested_trace(tmp_path / "t", windows=windows), tmp_path)
    marks = sorted((s.ts, s.ts + s.dur, s.name, s.args["trigger"]) for s in model.slices
                   if s.name.startswith("window"))
    assert marks == [(1200, 3000, "window: sigsegv", "sigsegv"),
                     (2000, 4000, "window: slow-call", "slow-call"),
                     (5000, 6000, "window: manual", "manual")]
    window_tracks = {s.track for s in model.slices if s.name.startswith("window")}
    assert len(window_tracks) == 2  # the overlap forced a second lane
    for uuid in window_tracks:
        assert model.tracks[uuid].parent_uuid == process_uuid(4242)


def test_perfetto_export__time_range__then_slices_clipped_and_still_nested(tmp_path):
    model = export(nested_trace(tmp_path / "t"), tmp_path, time_start=2200, time_end=5500)
    assert shape(model, 101) == [("main", 2200, 3300, 0), ("parse", 2200, 1800, 1),
                                 ("lex", 2500, 500, 2), ("eval", 5000, 500, 1)]
    assert shape(model, 202) == [("worker", 2200, 3300, 0), ("parse", 2200, 400, 1)]
    (main,) = [s for s in model.slices if s.name == "main"]
    assert main.args.get("clippedStart") is True and main.args.get("clippedEnd") is True
    (lex,) = [s for s in model.slices if s.name == "lex"]
    assert "clippedStart" not in lex.args


def test_perfetto_export__signal__then_instant_on_thread_track(tmp_path):
    model = export(nested_trace(tmp_path / "t"), tmp_path)
    (sig,) = model.instants
    assert (sig.name, sig.ts, sig.track) == ("signal SIGUSR1", 5500, model.thread_track(101))
    assert sig.args["number"] == 10


def test_perfetto_export__two_targets_concatenated__then_both_processes_resolve(tmp_path):
    first = TraceBuilder(tmp_path / "a", pid=100)
    first.start(0).call(1, 10, "alpha").ret(1, 20, "alpha")
    second = TraceBuilder(tmp_path / "b", pid=200)
    second.start(0).call(2, 10, "beta").ret(2, 20, "beta")
    parts = []
    for b, name in ((first, "a.pftrace"), (second, "b.pftrace")):
        export_trace(b.close(), "perfetto", str(tmp_path / name))
        parts.append((tmp_path / name).read_bytes())
    (tmp_path / "session.pftrace").write_bytes(b"".join(parts))
    model = load(tmp_path / "session.pftrace")
    assert {d.process.pid for d in model.tracks.values() if d.HasField("process")} == {100, 200}
    assert [s.name for s in model.slices_on(model.thread_track(1))] == ["alpha"]
    assert [s.name for s in model.slices_on(model.thread_track(2))] == ["beta"]
