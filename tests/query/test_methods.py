"""Semantics of every method on the small hand-built trace (tracegen.simple_events),
in both flavours: ours (ids + SymbolDefinition, interleaved threads) and
foreign (seed fields only). See tracegen.simple_events for the expected tree."""
import os

import pytest

from .qhelpers import FOREIGN, OURS
from lanetrace.query.engine import Engine
from lanetrace.query.errors import RpcError

BOTH = pytest.mark.parametrize("tid", [OURS, FOREIGN], ids=["ours", "foreign"])


@pytest.fixture
def eng(root):
    e = Engine(root, subprocess_builds=False)
    yield e
    e.close()


def call(eng, method, **params):
    return eng.call(method, params)


def err(eng, method, **params):
    with pytest.raises(RpcError) as ei:
        eng.call(method, params)
    return ei.value


# ---- trace.list / trace.info / threads.list -----------------------------------

def test_trace_list__root_with_two_traces__then_both_listed_with_ids(eng):
    out = call(eng, "trace.list")["traces"]
    assert sorted(t["traceId"] for t in out) == sorted([OURS, FOREIGN])
    ours = next(t for t in out if t["traceId"] == OURS)
    assert ours["pid"] == 4242 and ours["executablePath"] == "/usr/bin/demo"


@BOTH
def test_trace_info__small_trace__then_counts_times_and_files(eng, tid):
    info = call(eng, "trace.info", traceId=tid)
    assert info["traceId"] == tid
    assert (info["os"], info["arch"]) == ("linux", "x86_64")
    assert (info["timeStartNs"], info["timeEndNs"], info["durationNs"]) == (50, 1000, 950)
    assert info["eventCount"] == 15
    assert info["spanCount"] == 6
    assert info["threadCount"] == 2
    assert info["functionCount"] == 5
    f = info["files"]
    assert f["eventsSize"] == os.path.getsize(os.path.join(eng.store.root, tid, "events.bin"))
    assert f["totalSize"] >= f["eventsSize"] + f["manifestSize"]
    assert f["avgEventSize"] == round(f["eventsSize"] / 15, 2)
    assert "checksums" not in info and "samples" not in info


def test_trace_info__checksums_and_samples__then_md5_and_five_samples(eng):
    import hashlib

    info = call(eng, "trace.info", traceId=OURS, include_checksums=True, include_samples=True)
    with open(os.path.join(eng.store.root, OURS, "events.bin"), "rb") as f:
        assert info["checksums"]["eventsMd5"] == hashlib.md5(f.read()).hexdigest()
    s = info["samples"]
    assert [e["timestampNs"] for e in s["firstEvents"]] == [50, 100, 150, 160, 170]
    assert [e["timestampNs"] for e in s["lastEvents"]] == [500, 600, 700, 900, 1000]
    assert len(s["randomEvents"]) == 5


def test_trace_info__ours_manifest__then_drops_and_windows_from_manifest(root):
    import orjson

    path = os.path.join(root, OURS, "trace.json")
    m = orjson.loads(open(path, "rb").read())
    m["drops"] = {"ring_full": 3, "shard_stale": 1}
    m["windows"] = [{"startNs": 100, "endNs": 200, "trigger": "signal"}]
    open(path, "wb").write(orjson.dumps(m))
    info = Engine(root, subprocess_builds=False).call("trace.info", {"traceId": OURS})
    assert info["drops"] == {"ring_full": 3, "shard_stale": 1}
    assert info["windows"] == [{"startNs": 100, "endNs": 200, "trigger": "signal"}]


@BOTH
def test_threads_list__two_threads__then_counts_and_bounds(eng, tid):
    out = call(eng, "threads.list", traceId=tid)["threads"]
    assert out == [{"threadId": 4243, "eventCount": 8, "firstNs": 100, "lastNs": 900},
                   {"threadId": 4244, "eventCount": 5, "firstNs": 150, "lastNs": 450}]


