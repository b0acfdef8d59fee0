"""callgraph.get: call paths aggregated over every completed call, with
recursion folded; the totals agree with functions.list."""
import random
from collections import defaultdict

import pytest

from lanetrace.query.errors import INVALID_PARAMS, RpcError
from query.tracegen import Ev, random_program, simple_events

from views.vhelpers import engine, write


def _walk(nodes, path=()):
    for n in nodes:
        yield path, n
        yield from _walk(n["children"], path + (n["functionName"],))


def _sums(nodes):
    out = defaultdict(lambda: [0, 0, 0])
    for _, n in _walk(nodes):
        s = out[n["functionName"]]
        s[0] += n["calls"]
        s[1] += n["totalTimeNs"]
        s[2] += n["selfTimeNs"]
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", range(4))
def test_callgraph__random_programs__then_per_function_sums_equal_functions_list(tmp_path, seed):
    events = random_program(random.Random(seed), threads=3, steps=120)
    name = write(tmp_path, "t/pid_1", events)
    e = engine(tmp_path)
    graph = e.call("callgraph.get", {"traceId": name})
    assert graph["truncated"] is False
    # functions.list counts every call event; the graph, like the times, completed calls
    completed = defaultdict(int)
    for s in e.call("spans.list", {"traceId": name, "limit": 10000})["spans"]:
        completed[s["functionName"]] += 1
    want = {f["functionName"]: (completed[f["functionName"]], f["totalTimeNs"], f["selfTimeNs"])
            for f in e.call("functions.list", {"traceId": name})["functions"]}
    assert _sums(graph["roots"]) == want
    for fn, (calls, total, self_) in want.items():
        focus = e.call("callgraph.get", {"traceId": name, "functionName": fn})["function"]
        assert (focus["calls"], focus["totalTimeNs"], focus["selfTimeNs"]) == (calls, total, self_)


def test_callgraph__thread_and_window_filters__then_sums_equal_functions_list_with_them(tmp_path):
    events = random_program(random.Random(9), threads=3, steps=120)
    name = write(tmp_path, "t/pid_1", events)
    e = engine(tmp_path)
    f = {"threadIds": [4244], "timeStartNs": 1_000_300, "timeEndNs": 1_002_000}
    graph = e.call("callgraph.get", dict(f, traceId=name))
    spans = e.call("spans.list", {"traceId": name, "filters": f, "limit": 10000})["spans"]
    counts = defaultdict(int)
    for s in spans:
        counts[s["functionName"]] += 1
    assert {k: v[0] for k, v in _sums(graph["roots"]).items()} == dict(counts)


def test_callgraph__recursion__then_folded_into_one_node(tmp_path):
    # main > fib > fib > fib > helper > fib: every fib is the one node under main
    events = [Ev("call", 10, 1, "main"), Ev("call", 20, 1, "fib"), Ev("call", 30, 1, "fib"),
              Ev("call", 40, 1, "fib"), Ev("call", 50, 1, "helper"), Ev("call", 60, 1, "fib"),
              Ev("ret", 70, 1, "fib"), Ev("ret", 80, 1, "helper"), Ev("ret", 90, 1, "fib"),
              Ev("ret", 100, 1, "fib"), Ev("ret", 110, 1, "fib"), Ev("ret", 120, 1, "main")]
    name = write(tmp_path, "t/pid_1", events)
    e = engine(tmp_path)
    roots = e.call("callgraph.get", {"traceId": name})["roots"]
    assert [(p, n["functionName"], n["calls"], n["totalTimeNs"]) for p, n in _walk(roots)] == [
        ((), "main", 1, 110),
        (("main",), "fib", 4, 90 + 70 + 50 + 10),
        (("main", "fib"), "helper", 1, 30)]
    focus = e.call("callgraph.get", {"traceId": name, "functionName": "fib"})
    # fib's calls from fib itself are folded away; helper's call is indirect recursion
    assert focus["callers"] == [
        {"functionName": "main", "module": "libdemo.so", "calls": 1, "totalTimeNs": 90,
         "selfTimeNs": 20},
        {"functionName": "helper", "module": "libdemo.so", "calls": 1, "totalTimeNs": 10,
         "selfTimeNs": 10}]
    assert [(n["functionName"], n["calls"]) for _, n in _walk(focus["callees"])] == [("helper", 1)]


def test_callgraph__function_on_two_threads__then_callers_and_merged_callees(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    r = engine(tmp_path).call("callgraph.get", {"traceId": name, "functionName": "parse"})
    assert r["function"] == {"functionName": "parse", "module": "libdemo.so", "calls": 2,
                             "totalTimeNs": 600, "selfTimeNs": 540}
    assert [(c["functionName"], c["calls"]) for c in r["callers"]] == [(None, 1), ("main", 1)]
    assert [(n["functionName"], n["totalTimeNs"]) for n in r["callees"]] == [("lex", 50),
                                                                             ("alloc", 10)]


def test_callgraph__max_depth_and_max_nodes__then_cut_and_said_so(tmp_path):
    name = write(tmp_path, "t/pid_1", simple_events())
    e = engine(tmp_path)
    r = e.call("callgraph.get", {"traceId": name, "maxDepth": 1})
    assert [n["children"] for n in r["roots"]] == [[], []] and r["truncated"] is True
    r = e.call("callgraph.get", {"traceId": name, "maxNodes": 2})
    assert sum(1 for _ in _walk(r["roots"])) == 2 and r["truncated"] is True


@pytest.mark.parametrize("params, why", [
    ({"functionName": "nope"}, "functionName: no function 'nope' in the trace"),
    ({"maxNodes": 0}, "maxNodes: must be >= 1"),
    ({"timeStartNs": 9, "timeEndNs": 1}, "timeStartNs: must be < timeEndNs"),
    ({"threadIds": "4243"}, "threadIds: must be an array of integers"),
])
def test_callgraph__bad_params__then_invalid_params(tmp_path, params, why):
    name = write(tmp_path, "t/pid_1", simple_events())
    with pytest.raises(RpcError) as exc:
        engine(tmp_path).call("callgraph.get", dict(params, traceId=name))
    assert (exc.value.code, exc.value.data) == (INVALID_PARAMS, why)
