"""HTTP/1.1 front of the query engine: a lean asyncio protocol (keep-alive,
pipelining, body cap, bearer token, rate and connection limits), structured
access logs, /healthz and /metrics.

Why not http.server: it spends a thread per connection and parses headers
with the email package, which caps it near 2k req/s; this protocol does the
same job at several times that on one core.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hmac
import ipaddress
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import orjson

from lanetrace.query.engine import Engine
from lanetrace.query.errors import INVALID_REQUEST, TOO_MANY_CONNECTIONS, TOO_MANY_REQUESTS
from lanetrace.query.metrics import Metrics
from lanetrace.query.rpc import Dispatcher, encode, error_response

MAX_HEADER = 16 << 10
DRAIN_MAX = 64 << 20
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 505: "HTTP Version Not Supported"}


@dataclass
class ServerConfig:
    trace_root: str
    host: str = "127.0.0.1"
    port: int = 9090
    token: str | None = None
    max_body: int = 1 << 20
    max_connections: int = 1024
    rate_limit: float = 0.0          # requests/s per client address; 0 = off
    rate_burst: float = 0.0
    access_log: str | None = "-"     # "-" = stderr, None = off
    reuseport: bool = False
    index_cache: str | None = None
    workers: int = 4
    idle_timeout: float = 60.0       # close keep-alive connections idle this long


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccessLog:
    """JSON lines, buffered and flushed every 200 ms (a write per request
    would cost a syscall at thousands of requests per second)."""

    def __init__(self, target):
        self.buf = []
        if target is None:
            self.f = None
        elif target == "-":
            self.f = sys.stderr.buffer
        else:
            self.f = open(target, "ab")

    def write(self, rec: dict):
        if self.f is not None:
            self.buf.append(orjson.dumps(rec) + b"\n")

    def flush(self):
        if self.f is not None and self.buf:
            data = b"".join(self.buf)
            self.buf.clear()
            try:
                self.f.write(data)
                self.f.flush()
            except (OSError, ValueError):
                pass


class RateLimiter:
    """Token bucket per client address."""

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = max(burst, rate, 1.0)
        self.buckets: dict[str, list] = {}

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        b = self.buckets.get(client)
        if b is None:
            if len(self.buckets) > 10000:
                self.buckets.clear()
            b = self.buckets[client] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False


class QueryServer:
    def __init__(self, cfg: ServerConfig, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine or Engine(cfg.trace_root, cfg.index_cache)
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=cfg.workers,
                                                              thread_name_prefix="query")
        self.dispatcher = Dispatcher(self.engine, self.executor, self.metrics.record)
        self.log = AccessLog(cfg.access_log)
        self.limiter = RateLimiter(cfg.rate_limit, cfg.rate_burst)
        self.token = cfg.token.encode() if cfg.token else None
        self.server: asyncio.AbstractServer | None = None
        self.pid = str(os.getpid()).encode()
        self.conns: set = set()

    async def start(self):
        loop = asyncio.get_running_loop()
        sock = make_socket(self.cfg.host, self.cfg.port, self.cfg.reuseport)
        self.server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=1024)
        self._flusher = loop.create_task(self._flush_loop())
        return sock.getsockname()[1]

    async def _flush_loop(self):
        sweep = 0.0
        while True:
            await asyncio.sleep(0.2)
            self.log.flush()
            now = time.monotonic()
            if now - sweep > min(5.0, self.cfg.idle_timeout / 2):
                sweep = now
                # idle or trickling (slowloris) connections would pin connection slots
                for c in [c for c in self.conns if not c.busy and now - c.last > self.cfg.idle_timeout]:
                    c.transport.close()

    async def close(self):
        if self.server:
            self.server.close()
        self.log.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


def make_socket(host: str, port: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("srv", "transport", "buf", "busy", "client", "closing", "over_limit", "discard",
                 "last", "continued")

    def __init__(self, srv: QueryServer):
        self.srv = srv
        self.transport = None
        self.buf = bytearray()
        self.busy = False
        self.closing = False
        self.client = "-"
        self.over_limit = False
        self.discard = 0
        self.last = time.monotonic()
        self.continued = False

    def connection_made(self, transport):
        self.transport = transport
        self.srv.conns.add(self)
        m = self.srv.metrics
        m.connections += 1
        self.over_limit = m.connections > self.srv.cfg.max_connections
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "-"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc):
        self.srv.conns.discard(self)
        self.srv.metrics.connections -= 1
        self.closing = True

    def data_received(self, data):
        if self.discard:
            # the rest of a refused (413) body: read it so the client sees our answer
            self.discard -= min(self.discard, len(data))
            if not self.discard:
                self.transport.close()
            return
        self.buf += data
        if not self.busy:
            self._process()
        elif len(self.buf) > self.srv.cfg.max_body + MAX_HEADER:
            self.transport.pause_reading()  # pipelining ahead of a slow request: backpressure

    # One request at a time per connection keeps pipelined responses in order.
    def _process(self):
        while not self.busy and not self.closing:
            req = self._parse()
            if req is None:
                if len(self.buf) > self.srv.cfg.max_body + MAX_HEADER:
                    self.transport.pause_reading()
                return
            self._handle(*req)

    def _parse(self):
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER:
                self._fail(431, "request headers too large")
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._fail(400, "malformed request line")
            return None
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if not sep:
                self._fail(400, "malformed header line")
                return None
            headers[k.strip().lower()] = v.strip()
        if "transfer-encoding" in headers:
            self._fail(411, "chunked request bodies are not supported; send Content-Length")
            return None
        cl = headers.get("content-length", "0")
        if not cl.isdigit():
            self._fail(400, "invalid Content-Length")
            return None
        length = int(cl)
        expect = headers.get("expect", "").lower() == "100-continue"
        if length > self.srv.cfg.max_body:
            # a client that asked "Expect: 100-continue" sends no body after a refusal
            pending = 0 if expect else length - (len(buf) - end - 4)
            self._fail(413, f"request body exceeds {self.srv.cfg.max_body} bytes",
                       headers.get("x-request-id"), drain=pending if pending <= DRAIN_MAX else 0)
            return None
        if len(buf) < end + 4 + length:
            if expect and not self.continued:
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        self.continued = False
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        keep = headers.get("connection", "").lower()
        keep_alive = keep != "close" if version == "HTTP/1.1" else keep == "keep-alive"
        return method, target, headers, body, keep_alive

    def _fail(self, status, why, rid=None, drain=0):
        """Answer an HTTP-level failure and close: the stream position is lost.
        With ``drain``, first swallow that many more bytes of the body."""
        body = encode(error_response(INVALID_REQUEST, why))
        self._respond(status, body, drain > 0, _request_id(rid), "-", "-",
                      time.perf_counter(), [], extra=b"Connection: close\r\n" if drain > 0 else b"")
        self.buf.clear()
        self.closing = True
        if drain > 0:
            self.discard = drain
        elif not self.transport.is_closing():
            self.transport.close()

    def _handle(self, method, target, headers, body, keep_alive):
        t0 = time.perf_counter()
        self.last = time.monotonic()
        srv = self.srv
        rid = _request_id(headers.get("x-request-id"))
        path = target.split("?", 1)[0]
        if path == "/rpc":
            if method != "POST":
                return self._respond(405, encode(error_response(
                    INVALID_REQUEST, f"method {method} not allowed on /rpc; use POST")),
                    keep_alive, rid, method, path, t0, [], extra=b"Allow: POST\r\n")
            if not self._authorized(headers):
                return self._respond(401, encode(error_response(
                    INVALID_REQUEST, "missing or invalid bearer token")), keep_alive, rid,
                    method, path, t0, [], extra=b"WWW-Authenticate: Bearer\r\n")
            if self.over_limit:
                srv.metrics.record("-", "connection_limited", 0.0)
                return self._respond(200, encode(error_response(
                    TOO_MANY_CONNECTIONS, f"more than {srv.cfg.max_connections} open connections")),
                    False, rid, method, path, t0, ["-"])
            if not srv.limiter.allow(self.client):
                srv.metrics.record("-", "rate_limited", 0.0)
                return self._respond(200, encode(error_response(
                    TOO_MANY_REQUESTS, f"more than {srv.cfg.rate_limit:g} requests/s")),
                    keep_alive, rid, method, path, t0, ["-"], extra=b"Retry-After: 1\r\n")
            done, value = srv.dispatcher.parse(body)
            if done:
                return self._rpc_done(*value, keep_alive, rid, method, path, t0)
            self.busy = True
            task = asyncio.get_running_loop().create_task(srv.dispatcher.finish(value))
            task.add_done_callback(lambda f: self._async_done(f, keep_alive, rid, method, path, t0))
            return None
        if path == "/healthz" and method in ("GET", "HEAD"):
            return self._respond(200, b'{"status":"ok"}', keep_alive, rid, method, path, t0, [])
        if path == "/metrics" and method in ("GET", "HEAD"):
            if not self._authorized(headers):
                return self._respond(401, encode(error_response(
                    INVALID_REQUEST, "missing or invalid bearer token")), keep_alive, rid,
                    method, path, t0, [], extra=b"WWW-Authenticate: Bearer\r\n")
            return self._respond(200, srv.metrics.render(srv.engine), keep_alive, rid, method,
                                 path, t0, [], ctype=b"text/plain; version=0.0.4; charset=utf-8")
        if path in ("/healthz", "/metrics"):
            return self._respond(405, encode(error_response(
                INVALID_REQUEST, f"method {method} not allowed on {path}")), keep_alive, rid,
                method, path, t0, [], extra=b"Allow: GET\r\n")
        return self._respond(404, encode(error_response(INVALID_REQUEST, f"no such path: {path[:200]}")),
                             keep_alive, rid, method, path, t0, [])

    def _authorized(self, headers) -> bool:
        token = self.srv.token
        if token is None:
            return True
        got = headers.get("authorization", "")
        if not got.startswith("Bearer "):
            return False
        return hmac.compare_digest(got[7:].strip().encode(), token)

    def _async_done(self, fut, keep_alive, rid, method, path, t0):
        self.busy = False
        if self.closing:
            return
        try:
            resp, names = fut.result()
        except Exception as exc:  # the dispatcher maps errors itself; this is a last resort
            resp = encode(error_response(-32603, f"unexpected {type(exc).__name__}"))
            names = ["-"]
        self._rpc_done(resp, names, keep_alive, rid, method, path, t0)
        if not self.closing:
            self.transport.resume_reading()
            self._process()

    def _rpc_done(self, resp, names, keep_alive, rid, method, path, t0):
        if resp is None:
            return self._respond(204, b"", keep_alive, rid, method, path, t0, names)
        return self._respond(200, resp, keep_alive, rid, method, path, t0, names)

    def _respond(self, status, body, keep_alive, rid, method, path, t0, names,
                 ctype=b"application/json", extra=b""):
        if self.closing:
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "OK").encode()),
                b"X-Request-Id: ", rid.encode("latin-1", "replace")[:128], b"\r\n",
                b"X-Lanetrace-Replica: ", self.srv.pid, b"\r\n", extra]
        if status != 204:
            head += [b"Content-Type: ", ctype, b"\r\nContent-Length: %d\r\n" % len(body)]
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + (body if method != "HEAD" else b""))
        self.srv.metrics.http_done(path if path in ("/rpc", "/healthz", "/metrics") else "other", status)
        self.srv.log.write({"ts": time.time(), "requestId": rid, "client": self.client,
                            "method": method, "path": path[:200], "status": status,
                            "rpc": names, "bytes": len(body),
                            "durationMs": round((time.perf_counter() - t0) * 1000, 3),
                            "replica": os.getpid()})
        if not keep_alive:
            self.closing = True
            self.transport.close()


def _request_id(given) -> str:
    """The client's X-Request-Id if it is a sane token (it is echoed in a
    header: no control characters), else a fresh one."""
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return uuid.uuid4().hex[:16]


async def serve_forever(cfg: ServerConfig, ready=None):
    srv = QueryServer(cfg)
    port = await srv.start()
    # imports and startup state never die: keep them out of every GC pass, so a
    # full collection stays short (it shows in the latency tail otherwise)
    gc.collect()
    gc.freeze()
    if ready:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await srv.close()