# ---- events.get ---------------------------------------------------------------

@BOTH
def test_events_get__defaults__then_time_ordered_pascal_case_default_projection(eng, tid):
    r = call(eng, "events.get", traceId=tid)
    evs = r["events"]
    assert [e["timestampNs"] for e in evs] == sorted(e["timestampNs"] for e in evs)
    assert set(evs[1]) == {"timestampNs", "threadId", "eventType"}
    assert {e["eventType"] for e in evs} == {"TraceStart", "TraceEnd", "FunctionCall",
                                             "FunctionReturn", "SignalDelivery"}
    m = r["metadata"]
    assert (m["totalCount"], m["returnedCount"], m["offset"], m["limit"], m["hasMore"]) == (15, 15, 0, 1000, False)
    assert "nextCursor" not in m and m["executionTimeMs"] >= 0


@BOTH
def test_events_get__time_bounds__then_inclusive_on_both_ends(eng, tid):
    evs = call(eng, "events.get", traceId=tid, filters={"timeStartNs": 150, "timeEndNs": 300})["events"]
    assert [e["timestampNs"] for e in evs] == [150, 160, 170, 200, 250, 300]


@BOTH
def test_events_get__function_and_thread__then_only_matching(eng, tid):
    evs = call(eng, "events.get", traceId=tid, filters={"functionNames": ["parse"], "threadIds": [4243]},
               projection={"functionName": True})["events"]
    assert evs == [{"timestampNs": 200, "threadId": 4243, "eventType": "FunctionCall", "functionName": "parse"},
                   {"timestampNs": 500, "threadId": 4243, "eventType": "FunctionReturn", "functionName": "parse"}]


@BOTH
def test_events_get__event_types__then_camel_case_filter_values(eng, tid):
    evs = call(eng, "events.get", traceId=tid, filters={"eventTypes": ["signalDelivery", "traceEnd"]})["events"]
    assert [(e["eventType"], e["timestampNs"]) for e in evs] == [("SignalDelivery", 400), ("TraceEnd", 1000)]


@BOTH
def test_events_get__function_filter__then_events_without_symbol_never_match(eng, tid):
    evs = call(eng, "events.get", traceId=tid, filters={"functionNames": ["", "nothing"]})["events"]
    assert evs == []


def test_events_get__modules__then_only_that_module_in_ours(eng):
    evs = call(eng, "events.get", traceId=OURS, filters={"modules": ["libc.so.6"]},
               projection={"functionName": True, "module": True, "timestampNs": False,
                           "threadId": False, "eventType": False})["events"]
    assert evs == [{"functionName": "alloc", "module": "libc.so.6"}] * 2


@BOTH
def test_events_get__projection_off__then_fields_absent(eng, tid):
    evs = call(eng, "events.get", traceId=tid, limit=3,
               projection={"timestampNs": False, "threadId": False, "eventType": False,
                           "depth": True})["events"]
    assert evs == [{"depth": None}, {"depth": 0}, {"depth": 0}]


@BOTH
def test_events_get__args_projection__then_registers_of_calls_and_returns(eng, tid):
    evs = call(eng, "events.get", traceId=tid, filters={"threadIds": [4243], "timeEndNs": 300},
               projection={"args": True, "eventType": False, "threadId": False})["events"]
    assert evs == [{"timestampNs": 100, "args": {"rdi": 1}}, {"timestampNs": 200, "args": {"rdi": 7}},
                   {"timestampNs": 250, "args": {}}, {"timestampNs": 300, "args": {"rax": 3}}]


@BOTH
def test_events_get__order_by_thread_descending__then_thread_then_time_reversed(eng, tid):
    evs = call(eng, "events.get", traceId=tid, orderBy="threadId", ascending=False)["events"]
    keys = [(e["threadId"], e["timestampNs"]) for e in evs]
    assert keys == sorted(keys, reverse=True)
    assert keys[0] == (4244, 450) and keys[-1] == (0, 50)


