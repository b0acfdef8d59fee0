"""``lanetrace query``/``serve`` as a user runs them: in-process and against a
server, tables and --json; plus trace.diff and the worker-process index build."""
import json
import os
import subprocess
import sys

import pytest

from .qhelpers import FOREIGN, OURS


def lt(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lanetrace", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_query_events__in_process_with_filters__then_table_rows(root):
    r = lt("query", "events", OURS, "--trace-root", root, "--function", "parse", "--thread", "4243",
           "--limit", "50")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # times after the trace start (50 ns)
    assert lines[0].split() == ["time", "threadId", "eventType", "functionName", "depth"]
    assert lines[1].split() == ["+150ns", "4243", "FunctionCall", "parse", "1"]
    assert lines[2].split() == ["+450ns", "4243", "FunctionReturn", "parse", "1"]
    assert lines[3] == "2 of 2 (offset 0)"


def test_query_spans__min_duration_against_server__then_json_result(server):
    r = lt("query", "spans", FOREIGN, "--server", server.url, "--min-duration", "0.3us", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(s["functionName"], s["durationNs"]) for s in out["spans"]] == [
        ("main", 800), ("parse", 300), ("parse", 300)]
    assert out["metadata"]["totalCount"] == 3


def test_query_functions__top__then_limited_and_ordered(server):
    r = lt("query", "functions", OURS, "--server", server.url, "--top", "2", "--json")
    fns = json.loads(r.stdout)["functions"]
    assert [f["functionName"] for f in fns] == ["parse", "alloc"]
    r = lt("query", "functions", OURS, "--server", server.url, "--top", "1", "--order-by", "totalTimeNs")
    assert r.stdout.splitlines()[1].split() == ["main", "demo", "1", "800", "ns", "400", "ns",
                                                "800", "ns"]


def test_query_info_and_list_and_threads__then_tables(root):
    r = lt("query", "info", FOREIGN, "--trace-root", root)
    assert r.returncode == 0
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines()[1:])
    assert rows["eventCount"].strip() == "15" and rows["spanCount"].strip() == "6"
    r = lt("query", "list", "--trace-root", root, "--json")
    assert {t["traceId"] for t in json.loads(r.stdout)["traces"]} == {OURS, FOREIGN}
    r = lt("query", "threads", OURS, "--trace-root", root)
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ["4243", "4244"]


def test_query__cursor_from_footer__then_next_page(root):
    r = lt("query", "events", OURS, "--trace-root", root, "--limit", "10")
    cursor = r.stdout.splitlines()[-1].split("--cursor ")[1]
    r2 = lt("query", "events", OURS, "--trace-root", root, "--limit", "10", "--cursor", cursor)
    assert r2.stdout.splitlines()[-1] == "5 of 15 (offset 10)"


@pytest.mark.parametrize("args, needle", [
    (("query", "info", "nope"), "Trace not found"),
    (("query", "info", "../x"), "Invalid params"),
    (("query", "spans", OURS, "--min-depth", "3", "--max-depth", "1"), "minDepth"),
    (("query", "events", OURS, "--limit", "20000"), "limit"),
])
def test_query__bad_input__then_error_message_and_nonzero_exit(root, args, needle):
    r = lt(*args, "--trace-root", root)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr


def test_query__unreachable_server__then_clear_error(root):
    r = lt("query", "info", OURS, "--server", "http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach" in r.stderr


def test_query__bad_duration__then_usage_error():
    r = lt("query", "spans", OURS, "--min-duration", "fast")
    assert r.returncode == 2 and "not a duration" in r.stderr


def test_query__server_with_token__then_token_flag_used(fresh_server):
    s = fresh_server("--token", "tok")
    assert lt("query", "info", OURS, "--server", s.url).returncode == 1
    r = lt("query", "info", OURS, "--server", s.url, "--token", "tok", "--json")
    assert json.loads(r.stdout)["eventCount"] == 15


def test_trace_diff__two_traces__then_diff_module_result_or_method_not_found(server):
    from lanetrace.query.engine import _diff_module

    resp = server.rpc("trace.diff", {"traceIdA": OURS, "traceIdB": FOREIGN})
    if _diff_module() is None:
        assert resp["error"]["code"] == -32601
        return
    assert "result" in resp and isinstance(resp["result"], dict)
    assert server.rpc("trace.diff", {"traceIdA": OURS, "traceIdB": "../x"})["error"]["code"] == -32602
    assert server.rpc("trace.diff", {"traceIdA": "nope", "traceIdB": OURS})["error"]["code"] == -32000


def test_index_build__large_trace_in_worker_process__then_same_answers(tmp_path):
    """Traces over 8 MiB are indexed in a worker process: the result must be
    the same as indexing in-process."""
    from lanetrace.query import store
    from lanetrace.query.engine import Engine

    import importlib.util

    # bench/query.py by path: its module name would clash with this package
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "query.py")
    spec = importlib.util.spec_from_file_location("lanetrace_bench_query", path)
    benchq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchq)

    benchq.build_trace(str(tmp_path / "big" / "pid_1"), 300_000)
    assert os.path.getsize(tmp_path / "big" / "pid_1" / "events.bin") > store.SUBPROCESS_BUILD_BYTES
    eng = Engine(str(tmp_path), subprocess_builds=True)
    try:
        info = eng.call("trace.info", {"traceId": "big/pid_1"})
        assert info["eventCount"] == 300_002 and eng.store.stats["index_builds"] == 1
        page = eng.call("spans.list", {"traceId": "big/pid_1", "limit": 3})
    finally:
        eng.close()
    eng2 = Engine(str(tmp_path), subprocess_builds=False)  # loads the persisted index
    assert eng2.call("spans.list", {"traceId": "big/pid_1", "limit": 3}) ["spans"] == page["spans"]
    assert eng2.store.stats["index_builds"] == 0
