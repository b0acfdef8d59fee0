"""calltree.get: the replay tree, checked against an independent stack walk
of the raw events, through pages, filters and the marks of frames that did
not return normally."""
import random

import pytest

from lanetrace.query.errors import INVALID_PARAMS, RpcError
from query.tracegen import Ev, random_program, simple_events

from views.vhelpers import all_lines, engine, expected_lines, shape, write

THREADS = (4243, 4244, 4245)


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    """Random lossy programs (lost returns, orphan returns, flight-recorder
    details) in both flavours, with their events."""
    root = tmp_path_factory.mktemp("ct")
    traces = {}
    for seed in range(4):
        events = random_program(random.Random(seed), threads=3, steps=80, drop_rate=0.1,
                                detail_rate=0.3)
        for flavour in ("ours", "foreign"):
            traces[(seed, flavour)] = (write(root, f"{flavour}{seed}/pid_1", events, flavour),
                                       events)
    return engine(root), traces


def test_calltree__lossy_random_programs__then_lines_match_a_stack_walk_of_the_events(lossy):
    e, traces = lossy
    for (seed, flavour), (tid_, events) in traces.items():
        for tid in THREADS:
            got = e.call("calltree.get", {"traceId": tid_, "threadId": tid, "limit": 10000})
            assert shape(got["lines"]) == expected_lines(events, tid), (seed, flavour, tid)


def test_calltree__paged_with_limit_3__then_pages_join_to_the_whole_view(lossy):
    e, traces = lossy
    tid_ = traces[(1, "ours")][0]
    for params in ({}, {"interleave": True}, {"functionName": "parse"},
                   {"threadId": 4244, "maxDepth": 2}, {"timeStartNs": 1_000_200}):
        whole = e.call("calltree.get", dict(params, traceId=tid_, limit=10000))["lines"]
        assert whole
        assert all_lines(e, dict(params, traceId=tid_, limit=3)) == whole, params


def test_calltree__interleave__then_every_thread_line_in_time_order(lossy):
    e, traces = lossy
    tid_, events = traces[(2, "ours")]
    lines = e.call("calltree.get", {"traceId": tid_, "interleave": True, "limit": 10000})["lines"]
    for tid in THREADS:
        assert shape([ln for ln in lines if ln["threadId"] == tid]) == expected_lines(events, tid)
    body = [ln["timestampNs"] for ln in lines
            if not (ln["type"] == "exit" and ln["end"] in ("openAtTraceEnd", "noReturn"))]
    opened = [ln for ln in lines if ln["type"] in ("entry", "leaf", "signal")]
    assert [ln["timestampNs"] for ln in opened] == sorted(ln["timestampNs"] for ln in opened)
    assert body


def test_calltree__flight_recorder_details__then_arguments_and_return_values(tmp_path):
    events = [Ev("call", 10, 1, "f", regs={"rdi": 7, "rsi": 8, "rdx": 9, "rcx": 1, "r8": 2,
                                           "r9": 3, "rsp": 4}, detail=True),
              Ev("call", 20, 1, "g"),
              Ev("ret", 30, 1, "g"),
              Ev("ret", 40, 1, "f", regs={"rax": 42}, detail=True)]
    name = write(tmp_path, "t/pid_1", events)
    lines = engine(tmp_path).call("calltree.get", {"traceId": name})["lines"]
    assert lines[0]["args"] == {"arg0": 7, "arg1": 8, "arg2": 9, "arg3": 1, "arg4": 2, "arg5": 3}
    assert "args" not in lines[1] and "returnValue" not in lines[1]
    assert lines[2]["returnValue"] == 42
    no_args = engine(tmp_path).call("calltree.get", {"traceId": name, "args": False})["lines"]
    assert "args" not in no_args[0] and "returnValue" not in no_args[2]


def test_calltree__unwound_lost_and_unfinished_frames__then_each_marked(tmp_path):
    events = [Ev("call", 10, 1, "main"),
              Ev("call", 20, 1, "jumper"),
              Ev("call", 30, 1, "deep"),       # left by longjmp, noticed at 60
              Ev("ret", 60, 1, "deep", unwound=True),
              Ev("call", 70, 1, "lost"),       # its return was dropped
              Ev("ret", 90, 1, "jumper"),      # closes lost as noReturn
              Ev("call", 100, 1, "tail"),      # never returns before the end
              Ev("end", 200, 0)]
    name = write(tmp_path, "t/pid_1", events)
    lines = engine(tmp_path).call("calltree.get", {"traceId": name})["lines"]
    assert [(ln["type"], ln["functionName"], ln["depth"], ln.get("end")) for ln in lines] == [
        ("entry", "main", 0, None),
        ("entry", "jumper", 1, None),
        ("leaf", "deep", 2, "unwound"),
        ("entry", "lost", 2, None),
        ("exit", "lost", 2, "noReturn"),
        ("exit", "jumper", 1, "returned"),
        ("entry", "tail", 1, None),
        ("exit", "tail", 1, "openAtTraceEnd"),
        ("exit", "main", 0, "openAtTraceEnd")]
    assert lines[-1]["timestampNs"] == 200 and lines[-1]["durationNs"] is None
    assert lines[2]["durationNs"] == 30