@BOTH
def test_events_get__offset_limit__then_page_and_has_more(eng, tid):
    r = call(eng, "events.get", traceId=tid, offset=10, limit=3)
    assert [e["timestampNs"] for e in r["events"]] == [500, 600, 700]
    assert r["metadata"]["hasMore"] is True and r["metadata"]["offset"] == 10


@BOTH
def test_events_get__cursor__then_continues_after_last_item(eng, tid):
    r = call(eng, "events.get", traceId=tid, limit=4, filters={"eventTypes": ["functionCall"]})
    r2 = call(eng, "events.get", traceId=tid, limit=4, filters={"eventTypes": ["functionCall"]},
              cursor=r["metadata"]["nextCursor"])
    assert [e["timestampNs"] for e in r["events"] + r2["events"]] == [100, 150, 160, 200, 250, 600]
    assert r2["metadata"]["offset"] == 4 and r2["metadata"]["hasMore"] is False


def test_events_get__cursor_of_other_query__then_invalid_params(eng):
    r = call(eng, "events.get", traceId=OURS, limit=2)
    e = err(eng, "events.get", traceId=OURS, limit=2, ascending=False, cursor=r["metadata"]["nextCursor"])
    assert e.code == -32602 and "cursor" in e.data
    assert err(eng, "events.get", traceId=OURS, cursor="!!notacursor").code == -32602


@pytest.mark.parametrize("params, needle", [
    ({"limit": 10001}, "limit"),
    ({"limit": -1}, "limit"),
    ({"offset": -5}, "offset"),
    ({"limit": "10"}, "limit"),
    ({"filters": {"timeStartNs": 10, "timeEndNs": 10}}, "timeStartNs"),
    ({"filters": {"timeStartNs": 20, "timeEndNs": 10}}, "timeStartNs"),
    ({"filters": {"eventTypes": ["FunctionCall"]}}, "eventTypes"),
    ({"filters": {"threadIds": "4243"}}, "threadIds"),
    ({"filters": {"threadIds": [True]}}, "threadIds"),
    ({"filters": {"nope": 1}}, "nope"),
    ({"filters": []}, "filters"),
    ({"projection": {"functionName": 1}}, "functionName"),
    ({"projection": {"bogus": True}}, "bogus"),
    ({"orderBy": "size"}, "orderBy"),
    ({"ascending": "yes"}, "ascending"),
    ({"cursor": 5}, "cursor"),
])
def test_events_get__bad_params__then_invalid_params_naming_the_param(eng, params, needle):
    e = err(eng, "events.get", traceId=OURS, **params)
    assert e.code == -32602 and needle in e.data


@pytest.mark.parametrize("trace_id, code", [
    ("", -32602), (None, -32602), (5, -32602), ("../x", -32602), ("/etc", -32602),
    ("a/../../b", -32602), ("nope", -32000), ("20261121-101500-ab12", -32000),
])
def test_trace_id__bad_or_unknown__then_invalid_params_or_not_found(eng, trace_id, code):
    assert err(eng, "events.get", traceId=trace_id).code == code


def test_trace_id__symlink_out_of_root__then_invalid_params(root, tmp_path):
    from . import tracegen

    outside = tracegen.write_trace(str(tmp_path / "outside" / "pid_1"), tracegen.simple_events())
    os.symlink(outside, os.path.join(root, "escape"))
    os.symlink(os.path.join(root, OURS), os.path.join(root, "inside"))
    eng = Engine(root, subprocess_builds=False)
    e = err(eng, "trace.info", traceId="escape")
    assert e.code == -32602 and "outside" in e.data
    assert call(eng, "trace.info", traceId="inside")["eventCount"] == 15
    assert "escape" not in [t["traceId"] for t in call(eng, "trace.list")["traces"]]


# ---- spans.list ---------------------------------------------------------------

ALL_SPAN = {"threadId": True, "module": True, "depth": True, "childCount": True}


