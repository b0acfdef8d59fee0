import json

import pytest

from .atf_builder import nested_trace

from lanetrace.export import ExportOptions, export_trace


def export(trace_dir, tmp_path, **options):
    out = tmp_path / "run.jsonl"
    export_trace(trace_dir, "jsonl", str(out), ExportOptions(**options))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("flavour", ["ours", "compact"])
def test_jsonl_export__nested_trace__then_one_object_per_event_in_file_order(tmp_path, flavour):
    rows = export(nested_trace(tmp_path / "t", flavour), tmp_path)
    assert [r["eventType"] for r in rows] == (
        ["TraceStart"] + ["FunctionCall"] * 5 + ["FunctionReturn"] * 3 + ["FunctionCall",
         "SignalDelivery"] + ["FunctionReturn"] * 3 + ["TraceEnd"])
    assert [r["timestampNs"] for r in rows] == [500, 1000, 1500, 2000, 2000, 2500, 2600, 3000,
                                                 4000, 5000, 5500, 6000, 8000, 9000, 9500]
    calls = [r for r in rows if r["eventType"] == "FunctionCall"]
    assert [(r["threadId"], r["functionName"], r["depth"]) for r in calls] == [
        (101, "main", 0), (202, "worker", 0), (101, "parse", 1), (202, "parse", 1),
        (101, "lex", 2), (101, "eval", 1)]
    assert [r["sequence"] for r in rows if r["threadId"] == 101 and "sequence" in r] == \
        list(range(1, 9))
    main = calls[0]
    assert (main["module"], main["sourceFile"], main["sourceLine"]) == ("demo", "/src/demo.c", 10)


@pytest.mark.parametrize("flavour", ["ours", "compact"])
def test_jsonl_export__registers__then_args_on_call_and_return(tmp_path, flavour):
    rows = export(nested_trace(tmp_path / "t", flavour), tmp_path)
    ev = [r for r in rows if r.get("functionName") == "eval"]
    assert ev[0]["args"] == {"rdi": 7, "rsi": 0xFFFFFFFFFFFFFFF0}
    assert ev[1]["args"] == {"rax": 42}
    assert all("args" not in r for r in rows if r.get("functionName") == "lex")


def test_jsonl_export__foreign_trace__then_depth_computed_and_no_sequence(tmp_path):
    rows = export(nested_trace(tmp_path / "t", "foreign"), tmp_path)
    calls = [(r["functionName"], r["depth"]) for r in rows
             if r["eventType"] == "FunctionCall" and r["threadId"] == 101]
    assert calls == [("main", 0), ("parse", 1), ("lex", 2), ("eval", 1)]
    returns = [(r["functionName"], r["depth"]) for r in rows
               if r["eventType"] == "FunctionReturn" and r["threadId"] == 101]
    assert returns == [("lex", 2), ("parse", 1), ("eval", 1), ("main", 0)]
    assert all("sequence" not in r for r in rows)


def test_jsonl_export__windows_and_range__then_window_rows_and_events_inside_only(tmp_path):
    windows = [{"startNs": 2000, "endNs": 3000, "trigger": "sigsegv"},
               {"startNs": 8000, "endNs": 9000, "trigger": "late"}]
    rows = export(nested_trace(tmp_path / "t", windows=windows), tmp_path,
                  time_start=2000, time_end=4000)
    assert rows[0] == {"eventType": "PersistenceWindow", "startNs": 2000, "endNs": 3000,
                       "trigger": "sigsegv"}
    assert all(r["eventType"] != "PersistenceWindow" for r in rows[1:])
    assert [r["timestampNs"] for r in rows[1:]] == [2000, 2000, 2500, 2600, 3000, 4000]
