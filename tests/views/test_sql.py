"""SQL over a trace: the answers equal the query engine's, and sql.query
through a real server refuses every query that reaches outside the trace."""
import os
import random
from collections import Counter

import pytest

from lanetrace.query.errors import INTERNAL_ERROR, INVALID_PARAMS
from query.qhelpers import start_server
from query.tracegen import random_program

from views.vhelpers import engine, write

TRACE = "s/pid_1"


@pytest.fixture(scope="module")
def sql_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sql")
    events = random_program(random.Random(5), threads=3, steps=200, drop_rate=0.05)
    write(root, TRACE, events)
    return str(root)


@pytest.fixture(scope="module")
def eng(sql_root):
    return engine(sql_root)


def q(e, query, **kw):
    r = e.call("sql.query", dict(kw, traceId=TRACE, query=query, maxRows=10000))
    return [tuple(row) for row in r["rows"]]


def test_sql__counts_by_function_and_thread__then_equal_functions_list_per_thread(eng):
    rows = q(eng, "SELECT thread_id, function, count(*) FROM events WHERE kind = 'FunctionCall' "
                  "GROUP BY ALL ORDER BY ALL")
    want = []
    for tid in (4243, 4244, 4245):
        for f in eng.call("functions.list", {"traceId": TRACE,
                                             "filters": {"threadIds": [tid]}})["functions"]:
            if f["calls"]:
                want.append((tid, f["functionName"], f["calls"]))
    assert rows == sorted(want)
    times = q(eng, "SELECT function, sum(duration_ns), sum(self_ns), max(duration_ns) "
                   "FROM calls GROUP BY 1 ORDER BY 1")
    fl = eng.call("functions.list", {"traceId": TRACE})["functions"]
    assert times == sorted((f["functionName"], f["totalTimeNs"], f["selfTimeNs"],
                            f["maxDurationNs"]) for f in fl if f["maxDurationNs"])


def test_sql__top_durations__then_equal_the_longest_spans(eng):
    rows = q(eng, "SELECT call_id, function, duration_ns FROM calls "
                  "ORDER BY duration_ns DESC, call_id LIMIT 10")
    spans = eng.call("spans.list", {"traceId": TRACE, "limit": 10000})["spans"]
    spans.sort(key=lambda s: (-s["durationNs"], s["spanId"]))
    assert rows == [(s["spanId"], s["functionName"], s["durationNs"]) for s in spans[:10]]


def test_sql__time_window__then_equal_spans_and_events_in_it(eng):
    lo, hi = 1_001_000, 1_004_000
    rows = q(eng, f"SELECT call_id, thread_id, start_ns, end_ns, depth FROM calls "
                  f"WHERE start_ns >= {lo} AND end_ns <= {hi} ORDER BY call_id")
    spans = eng.call("spans.list", {"traceId": TRACE, "limit": 10000,
                                    "filters": {"timeStartNs": lo, "timeEndNs": hi},
                                    "projection": {"threadId": True, "depth": True}})["spans"]
    assert rows and rows == [(s["spanId"], s["threadId"], s["startTimeNs"], s["endTimeNs"],
                              s["depth"]) for s in spans]
    (n,), = q(eng, f"SELECT count(*) FROM events WHERE ts_ns BETWEEN {lo} AND {hi}")
    got = eng.call("events.get", {"traceId": TRACE, "limit": 0,
                                  "filters": {"timeStartNs": lo, "timeEndNs": hi}})
    assert n == got["metadata"]["totalCount"]


def test_sql__parent_call_id__then_the_call_that_encloses_one_level_up(eng):
    rows = q(eng, "SELECT c.call_id, p.call_id FROM calls c JOIN calls p "
                  "ON c.parent_call_id = p.call_id WHERE NOT (p.thread_id = c.thread_id "
                  "AND p.start_ns <= c.start_ns AND c.end_ns <= p.end_ns AND p.depth = c.depth - 1)")
    assert rows == []
    (kids,), = q(eng, "SELECT count(*) FROM calls WHERE parent_call_id IS NOT NULL")
    (n,), = q(eng, "SELECT sum(c) FROM (SELECT count(*) c FROM calls GROUP BY parent_call_id "
                   "HAVING parent_call_id IS NOT NULL)")
    assert kids == n > 0


def test_sql__functions_and_threads_tables__then_as_the_engine_lists_them(eng):
    fns = q(eng, "SELECT function, module, address FROM functions ORDER BY 1")
    fl = eng.call("functions.list", {"traceId": TRACE})["functions"]
    assert fns == sorted((f["functionName"], f["module"], f["address"]) for f in fl)
    assert q(eng, "SELECT thread_id FROM threads ORDER BY 1") == [(4243,), (4244,), (4245,)]


