"""Clients for the query API: over HTTP, or the engine in-process. Both
return the JSON-RPC ``result`` or raise :class:`QueryError`."""
from __future__ import annotations

import itertools
import urllib.error
import urllib.request

import orjson


class QueryError(Exception):
    def __init__(self, code, message, data=None):
        super().__init__(f"{message} ({code})" + (f": {data}" if data is not None else ""))
        self.code, self.message, self.data = code, message, data


class HttpClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/rpc") else url + "/rpc"
        self.token = token
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, params: dict | None = None):
        body = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            body["params"] = params
        req = urllib.request.Request(self.url, data=orjson.dumps(body), method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = orjson.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                raise QueryError(exc.code, f"HTTP {exc.code} {exc.reason}") from None
            raise QueryError(err.get("code"), f"HTTP {exc.code}: {err.get('message')}",
                             err.get("data")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None
        msg = orjson.loads(raw)
        if "error" in msg:
            e = msg["error"]
            raise QueryError(e.get("code"), e.get("message"), e.get("data"))
        return msg["result"]


def server_is_up(url: str, timeout: float = 0.3) -> bool:
    base = url.rstrip("/")
    if base.endswith("/rpc"):
        base = base[:-4]
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class LocalClient:
    """The same engine, without a server (the CLI's fallback)."""

    def __init__(self, trace_root: str):
        from lanetrace.query.engine import Engine

        self.engine = Engine(trace_root, subprocess_builds=False)

    def call(self, method: str, params: dict | None = None):
        from lanetrace.query.errors import RpcError

        try:
            return orjson.loads(orjson.dumps(self.engine.call(method, params),
                                             option=orjson.OPT_SERIALIZE_NUMPY))
        except RpcError as exc:
            e = exc.to_dict()
            raise QueryError(e["code"], e["message"], e.get("data")) from None