@BOTH
def test_spans_list__small_trace__then_paired_per_thread_with_depth_and_children(eng, tid):
    spans = call(eng, "spans.list", traceId=tid, projection=ALL_SPAN)["spans"]
    got = [(s["functionName"], s["threadId"], s["startTimeNs"], s["endTimeNs"], s["durationNs"],
            s["depth"], s["childCount"]) for s in spans]
    assert got == [("main", 4243, 100, 900, 800, 0, 2), ("parse", 4244, 150, 450, 300, 0, 1),
                   ("alloc", 4244, 160, 170, 10, 1, 0), ("parse", 4243, 200, 500, 300, 1, 1),
                   ("lex", 4243, 250, 300, 50, 2, 0), ("emit", 4243, 600, 700, 100, 1, 0)]
    assert [s["spanId"] for s in spans] == list(range(6))


@BOTH
def test_spans_list__time_window__then_containment_not_overlap(eng, tid):
    spans = call(eng, "spans.list", traceId=tid, filters={"timeStartNs": 150, "timeEndNs": 500})["spans"]
    assert [s["functionName"] for s in spans] == ["parse", "alloc", "parse", "lex"]
    spans = call(eng, "spans.list", traceId=tid, filters={"timeStartNs": 160, "timeEndNs": 499})["spans"]
    assert [s["functionName"] for s in spans] == ["alloc", "lex"]


@BOTH
def test_spans_list__include_children_false__then_roots_only(eng, tid):
    spans = call(eng, "spans.list", traceId=tid, includeChildren=False)["spans"]
    assert [s["functionName"] for s in spans] == ["main", "parse"]


@BOTH
def test_spans_list__duration_depth_function_filters__then_all_apply(eng, tid):
    assert [s["durationNs"] for s in call(eng, "spans.list", traceId=tid,
            filters={"minDurationNs": 100, "maxDurationNs": 300})["spans"]] == [300, 300, 100]
    assert [s["functionName"] for s in call(eng, "spans.list", traceId=tid,
            filters={"minDepth": 1, "maxDepth": 1})["spans"]] == ["alloc", "parse", "emit"]
    assert [s["startTimeNs"] for s in call(eng, "spans.list", traceId=tid,
            filters={"functionNames": ["parse"], "threadIds": [4243]})["spans"]] == [200]


def test_spans_list__projection__then_defaults_and_absent_fields(eng):
    s = call(eng, "spans.list", traceId=OURS, limit=1)["spans"][0]
    assert set(s) == {"spanId", "functionName", "startTimeNs", "endTimeNs", "durationNs"}
    s = call(eng, "spans.list", traceId=OURS, limit=1, projection={"spanId": False, "functionName": False,
             "startTimeNs": False, "endTimeNs": False, "module": True})["spans"][0]
    assert s == {"durationNs": 800, "module": "demo"}


@pytest.mark.parametrize("filters, needle", [
    ({"minDepth": 3, "maxDepth": 1}, "minDepth"),
    ({"minDurationNs": 10, "maxDurationNs": 1}, "minDurationNs"),
    ({"minDepth": -1}, "minDepth"),
    ({"timeStartNs": 5, "timeEndNs": 5}, "timeStartNs"),
])
def test_spans_list__bad_filters__then_invalid_params(eng, filters, needle):
    e = err(eng, "spans.list", traceId=OURS, filters=filters)
    assert e.code == -32602 and needle in e.data


def test_spans_list__lost_return__then_unmatched_call_makes_no_span(tmp_path):
    from . import tracegen
    from .tracegen import Ev

    evs = [Ev("call", 10, 1, "a"), Ev("call", 20, 1, "b"), Ev("call", 30, 1, "c"),
           Ev("ret", 40, 1, "a"),  # b's and c's returns were lost
           Ev("ret", 50, 1, "zzz")]  # orphan
    tracegen.write_trace(str(tmp_path / "t"), evs, flavour="foreign")
    eng = Engine(str(tmp_path), subprocess_builds=False)
    spans = eng.call("spans.list", {"traceId": "t", "projection": {"childCount": True}})["spans"]
    assert [(s["functionName"], s["durationNs"], s["childCount"]) for s in spans] == [("a", 30, 0)]


