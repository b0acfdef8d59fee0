import pytest

from .atf_builder import TraceBuilder, nested_trace

from lanetrace.export.diff import diff_traces

STEPS = [f"step{i}" for i in range(1, 11)]


def run_trace(path, main_tid, helper_tid, steps, extra_helper_calls=0, flavour="ours"):
    """Thread main: main > steps...; a helper thread created later (by time)
    but written first in the file, as drainers may deliver it."""
    b = TraceBuilder(path, flavour)
    b.start(0)
    t = 5000
    b.call(helper_tid, t, "helper_loop")
    for i in range(3 + extra_helper_calls):
        b.call(helper_tid, t + 10 + 10 * i, "poll").ret(helper_tid, t + 15 + 10 * i, "poll")
    b.ret(helper_tid, t + 500, "helper_loop")
    b.call(main_tid, 100, "main")
    t = 200
    for name in steps:
        b.call(main_tid, t, name).ret(main_tid, t + 50, name)
        t += 100
    b.ret(main_tid, t, "main")
    b.end(t + 1000)
    return b.close()


def test_diff__planted_divergence__then_found_with_context(tmp_path):
    bad = STEPS[:5] + ["recover", "step6_retry"] + STEPS[6:]
    a = run_trace(tmp_path / "a", 101, 102, STEPS)
    b = run_trace(tmp_path / "b", 555, 556, bad, flavour="foreign")
    result = diff_traces(a, b, context=2)
    assert result["identical"] is False
    main_thread = result["threads"][0]
    assert (main_thread["threadIdA"], main_thread["threadIdB"]) == (101, 555)
    d = main_thread["divergence"]
    assert d["callIndex"] == 6  # main, step1..step5, then the first difference
    assert d["before"] == ["step4", "step5"]
    assert d["a"]["call"] == "step6" and d["a"]["after"] == ["step7", "step8"]
    assert d["b"]["call"] == "recover" and d["b"]["after"] == ["step6_retry", "step7"]
    assert d["a"]["timestampNs"] == 700 and d["b"]["timestampNs"] == 700
    helper = result["threads"][1]
    assert (helper["threadIdA"], helper["threadIdB"]) == (102, 556)
    assert helper["identical"] is True and helper["divergence"] is None
    f = result["functions"]
    assert [r["functionName"] for r in f["onlyInA"]] == ["step6"]
    assert [r["functionName"] for r in f["onlyInB"]] == ["recover", "step6_retry"]


def test_diff__different_call_counts__then_ranked_by_largest_change(tmp_path):
    a = run_trace(tmp_path / "a", 1, 2, STEPS)
    b = run_trace(tmp_path / "b", 1, 2, STEPS, extra_helper_calls=4)
    result = diff_traces(a, b, top=5)
    by_calls = result["functions"]["byCallsDelta"]
    assert by_calls[0]["functionName"] == "poll"
    assert (by_calls[0]["callsA"], by_calls[0]["callsB"], by_calls[0]["callsDelta"]) == (3, 7, 4)
    assert len(by_calls) == 1
    helper = result["threads"][1]["divergence"]
    assert helper["callIndex"] == 4 and helper["a"]["call"] is None
    assert helper["b"]["call"] == "poll"
    by_time = {r["functionName"]: r for r in result["functions"]["byTotalTimeDelta"]}
    assert by_time["poll"]["totalTimeDeltaNs"] == 4 * 5


def test_diff__trace_with_itself__then_identical(tmp_path):
    a = nested_trace(tmp_path / "a")
    result = diff_traces(a, a)
    assert result["identical"] is True
    assert all(t["identical"] for t in result["threads"])
    assert result["functions"] == {"byCallsDelta": [], "byTotalTimeDelta": [], "onlyInA": [],
                                   "onlyInB": []}


def test_diff__extra_thread__then_reported_unmatched(tmp_path):
    a = nested_trace(tmp_path / "a")
    b = TraceBuilder(tmp_path / "b")
    b.start(0).call(9, 10, "main").ret(9, 20, "main")
    result = diff_traces(b.close(), a)
    assert result["unmatchedThreads"] == {"a": [], "b": [202]}
    assert result["identical"] is False


def test_diff__bad_context__then_value_error(tmp_path):
    a = nested_trace(tmp_path / "a")
    with pytest.raises(ValueError, match="context"):
        diff_traces(a, a, context=-1)