def test_sql__row_cap__then_truncated_and_said_so(eng):
    r = eng.call("sql.query", {"traceId": TRACE, "query": "SELECT * FROM range(50)",
                               "maxRows": 7})
    assert r["rows"] == [[i] for i in range(7)]
    assert r["metadata"]["truncated"] is True and r["metadata"]["returnedCount"] == 7
    assert r["columns"] == [{"name": "range", "type": "BIGINT"}]


@pytest.fixture(scope="module")
def server(sql_root):
    s = start_server(sql_root)
    yield s
    s.stop()


SECRET = "lanetrace-sandbox-secret"

HOSTILE = [
    ("SELECT * FROM read_csv('{f}')", "Permission Error"),
    ("SELECT * FROM read_text('{f}')", "Permission Error"),
    ("SELECT * FROM read_blob('{f}')", "Permission Error"),
    ("SELECT * FROM '{f}'", "Permission Error"),
    ("SELECT * FROM glob('/etc/*')", "Permission Error"),
    ("SELECT * FROM read_json_auto('http://127.0.0.1:9/x.json')", "Permission Error"),
    ("COPY calls TO '{f}.out'", "only SELECT queries are allowed (got COPY)"),
    ("COPY (SELECT 1) TO '{f}.out' (FORMAT csv)", "only SELECT queries are allowed (got COPY)"),
    ("ATTACH '{f}.db' AS x", "only SELECT queries are allowed (got ATTACH)"),
    ("INSTALL httpfs", "only SELECT queries are allowed (got LOAD)"),
    ("LOAD httpfs", "only SELECT queries are allowed (got LOAD)"),
    ("SET enable_external_access = true", "only SELECT queries are allowed (got SET)"),
    ("RESET lock_configuration", "only SELECT queries are allowed"),
    ("PRAGMA enable_profiling", "only SELECT queries are allowed (got PRAGMA)"),
    ("CALL pragma_version()", "only SELECT queries are allowed (got CALL)"),
    ("CREATE TABLE x AS SELECT 1", "only SELECT queries are allowed (got CREATE)"),
    ("SELECT 1; SET threads = 1", "one statement per query (got 2)"),
    ("EXPORT DATABASE '{f}.dir'", "only SELECT queries are allowed"),
    ("SELECT " + "1+" * 60_000 + "1", "query longer than 100000 characters"),
]


@pytest.mark.parametrize("query, why", HOSTILE, ids=[h[0][:30] for h in HOSTILE])
def test_sql_query__hostile_query__then_invalid_params_and_nothing_touched(server, tmp_path,
                                                                          query, why):
    f = tmp_path / "secret.csv"
    f.write_text(f"{SECRET}\n")
    before = sorted(os.listdir(tmp_path))
    r = server.rpc("sql.query", {"traceId": TRACE, "query": query.format(f=f)})
    assert r["error"]["code"] == INVALID_PARAMS, r
    assert why in r["error"]["data"] and r["error"]["data"].startswith("query: ")
    assert SECRET not in str(r)
    assert sorted(os.listdir(tmp_path)) == before
    # the connection of the next query is as locked as ever
    ok = server.rpc("sql.query", {"traceId": TRACE,
                                  "query": "SELECT current_setting('enable_external_access')"})
    assert ok["result"]["rows"] == [[False]]


def test_sql_query__endless_query__then_time_limit_error(server):
    r = server.rpc("sql.query", {"traceId": TRACE, "timeoutMs": 300,
                                 "query": "SELECT count(*) FROM range(1000000000000)"})
    assert r["error"] == {"code": INTERNAL_ERROR, "message": "Internal error",
                          "data": "query: time limit of 0.3 s exceeded"}


@pytest.mark.parametrize("params, why", [
    ({}, "query: required"),
    ({"query": "SELEC 1"}, "query: Parser Error"),
    ({"query": "SELECT nope FROM calls"}, "query: Binder Error"),
    ({"query": "SELECT 1", "maxRows": 10001}, "maxRows: must be <= 10000"),
    ({"query": "SELECT 1", "timeoutMs": 0}, "timeoutMs: must be >= 1"),
])
def test_sql_query__bad_params__then_invalid_params_saying_why(server, params, why):
    r = server.rpc("sql.query", dict(params, traceId=TRACE))
    assert r["error"]["code"] == INVALID_PARAMS and r["error"]["data"].startswith(why), r


def test_sql_query__group_by_through_the_server__then_rows_as_json(server):
    r = server.rpc("sql.query", {"traceId": TRACE, "query":
                                 "SELECT function, count(*) AS n, sum(duration_ns) AS total "
                                 "FROM calls GROUP BY 1 ORDER BY 1"})["result"]
    assert [c["name"] for c in r["columns"]] == ["function", "n", "total"]
    assert all(isinstance(row[2], int) for row in r["rows"])  # HUGEINT sums as JSON numbers
    assert Counter(r["rows"][i][0] for i in range(len(r["rows"]))).most_common(1)[0][1] == 1
