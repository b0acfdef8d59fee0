"""JSON-RPC 2.0 and HTTP conformance of the query server (real processes)."""
import http.client
import os
import socket
import subprocess
import sys
import time

import orjson
import pytest

from .qhelpers import FOREIGN, OURS

INFO = {"jsonrpc": "2.0", "method": "trace.info", "params": {"traceId": OURS}}


def post(server, obj_or_bytes, headers=None):
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else orjson.dumps(obj_or_bytes)
    status, hdrs, raw = server.request(body=body, headers=headers)
    return status, hdrs, raw


def test_single_request__valid__then_200_json_result_with_same_id(server):
    status, hdrs, raw = post(server, {**INFO, "id": "abc"})
    assert status == 200
    assert hdrs["content-type"] == "application/json"
    msg = orjson.loads(raw)
    assert msg["jsonrpc"] == "2.0" and msg["id"] == "abc"
    assert msg["result"]["traceId"] == OURS


def test_single_request__null_id__then_answered_with_null_id(server):
    msg = orjson.loads(post(server, {**INFO, "id": None})[2])
    assert msg["id"] is None and "result" in msg


def test_notification__valid__then_204_without_body(server):
    status, hdrs, raw = post(server, INFO)
    assert status == 204 and raw == b""


def test_notification__unknown_method__then_still_no_response(server):
    status, _, raw = post(server, {"jsonrpc": "2.0", "method": "no.such"})
    assert status == 204 and raw == b""


def test_batch__mixed__then_array_of_responses_without_notifications(server):
    batch = [{**INFO, "id": 1}, INFO, {"jsonrpc": "2.0", "method": "nope", "id": 2}, 42,
             {"jsonrpc": "2.0", "method": "threads.list", "params": {"traceId": FOREIGN}, "id": 3}]
    status, _, raw = post(server, batch)
    assert status == 200
    out = orjson.loads(raw)
    assert isinstance(out, list) and len(out) == 4
    by_id = {r["id"]: r for r in out if r["id"] is not None}
    assert by_id[1]["result"]["traceId"] == OURS
    assert by_id[2]["error"] == {"code": -32601, "message": "Method not found", "data": "nope"}
    assert by_id[3]["result"]["threads"][0]["threadId"] == 4243
    invalid = [r for r in out if r["id"] is None]
    assert invalid[0]["error"]["code"] == -32600


def test_batch__empty__then_single_invalid_request(server):
    status, _, raw = post(server, b"[]")
    msg = orjson.loads(raw)
    assert status == 200 and isinstance(msg, dict)
    assert msg["error"]["code"] == -32600 and msg["id"] is None


def test_batch__only_notifications__then_204_no_body(server):
    status, _, raw = post(server, [INFO, INFO])
    assert status == 204 and raw == b""


def test_batch__invalid_entries__then_one_error_each(server):
    out = orjson.loads(post(server, b"[1, 2, 3]")[2])
    assert [r["error"]["code"] for r in out] == [-32600] * 3


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b"\xff\xfe", b'{"jsonrpc":"2.0",]'])
def test_parse_error__bad_json__then_32700_with_null_id(server, body):
    status, _, raw = post(server, body)
    msg = orjson.loads(raw)
    assert status == 200
    assert msg["error"]["code"] == -32700 and msg["error"]["message"] == "Parse error"
    assert msg["id"] is None


@pytest.mark.parametrize("req, why", [
    ({"method": "trace.list", "id": 1}, "jsonrpc"),
    ({"jsonrpc": "1.0", "method": "trace.list", "id": 1}, "jsonrpc"),
    ({"jsonrpc": "2.0", "id": 1}, "method"),
    ({"jsonrpc": "2.0", "method": 5, "id": 1}, "method"),
    ({"jsonrpc": "2.0", "method": "trace.list", "params": "x", "id": 1}, "params"),
    ({"jsonrpc": "2.0", "method": "trace.list", "id": {"a": 1}}, "id"),
    ({"jsonrpc": "2.0", "method": "trace.list", "id": True}, "id"),
    ("just a string", "object"),
])
def test_invalid_request__malformed_object__then_32600_saying_why(server, req, why):
    msg = orjson.loads(post(server, req)[2])
    assert msg["error"]["code"] == -32600
    assert msg["error"]["message"] == "Invalid request"
    assert why in msg["error"]["data"]


def test_method_not_found__unknown_method__then_32601_with_method_as_data(server):
    msg = server.rpc("events.nope", {})
    assert msg["error"] == {"code": -32601, "message": "Method not found", "data": "events.nope"}


def test_invalid_params__positional_params__then_32602(server):
    msg = server.rpc("trace.info", [OURS])
    assert msg["error"]["code"] == -32602 and "object" in msg["error"]["data"]


