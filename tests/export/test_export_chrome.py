import json

import pytest

from .atf_builder import TraceBuilder, nested_trace

from lanetrace.export import ExportOptions, export_trace


def export(trace_dir, tmp_path, **options):
    out = tmp_path / "run.json"
    stats = export_trace(trace_dir, "chrome", str(out), ExportOptions(**options))
    return stats, out


def events_of(path):
    with open(path) as f:
        doc = json.load(f)
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    for e in doc["traceEvents"]:
        assert {"name", "ph", "pid", "tid"} <= e.keys(), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float))
        if e["ph"] == "X":
            assert e["dur"] >= 0
    return doc["traceEvents"]


def assert_nested_per_thread(events):
    by_tid = {}
    for e in events:
        if e["ph"] == "X":
            by_tid.setdefault(e["tid"], []).append((e["ts"], -e["dur"], e["ts"] + e["dur"]))
    for spans in by_tid.values():
        stack = []
        for start, _, end in sorted(spans):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], "X events overlap without nesting"
            stack.append(end)


def complete(events):
    return sorted((e["tid"], e["name"], round(e["ts"] * 1000), round(e["dur"] * 1000))
                  for e in events if e["ph"] == "X")


@pytest.mark.parametrize("flavour", ["ours", "compact", "foreign"])
def test_chrome_export__two_threads__then_complete_events_in_microseconds(tmp_path, flavour):
    _, out = export(nested_trace(tmp_path / "t", flavour), tmp_path)
    events = events_of(out)
    assert complete(events) == [(101, "eval", 5000, 3000), (101, "lex", 2500, 500),
                                (101, "main", 1000, 8000), (101, "parse", 2000, 2000),
                                (202, "parse", 2000, 600), (202, "worker", 1500, 4500)]
    assert {e["pid"] for e in events} == {4242}
    assert_nested_per_thread(events)


def test_chrome_export__metadata__then_process_and_thread_names(tmp_path):
    _, out = export(nested_trace(tmp_path / "t", threads=[{"threadId": 101, "name": "main-thr"}]),
                    tmp_path)
    meta = {(e["name"], e["tid"]): e["args"]["name"] for e in events_of(out) if e["ph"] == "M"
            and e["name"] in ("process_name", "thread_name")}
    assert meta[("process_name", 0)] == "demo"
    assert "main-thr" in meta[("thread_name", 101)] and "101" in meta[("thread_name", 101)]
    assert "202" in meta[("thread_name", 202)]


def test_chrome_export__source_and_registers__then_in_args(tmp_path):
    _, out = export(nested_trace(tmp_path / "t"), tmp_path)
    by_name = {e["name"]: e for e in events_of(out) if e["ph"] == "X" and e["tid"] == 101}
    assert by_name["main"]["args"]["source"] == "/src/demo.c:10"
    assert "source" not in by_name["lex"].get("args", {})
    assert by_name["eval"]["args"]["arguments"] == {"rdi": "0x7", "rsi": "0xfffffffffffffff0"}
    assert by_name["eval"]["args"]["returned"] == {"rax": "0x2a"}


def test_chrome_export__trace_ends_with_open_calls__then_valid_json_closed_and_flagged(tmp_path):
    stats, out = export(nested_trace(tmp_path / "t", open_at_end=True), tmp_path)
    events = events_of(out)
    x = {(e["tid"], e["name"]): e for e in events if e["ph"] == "X"}
    for key in ((101, "main"), (101, "hang"), (202, "worker")):
        e = x[key]
        assert e["args"]["openAtTraceEnd"] is True
        assert round((e["ts"] + e["dur"]) * 1000) == 10000
    assert "openAtTraceEnd" not in x[(101, "eval")].get("args", {})
    assert stats.open_at_end == 3
    assert_nested_per_thread(events)


def test_chrome_export__windows__then_global_instant_events(tmp_path):
    windows = [{"startNs": 2000, "endNs": 4000, "trigger": "sigsegv"}]
    _, out = export(nested_trace(tmp_path / "t", windows=windows), tmp_path)
    marks = [e for e in events_of(out) if e["ph"] == "i" and e.get("cat") == "lanetrace.window"]
    assert sorted(round(e["ts"] * 1000) for e in marks) == [2000, 4000]
    assert all(e["args"] == {"trigger": "sigsegv", "startNs": 2000, "endNs": 4000} for e in marks)
    assert all(e["s"] == "g" for e in marks)


def test_chrome_export__time_range__then_only_overlapping_slices_clipped(tmp_path):
    _, out = export(nested_trace(tmp_path / "t"), tmp_path, time_start=4500, time_end=8500)
    events = events_of(out)
    assert complete(events) == [(101, "eval", 5000, 3000), (101, "main", 4500, 4000),
                                (202, "worker", 4500, 1500)]
    main = next(e for e in events if e["ph"] == "X" and e["name"] == "main")
    assert main["args"]["clippedStart"] is True and main["args"]["clippedEnd"] is True
    assert all(4.5 <= e["ts"] <= 8.5 for e in events if e["ph"] in ("X", "i"))


def test_chrome_export__split_mb__then_parts_valid_and_together_complete(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0)
    for i in range(6000):
        tid = 1 + i % 3
        b.call(tid, 100 + 10 * i, f"f{i % 7}").ret(tid, 105 + 10 * i, f"f{i % 7}")
    trace = b.close(windows=[{"startNs": 100, "endNs": 200, "trigger": "t"}])
    _, whole = export(trace, tmp_path)
    split_stats, _ = export(trace, tmp_path, split_mb=0.1)
    assert len(split_stats.files) >= 3
    assert all(p.endswith(f".part{i + 1:03d}.json") for i, p in enumerate(split_stats.files))
    merged = []
    for path in split_stats.files:
        events = events_of(path)
        names = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
        xs = [e for e in events if e["ph"] == "X"]
        assert {e["tid"] for e in xs} <= names  # each part names its own threads
        assert len([e for e in events if e.get("cat") == "lanetrace.window"]) == 2
        merged.extend(xs)
    assert complete(merged) == complete(events_of(whole))


def test_chrome_export__signal__then_thread_instant(tmp_path):
    _, out = export(nested_trace(tmp_path / "t"), tmp_path)
    (sig,) = [e for e in events_of(out) if e["ph"] == "i" and e.get("cat") == "signal"]
    assert (sig["name"], sig["tid"], sig["ts"], sig["s"]) == ("signal SIGUSR1", 101, 5.5, "t")


@pytest.mark.parametrize("args,labels", [(("demo", "--run"), "demo --run"),
                                         (("--run",), "/usr/bin/demo --run")])
def test_chrome_export__args_with_or_without_argv0__then_command_line_once(tmp_path, args, labels):
    b = TraceBuilder(tmp_path / "t", args=args)
    b.start(0).call(1, 10, "f").ret(1, 20, "f")
    _, out = export(b.close(), tmp_path)
    (meta,) = [e for e in events_of(out) if e["name"] == "process_labels"]
    assert meta["args"]["labels"] == labels