def test_calltree__max_depth_2__then_second_level_calls_show_as_leaves_with_their_time(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    lines = engine(tmp_path).call("calltree.get", {"traceId": name, "threadId": 4243,
                                                   "maxDepth": 2})["lines"]
    assert [(ln["type"], ln["functionName"], ln["durationNs"]) for ln in lines] == [
        ("entry", "main", 800), ("leaf", "parse", 300), ("leaf", "emit", 100),
        ("exit", "main", 800)]


def test_calltree__min_duration__then_shorter_calls_hidden(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    lines = engine(tmp_path).call("calltree.get", {"traceId": name, "threadId": 4243,
                                                   "minDurationNs": 100})["lines"]
    assert [(ln["type"], ln["functionName"]) for ln in lines] == [
        ("entry", "main"), ("entry", "parse"), ("exit", "parse"), ("leaf", "emit"),
        ("exit", "main")]


def test_calltree__time_window__then_calls_open_at_its_start_first_and_closed_at_their_end(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    lines = engine(tmp_path).call("calltree.get", {"traceId": name, "threadId": 4243,
                                                   "timeStartNs": 260, "timeEndNs": 650})["lines"]
    assert [(ln["type"], ln["functionName"], ln["timestampNs"]) for ln in lines] == [
        ("entry", "main", 100), ("entry", "parse", 200), ("entry", "lex", 250),
        ("exit", "lex", 300), ("exit", "parse", 500), ("entry", "emit", 600),
        ("exit", "emit", 700), ("exit", "main", 900)]


def test_calltree__span_and_function_roots__then_only_their_subtrees(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    e = engine(tmp_path)
    spans = e.call("spans.list", {"traceId": name, "filters": {"functionNames": ["parse"]},
                                  "projection": {"threadId": True}})["spans"]
    by_span = e.call("calltree.get", {"traceId": name, "spanId": spans[1]["spanId"]})["lines"]
    assert [(ln["type"], ln["functionName"], ln["depth"]) for ln in by_span] == [
        ("entry", "parse", 1), ("leaf", "lex", 2), ("exit", "parse", 1)]
    by_fn = e.call("calltree.get", {"traceId": name, "functionName": "parse"})["lines"]
    assert [(ln["threadId"], ln.get("functionName")) for ln in by_fn] == [
        (4244, "parse"), (4244, "alloc"), (4244, None), (4244, "parse"),
        (4243, "parse"), (4243, "lex"), (4243, "parse")]


@pytest.mark.parametrize("params, why", [
    ({"threadId": 99}, "threadId: no thread 99 in the trace"),
    ({"spanId": 6}, "spanId: no span 6 (the trace has 6)"),
    ({"spanId": 1, "threadId": 4243}, "spanId: excludes threadId and functionName"),
    ({"timeStartNs": 5, "timeEndNs": 5}, "timeStartNs: must be < timeEndNs"),
    ({"limit": 10001}, "limit: must be <= 10000"),
    ({"maxDepth": 0}, "maxDepth: must be >= 1"),
    ({"cursor": "nope"}, "cursor: malformed"),
    ({"depth": 3}, "unknown param 'depth'"),
])
def test_calltree__bad_params__then_invalid_params_naming_the_param(tmp_path, params, why):
    name = write(tmp_path, "t/pid_1", simple_events())
    with pytest.raises(RpcError) as exc:
        engine(tmp_path).call("calltree.get", dict(params, traceId=name))
    assert (exc.value.code, exc.value.data) == (INVALID_PARAMS, why)


def test_calltree__cursor_of_another_query__then_invalid_params(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    e = engine(tmp_path)
    cur = e.call("calltree.get", {"traceId": name, "limit": 1})["metadata"]["nextCursor"]
    with pytest.raises(RpcError) as exc:
        e.call("calltree.get", {"traceId": name, "limit": 1, "maxDepth": 2, "cursor": cur})
    assert exc.value.data == "cursor: issued for a different query"