# ---- functions.list -------------------------------------------------------------

@BOTH
def test_functions_list__order_by_each_key__then_sorted_descending(eng, tid):
    for key, first in (("calls", "parse"), ("totalTimeNs", "main"), ("selfTimeNs", "parse")):
        fns = call(eng, "functions.list", traceId=tid, orderBy=key)["functions"]
        assert fns[0]["functionName"] == first
        assert [f[key] for f in fns] == sorted((f[key] for f in fns), reverse=True)
    main = next(f for f in fns if f["functionName"] == "main")
    assert (main["calls"], main["totalTimeNs"], main["selfTimeNs"], main["maxDurationNs"]) == (1, 800, 400, 800)
    assert main["address"] > 0


@BOTH
def test_functions_list__thread_and_time_filters__then_restricted(eng, tid):
    fns = call(eng, "functions.list", traceId=tid, filters={"threadIds": [4244]})["functions"]
    assert {f["functionName"]: f["calls"] for f in fns} == {"parse": 1, "alloc": 1}
    fns = call(eng, "functions.list", traceId=tid, filters={"timeStartNs": 200, "timeEndNs": 500},
               orderBy="totalTimeNs", limit=1)["functions"]
    assert [(f["functionName"], f["totalTimeNs"]) for f in fns] == [("parse", 300)]


def test_functions_list__module_filter__then_only_module(eng):
    fns = call(eng, "functions.list", traceId=OURS, filters={"modules": ["demo"]})["functions"]
    assert [(f["functionName"], f["module"]) for f in fns] == [("main", "demo")]


# ---- trace.diff ---------------------------------------------------------------

def test_trace_diff__ids_escape_root__then_invalid_params_for_either(eng):
    if "trace.diff" not in eng.methods or _diff_missing():
        e = err(eng, "trace.diff", traceIdA=OURS, traceIdB="../x")
        assert e.code == -32601
        return
    assert err(eng, "trace.diff", traceIdA="../x", traceIdB=OURS).code == -32602
    e = err(eng, "trace.diff", traceIdA=OURS, traceIdB="/abs")
    assert e.code == -32602 and "traceIdB" in e.data
    assert err(eng, "trace.diff", traceIdA=OURS, traceIdB="nope").code == -32000


def _diff_missing():
    from lanetrace.query.engine import _diff_module

    return _diff_module() is None


def test_symbols_sidecar__id_without_in_stream_definition__then_named_from_symbols_json(tmp_path):
    """A stream whose definition of an id is missing (e.g. cut by a crash)
    still gets the name from symbols.json; in-stream definitions win."""
    import orjson

    from lanetrace.core import atf
    from lanetrace.core import atf_v4_pb2 as pb

    d = tmp_path / "t"
    d.mkdir()
    out = bytearray()
    for i, (kind, ts, fid) in enumerate([("call", 10, 7), ("ret", 20, 7), ("call", 30, 8), ("ret", 40, 8)]):
        ev = pb.Event(event_id=i + 1, thread_id=1, sequence=i + 1)
        atf.set_timestamp_ns(ev, ts)
        (ev.function_call if kind == "call" else ev.function_return).function_id = fid
        if i == 2:  # id 8 is defined in the stream, id 7 only in the sidecar
            dfn = pb.Event(event_id=100)
            dfn.symbol_definition.function_id = 8
            dfn.symbol_definition.symbol = "in_stream"
            dfn.symbol_definition.module = "m"
            out += atf.frame(dfn.SerializeToString())
        out += atf.frame(ev.SerializeToString())
    (d / "events.bin").write_bytes(bytes(out))
    (d / "trace.json").write_bytes(orjson.dumps({"pid": 1}))
    (d / "symbols.json").write_bytes(orjson.dumps({"pid": 1, "functions": [
        {"id": 7, "name": "from_sidecar", "module": "libx.so", "address": 4096, "size": 8},
        {"id": 8, "name": "stale_name", "module": "m", "address": 1, "size": 8}]}))
    eng = Engine(str(tmp_path), subprocess_builds=False)
    spans = eng.call("spans.list", {"traceId": "t", "projection": {"module": True}})["spans"]
    assert [(s["functionName"], s["module"]) for s in spans] == [("from_sidecar", "libx.so"), ("in_stream", "m")]


