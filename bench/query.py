"""Query server benchmark on a trace of >= 10 million events.

    .venv/bin/python bench/query.py [--events 10000000] [--workdir DIR]
                                    [--requests 200] [--wrk-seconds 10]

Builds (or reuses, cached under the work dir) a lanetrace-flavoured trace
(function ids + in-stream symbol definitions, 8 threads interleaved in
drainer-sized chunks, so the file is not globally time-ordered), indexes it,
then against a real server:

* p50/p99 latency per method over a keep-alive connection: trace.info,
  events.get (first page, deep page by offset, deep page by cursor, filtered
  by function, filtered by time), spans.list (first and deep page, filtered),
  functions.list (all and filtered);
* requests/s at saturation for trace.info with 1 and 2 replicas, with wrk
  and a Lua POST script.

Targets: trace.info p99 < 5 ms, events.get/spans.list pages p99 < 50 ms,
>= 5,000 req/s for trace.info with 2 replicas on 2 cores.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
THREADS = 8
CHUNK = 256
FUNCS = [f"fn_{i:03d}" for i in range(64)]


# ---- trace generation (hand-rolled protobuf: the runtime is ~20x slower) ----

def _v(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _v(field << 3 | 2) + _v(len(payload)) + payload


def _event(eid, tid, ts, kind, fid, addr, seq, depth) -> bytes:
    sec, ns = divmod(ts, 1_000_000_000)
    body = b"\x08" + _v(eid) + b"\x10" + _v(tid) + _ld(3, b"\x08" + _v(sec) + b"\x10" + _v(ns))
    body += _ld(12 if kind == 0 else 13, b"\x10" + _v(addr) + b"\x78" + _v(fid))
    body += b"\xa0\x01" + _v(seq)
    if depth:
        body += b"\xa8\x01" + _v(depth)
    return _v(len(body)) + body


def _thread_stream(tid, n, rng, t0):
    """n call/return events of one thread: random call trees, ≤ 12 deep."""
    out = []
    stack = []
    ts = t0 + rng.randint(0, 1000)
    seq = 0
    while len(out) < n:
        ts += rng.randint(5, 400)
        seq += 1
        remaining = n - len(out)
        if stack and (remaining <= len(stack) or len(stack) >= 12 or rng.random() < 0.5):
            fid = stack.pop()
            out.append((ts, 1, fid, seq, len(stack)))
        else:
            fid = rng.randint(1, len(FUNCS))
            out.append((ts, 0, fid, seq, len(stack)))
            stack.append(fid)
    return out


def build_trace(trace_dir: str, n_events: int) -> None:
    from lanetrace.core import atf
    from lanetrace.core import atf_v4_pb2 as pb

    os.makedirs(trace_dir, exist_ok=True)
    rng = random.Random(42)
    t0 = 1_000_000_000_000
    per = n_events // THREADS
    streams = {4300 + i: _thread_stream(4300 + i, per, rng, t0) for i in range(THREADS)}
    tmp = os.path.join(trace_dir, "events.bin.tmp")
    eid = 0
    with open(tmp, "wb", buffering=1 << 22) as f:
        start = pb.Event(event_id=1, thread_id=0)
        atf.set_timestamp_ns(start, t0)
        start.trace_start.executable_path = "/usr/bin/bench"
        start.trace_start.operating_system = "linux"
        start.trace_start.cpu_architecture = "x86_64"
        start.trace_start.pid = 1
        f.write(atf.frame(start.SerializeToString()))
        eid = 1
        for i, name in enumerate(FUNCS, 1):
            d = pb.Event(event_id=eid + 1)
            eid += 1
            d.symbol_definition.function_id = i
            d.symbol_definition.symbol = name
            d.symbol_definition.module = "libbench.so"
            d.symbol_definition.address = 0x400000 + i * 64
            f.write(atf.frame(d.SerializeToString()))
        pos = {t: 0 for t in streams}
        t_end = t0
        while any(pos[t] < len(streams[t]) for t in streams):
            for tid in sorted(streams, reverse=True):
                chunk = streams[tid][pos[tid]:pos[tid] + CHUNK]
                pos[tid] += CHUNK
                parts = []
                for ts, kind, fid, seq, depth in chunk:
                    eid += 1
                    parts.append(_event(eid, tid, ts, kind, fid, 0x400000 + fid * 64, seq, depth))
                    t_end = max(t_end, ts)
                f.write(b"".join(parts))
        end = pb.Event(event_id=eid + 1, thread_id=0)
        atf.set_timestamp_ns(end, t_end + 1)
        end.trace_end.exit_code = 0
        f.write(atf.frame(end.SerializeToString()))
    os.replace(tmp, os.path.join(trace_dir, "events.bin"))
    manifest = {"formatVersion": "ATF V4", "os": "linux", "arch": "x86_64", "pid": 1,
                "sessionId": "bench", "timeStartNs": t0, "timeEndNs": t_end + 1,
                "eventCount": per * THREADS + 2, "drops": {}, "windows": [],
                "executablePath": "/usr/bin/bench"}
    with open(os.path.join(trace_dir, "trace.json"), "wb") as f:
        f.write(orjson.dumps(manifest))


def ensure_trace(workdir: str, n_events: int) -> tuple[str, str]:
    """(root, trace id) of the cached n-event bench trace, built if missing."""
    root = os.path.join(workdir, f"root-{n_events}")
    trace_id = "bench/pid_1"
    tdir = os.path.join(root, trace_id)
    if not os.path.exists(os.path.join(tdir, "trace.json")):
        print(f"building a {n_events:,}-event trace in {tdir} ...", flush=True)
        t = time.perf_counter()
        build_trace(tdir, n_events)
        print(f"  built in {time.perf_counter() - t:.1f} s", flush=True)
    return root, trace_id


# ---- measuring ----------------------------------------------------------------

def start_server(root, replicas, extra=()):
    cmd = [sys.executable, "-m", "lanetrace", "serve", "--trace-root", root,
           "--bind", "127.0.0.1:0", "--access-log", "off", "--replicas", str(replicas), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True)
    line = proc.stdout.readline().decode()
    m = re.search(r":(\d+)/rpc", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class Conn:
    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.n = 0

    def call(self, method, params):
        self.n += 1
        body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self.n})
        self.c.request("POST", "/rpc", body, {"Content-Type": "application/json"})
        r = self.c.getresponse()
        msg = orjson.loads(r.read())
        if "error" in msg:
            raise SystemExit(f"{method} failed: {msg['error']}")
        return msg["result"]


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def measure(conn, name, method, params, n, rows):
    """``params`` may be a function of the sample number: then every request
    is a new query (cold: no memoised selection to reuse)."""
    make = params if callable(params) else (lambda i: params)
    if not callable(params):
        conn.call(method, params)  # warm: first use of a selection memoises it
    lat = []
    for i in range(n):
        p = make(i)
        t = time.perf_counter()
        conn.call(method, p)
        lat.append((time.perf_counter() - t) * 1000)
    rows.append((name, pct(lat, 50), pct(lat, 99), max(lat)))
    print(f"  {name:<44} p50 {pct(lat, 50):8.3f} ms   p99 {pct(lat, 99):8.3f} ms", flush=True)


def run_wrk(port, seconds, trace_id, threads=2, conns=32):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    body = orjson.dumps({"jsonrpc": "2.0", "method": "trace.info",
                         "params": {"traceId": trace_id}, "id": 1}).decode()
    script.write('wrk.method = "POST"\n'
                 'wrk.headers["Content-Type"] = "application/json"\n'
                 f"wrk.body = [[{body}]]\n"
                 "done = function(summary, latency, requests)\n"
                 '  io.write(string.format("non2xx=%d errors=%d\\n", summary.errors.status, '
                 "summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
                 "end\n")
    script.close()
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "-s", script.name,
                          f"http://127.0.0.1:{port}/rpc"], capture_output=True, text=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"non2xx=(\d+) errors=(\d+)", out)
    return rps, out, errs.groups() if errs else ("?", "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lanetrace-bench-query"))
    ap.add_argument("--requests", type=int, default=200, help="samples per latency figure")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--rebuild-index", action="store_true", help="drop the cached index first")
    args = ap.parse_args()

    root, trace_id = ensure_trace(args.workdir, args.events)
    tdir = os.path.join(root, trace_id)
    size = os.path.getsize(os.path.join(tdir, "events.bin"))
    if args.rebuild_index:
        shutil.rmtree(os.path.join(tdir, "index"), ignore_errors=True)

    from lanetrace.query import index as ix
    t = time.perf_counter()
    idx, built = ix.open_or_build(tdir)
    took = time.perf_counter() - t
    n = idx.meta["eventCount"]
    print(f"trace: {n:,} events, {idx.meta['spanCount']:,} spans, {size / 1e6:.0f} MB; "
          f"index {'built' if built else 'loaded'} in {took:.2f} s "
          f"({'native scanner' if ix.HAVE_NATIVE else 'python scanner'})", flush=True)
    t_mid = int(idx.ev_ts[n // 2])
    t_start, t_end = int(idx.ev_ts[0]), int(idx.ev_ts[-1])
    t_deep = int(idx.ev_ts[int(n * 0.9)])
    del idx

    proc, port = start_server(root, 1)
    rows = []
    try:
        c = Conn(port)
        t = time.perf_counter()
        c.call("trace.info", {"traceId": trace_id})
        print(f"first request (opens the index): {(time.perf_counter() - t) * 1000:.1f} ms")
        deep = c.call("events.get", {"traceId": trace_id, "offset": int(n * 0.9), "limit": 1000})
        cursor = deep["metadata"]["nextCursor"]
        fdeep = c.call("events.get", {"traceId": trace_id, "filters": {"functionNames": ["fn_007"]},
                                      "limit": 1})
        ftotal = fdeep["metadata"]["totalCount"]
        print(f"latency, {args.requests} sequential requests each (limit 1000 unless noted):")
        R = args.requests
        measure(c, "trace.info", "trace.info", {"traceId": trace_id}, R, rows)
        measure(c, "events.get first page", "events.get", {"traceId": trace_id, "limit": 1000}, R, rows)
        measure(c, "events.get deep page (offset 90%)", "events.get",
                {"traceId": trace_id, "offset": int(n * 0.9), "limit": 1000}, R, rows)
        measure(c, "events.get deep page (cursor at 90%)", "events.get",
                {"traceId": trace_id, "cursor": cursor, "limit": 1000}, R, rows)
        measure(c, "events.get by function (deep, offset 50%)", "events.get",
                {"traceId": trace_id, "filters": {"functionNames": ["fn_007"]},
                 "offset": ftotal // 2, "limit": 1000}, R, rows)
        measure(c, "events.get by time (1000 events window)", "events.get",
                {"traceId": trace_id, "filters": {"timeStartNs": t_mid, "timeEndNs": t_mid + 30_000}},
                R, rows)
        measure(c, "events.get by time (from 90% on)", "events.get",
                {"traceId": trace_id, "filters": {"timeStartNs": t_deep}}, R, rows)
        measure(c, "events.get function+thread+type", "events.get",
                {"traceId": trace_id, "filters": {"functionNames": ["fn_007"], "threadIds": [4301],
                                                  "eventTypes": ["functionCall"]}}, R, rows)
        measure(c, "events.get orderBy threadId (deep)", "events.get",
                {"traceId": trace_id, "orderBy": "threadId", "offset": int(n * 0.6)}, R, rows)
        measure(c, "spans.list first page", "spans.list", {"traceId": trace_id}, R, rows)
        measure(c, "spans.list deep page (offset 90%)", "spans.list",
                {"traceId": trace_id, "offset": int(n * 0.45 * 0.9)}, R, rows)
        measure(c, "spans.list by function + min duration", "spans.list",
                {"traceId": trace_id, "filters": {"functionNames": ["fn_007"], "minDurationNs": 1000}},
                R, rows)
        measure(c, "spans.list time window (containment)", "spans.list",
                {"traceId": trace_id, "filters": {"timeStartNs": t_mid, "timeEndNs": t_mid + 5_000_000}},
                R, rows)
        rnd = random.Random(7)
        span_ns = t_end - t_start
        measure(c, "COLD events.get by function+time window", "events.get",
                lambda i: {"traceId": trace_id, "filters": {
                    "functionNames": [FUNCS[i % len(FUNCS)]],
                    "timeStartNs": t_start + rnd.randrange(span_ns // 2),
                    "timeEndNs": t_end - rnd.randrange(span_ns // 4)}}, R, rows)
        measure(c, "COLD events.get thread+type, deep offset", "events.get",
                lambda i: {"traceId": trace_id, "offset": 200_000 + i,
                           "filters": {"threadIds": [4300 + i % THREADS], "eventTypes": ["functionReturn"],
                                       "timeStartNs": t_start + i}}, R, rows)
        measure(c, "COLD events.get by time (1% window)", "events.get",
                lambda i: {"traceId": trace_id, "filters": {
                    "timeStartNs": (a := t_start + rnd.randrange(span_ns)), "timeEndNs": a + span_ns // 100}},
                R, rows)
        measure(c, "COLD spans.list by time (1% window, containment)", "spans.list",
                lambda i: {"traceId": trace_id, "filters": {
                    "timeStartNs": (a := t_start + rnd.randrange(span_ns)), "timeEndNs": a + span_ns // 100}},
                R, rows)
        measure(c, "COLD spans.list min duration + depth", "spans.list",
                lambda i: {"traceId": trace_id, "filters": {"minDurationNs": 2000 + i, "maxDepth": 3}},
                max(R // 4, 5), rows)
        measure(c, "functions.list (whole trace)", "functions.list", {"traceId": trace_id}, R, rows)
        measure(c, "functions.list (thread filter)", "functions.list",
                {"traceId": trace_id, "filters": {"threadIds": [4302]}}, max(R // 10, 5), rows)
        c.c.close()
    finally:
        stop_server(proc)

    print(f"throughput: trace.info with wrk -t2 -c32 -d{args.wrk_seconds}s "
          "(wrk shares the 2 cores with the server)")
    for replicas in (1, 2):
        proc, port = start_server(root, replicas)
        try:
            Conn(port).call("trace.info", {"traceId": trace_id})
            # every replica opens the index on its first request
            for _ in range(50):
                cc = Conn(port)
                cc.call("trace.info", {"traceId": trace_id})
                cc.c.close()
            rps, _, (non2xx, errs) = run_wrk(port, args.wrk_seconds, trace_id)
            print(f"  {replicas} replica(s): {rps:,.0f} req/s (non-2xx {non2xx}, socket errors {errs})",
                  flush=True)
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