def test_invalid_params__unknown_param__then_32602_naming_it(server):
    msg = server.rpc("trace.info", {"traceId": OURS, "bogus": 1})
    assert msg["error"]["code"] == -32602 and "bogus" in msg["error"]["data"]


def test_trace_not_found__unknown_trace__then_32000(server):
    msg = server.rpc("trace.info", {"traceId": "nope/pid_1"})
    assert msg["error"] == {"code": -32000, "message": "Trace not found", "data": "nope/pid_1"}


def test_internal_error__corrupt_trace__then_32603_failed_to_load(fresh_server, root):
    bad = os.path.join(root, "bad", "pid_1")
    os.makedirs(bad)
    with open(os.path.join(bad, "trace.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(bad, "events.bin"), "wb") as f:
        f.write(b"\x05\xff\xff\xff\xff\xff")  # one whole frame that is not an Event
    s = fresh_server()
    msg = s.rpc("trace.info", {"traceId": "bad/pid_1"})
    assert msg["error"]["code"] == -32603
    assert msg["error"]["data"].startswith("failed to load trace:")


def test_http__unknown_path__then_404(server):
    assert server.request("GET", "/nope")[0] == 404
    assert server.request("POST", "/rpc/x", b"{}")[0] == 404


def test_http__get_on_rpc__then_405_with_allow(server):
    status, hdrs, _ = server.request("GET", "/rpc")
    assert status == 405 and hdrs["allow"] == "POST"


def test_http__body_over_cap__then_413(fresh_server):
    s = fresh_server("--max-body", "1000")
    status, _, raw = s.request(body=b" " * 1001)
    assert status == 413
    assert s.rpc("trace.list", {})["result"]["traces"]


def test_http__default_body_cap__then_1MiB_is_refused_with_413(server):
    status, _, _ = server.request(body=b"[" + b" " * (1 << 20) + b"]")
    assert status == 413


def test_http__keepalive_pipelined_requests__then_answers_in_order(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    reqs = b""
    for i in range(5):
        body = orjson.dumps({**INFO, "id": i})
        reqs += (b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    s.sendall(reqs)
    data = b""
    while data.count(b'"id":') < 5:
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    s.close()
    ids = [int(x.split(b"}")[0]) for x in data.split(b'"id":')[1:]]
    assert ids == [0, 1, 2, 3, 4]


def test_healthz__get__then_200_status_ok(server):
    status, hdrs, raw = server.request("GET", "/healthz")
    assert status == 200 and orjson.loads(raw) == {"status": "ok"}


def test_metrics__after_requests__then_prometheus_counters_histogram_and_cache(server):
    server.rpc("trace.info", {"traceId": OURS})
    server.rpc("trace.info", {"traceId": OURS})
    server.rpc("nope.nope", {})
    status, hdrs, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    assert 'method="trace.info",outcome="ok"}' in text
    assert 'method="unknown",outcome="method_not_found"}' in text
    assert "lanetrace_query_request_duration_seconds_bucket{" in text
    assert 'le="+Inf"' in text
    hits = [ln for ln in text.splitlines() if ln.startswith("lanetrace_query_cache_hits_total") and 'cache="index"' in ln]
    assert hits and int(hits[0].split()[-1]) >= 1


def test_access_log__requests__then_json_lines_with_request_id(fresh_server, tmp_path):
    log = tmp_path / "access.log"
    s = fresh_server("--access-log", str(log))
    status, hdrs, _ = s.request(body=orjson.dumps({**INFO, "id": 1}),
                                headers={"X-Request-Id": "req-123"})
    assert hdrs["x-request-id"] == "req-123"
    s.request("GET", "/healthz")
    s.stop()  # flushes the log
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    rpc = [x for x in lines if x["path"] == "/rpc"][0]
    assert rpc["requestId"] == "req-123" and rpc["rpc"] == ["trace.info"] and rpc["status"] == 200
    other = [x for x in lines if x["path"] == "/healthz"][0]
    assert len(other["requestId"]) >= 8


def test_rate_limit__burst_exceeded__then_32001(fresh_server):
    s = fresh_server("--rate-limit", "0.01", "--rate-burst", "2")
    codes = [s.rpc("trace.list", {}).get("error", {}).get("code") for _ in range(4)]
    assert codes[:2] == [None, None]
    assert codes[2:] == [-32001, -32001]


def test_connection_limit__more_connections__then_32002(fresh_server):
    s = fresh_server("--max-connections", "1")
    first = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    status, _, raw = s.request(body=orjson.dumps({**INFO, "id": 1}), conn=first)
    assert "result" in orjson.loads(raw)
    status, _, raw = s.request(body=orjson.dumps({**INFO, "id": 2}))  # a second connection
    msg = orjson.loads(raw)
    assert msg["error"]["code"] == -32002
    first.close()


def test_token__missing_or_wrong__then_401_and_right_token_then_200(fresh_server):
    s = fresh_server("--token", "s3cret")
    body = orjson.dumps({**INFO, "id": 1})
    assert s.request(body=body)[0] == 401
    assert s.request(body=body, headers={"Authorization": "Bearer wrong"})[0] == 401
    status, _, raw = s.request(body=body, headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and "result" in orjson.loads(raw)
    assert s.request("GET", "/healthz")[0] == 200


def test_token__from_environment__then_enforced(fresh_server):
    s = fresh_server(env={"LANETRACE_TOKEN": "envtok"})
    body = orjson.dumps({**INFO, "id": 1})
    assert s.request(body=body)[0] == 401
    assert s.request(body=body, headers={"Authorization": "Bearer envtok"})[0] == 200


def test_bind__non_loopback_without_token__then_refused(root):
    env = {k: v for k, v in os.environ.items() if k != "LANETRACE_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "lanetrace", "serve", "--trace-root", root,
                        "--bind", "0.0.0.0:0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "requires a token" in r.stderr


def test_index__first_open__then_persisted_next_to_trace(fresh_server, root):
    s = fresh_server()
    assert s.result("trace.info", {"traceId": OURS})["eventCount"] == 15
    idir = os.path.join(root, OURS, "index")
    assert os.path.isfile(os.path.join(idir, "meta.json"))
    assert os.path.isfile(os.path.join(idir, "ev_ts.npy"))


def test_index__trace_grows__then_rebuilt_and_old_cursor_rejected(fresh_server, root):
    from . import tracegen

    s = fresh_server()
    page = s.result("events.get", {"traceId": OURS, "limit": 2})
    cursor = page["metadata"]["nextCursor"]
    evs = tracegen.simple_events() + [tracegen.Ev("call", 2000, 4245, "late", "x")]
    time.sleep(0.01)  # a distinct mtime even on coarse clocks
    tracegen.write_trace(os.path.join(root, OURS), evs, flavour="ours")
    assert s.result("trace.info", {"traceId": OURS})["eventCount"] == 16
    msg = s.rpc("events.get", {"traceId": OURS, "limit": 2, "cursor": cursor})
    assert msg["error"]["code"] == -32602 and "cursor" in msg["error"]["data"]


def test_index_build__trace_locked_by_another_builder__then_other_traces_still_served(fresh_server, root):
    """Requests for a trace whose index another replica is building wait for
    it; they must not starve requests for other traces (more waiters than
    server threads here)."""
    import fcntl
    import threading

    s = fresh_server("--workers", "2")
    lock = open(os.path.join(root, FOREIGN, "index.lock"), "a+b")
    fcntl.flock(lock, fcntl.LOCK_EX)  # we are "the other replica", mid-build
    results = []

    def waiter():
        results.append(s.rpc("trace.info", {"traceId": FOREIGN}))

    threads = [threading.Thread(target=waiter) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        while True:  # until the waiters' connections are open on the server
            text = s.request("GET", "/metrics")[2].decode()
            conns = [ln for ln in text.splitlines() if ln.startswith("lanetrace_query_connections{")]
            if int(conns[0].split()[-1]) >= 7:
                break
        for _ in range(5):  # other traces are answered meanwhile
            assert s.result("events.get", {"traceId": OURS, "limit": 1})["metadata"]["totalCount"] == 15
        assert s.request("GET", "/healthz")[0] == 200
        assert results == []  # nobody got past the lock
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    for t in threads:
        t.join(60)
    assert [r["result"]["eventCount"] for r in results] == [15] * 6


def test_idle_timeout__half_sent_request__then_connection_closed(fresh_server):
    s = fresh_server("--idle-timeout", "0.5")
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Le")  # and then nothing (slowloris)
    sock.settimeout(60)  # liveness bound: the server's sweep closes it well before
    assert sock.recv(100) == b""
    sock.close()
    assert s.request("GET", "/healthz")[0] == 200


def test_expect_continue__body_withheld__then_100_then_answer(server):
    body = orjson.dumps({**INFO, "id": 9})
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(60)
    sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body)
    data = b""
    while b'"id":9}' not in data:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    sock.close()


def test_request_id__control_characters__then_replaced_not_echoed(server):
    body = orjson.dumps({**INFO, "id": 1})
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(60)
    sock.sendall(b"POST /rpc HTTP/1.1\r\nX-Request-Id: abc\nX-Evil: 1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    data = b""
    while b'"id":1}' not in data:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    sock.close()
    head = data.split(b"\r\n\r\n")[0]
    assert b"X-Evil" not in head and b"abc" not in head