def test_trace_info__writer_drops__then_merged_by_reason(root):
    import orjson

    path = os.path.join(root, OURS, "trace.json")
    m = orjson.loads(open(path, "rb").read())
    m["drops"] = {"ring_full": 2}
    m["writerDrops"] = {"duplicate": 0, "late": 1}
    open(path, "wb").write(orjson.dumps(m))
    info = Engine(root, subprocess_builds=False).call("trace.info", {"traceId": OURS})
    assert info["drops"] == {"ring_full": 2, "writer.duplicate": 0, "writer.late": 1}


def test_trace_info__manifest_rewritten__then_new_values_without_rebuild(root):
    import orjson

    eng = Engine(root, subprocess_builds=False)
    assert eng.call("trace.info", {"traceId": OURS})["drops"] == {"ring_full": 0}
    path = os.path.join(root, OURS, "trace.json")
    m = orjson.loads(open(path, "rb").read())
    m["drops"] = {"ring_full": 9, "stale_shard": 1}
    open(path, "wb").write(orjson.dumps(m))
    assert eng.call("trace.info", {"traceId": OURS})["drops"] == {"ring_full": 9, "stale_shard": 1}
    assert eng.store.stats["index_builds"] == 1


def test_index_cache__separate_directory__then_trace_directory_untouched(root, tmp_path):
    before = sorted(os.listdir(os.path.join(root, FOREIGN)))
    cache = tmp_path / "idxcache"
    eng = Engine(root, index_cache=str(cache), subprocess_builds=False)
    assert eng.call("spans.list", {"traceId": FOREIGN})["metadata"]["totalCount"] == 6
    assert sorted(os.listdir(os.path.join(root, FOREIGN))) == before
    built = [d for d in os.listdir(cache) if not d.endswith(".lock")]
    assert len(built) == 1 and os.path.isfile(cache / built[0] / "meta.json")
    eng2 = Engine(root, index_cache=str(cache), subprocess_builds=False)
    eng2.call("trace.info", {"traceId": FOREIGN})
    assert eng2.store.stats["index_builds"] == 0  # reused from the cache


def test_detail_events__flight_recorder_copies__then_not_counted_and_args_from_detail(tmp_path):
    from . import tracegen
    from .tracegen import Ev

    evs = [Ev("call", 10, 1, "f", regs={"rdi": 5}, detail=True), Ev("call", 20, 1, "g"),
           Ev("ret", 30, 1, "g"), Ev("ret", 40, 1, "f", regs={"rax": 9}, detail=True)]
    tracegen.write_trace(str(tmp_path / "t"), evs, flavour="ours")
    eng = Engine(str(tmp_path), subprocess_builds=False)
    info = eng.call("trace.info", {"traceId": "t"})
    assert (info["eventCount"], info["spanCount"]) == (4, 2)
    r = eng.call("events.get", {"traceId": "t", "projection": {"args": True, "functionName": True}})
    assert [(e["functionName"], e["args"]) for e in r["events"]] == [
        ("f", {"rdi": 5}), ("g", {}), ("g", {}), ("f", {"rax": 9})]
    fns = eng.call("functions.list", {"traceId": "t"})["functions"]
    assert {f["functionName"]: f["calls"] for f in fns} == {"f": 1, "g": 1}
