"""JSON-RPC 2.0 framing: request validation, batches, notifications, and the
mapping of every failure to an error object (never a stack trace)."""
from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import traceback

import orjson

from lanetrace.query.errors import (INTERNAL_ERROR, INVALID_REQUEST, OUTCOMES, PARSE_ERROR,
                                    RpcError)

MAX_BATCH = 1000
_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY
_NO_ID = object()
_PENDING = object()
_LONG_DIGITS = re.compile(rb"\d{19}")


def encode(obj) -> bytes:
    try:
        return orjson.dumps(obj, option=_DUMP_OPTS)
    except TypeError:  # integers beyond 64 bits (an echoed id): the stdlib copes
        return json.dumps(obj, separators=(",", ":"), default=str).encode()


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode(body: bytes):
    """orjson, except for bodies with integers beyond 64 bits, which orjson
    turns into floats (an id must come back exactly): those go to the stdlib."""
    if _LONG_DIGITS.search(body):
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise orjson.JSONDecodeError(str(exc), "", 0) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise exc from None


def error_response(code, data=None, id_=None) -> dict:
    return {"jsonrpc": "2.0", "error": RpcError(code, data).to_dict(), "id": id_}


class Dispatcher:
    """Turns a request body into a response body.

    ``engine.fast_call`` answers cheap requests inline on the event loop;
    everything else runs in ``executor`` so index builds and large scans never
    stall other connections. ``record(method, outcome, seconds)`` feeds the
    metrics."""

    def __init__(self, engine, executor=None, record=None, max_batch=MAX_BATCH):
        self.engine = engine
        self.executor = executor
        self.record = record or (lambda m, o, s: None)
        self.max_batch = max_batch
        self.known = set(engine.methods)
        self._opening: dict = {}

    def parse(self, body: bytes):
        """(done, value): done=True → value is (response bytes | None, names);
        done=False → value is the decoded message, to finish with ``finish``.
        Cheap single requests are answered here, without a task switch."""
        try:
            msg = decode(body)
        except orjson.JSONDecodeError as exc:
            self.record("-", OUTCOMES[PARSE_ERROR], 0.0)
            return True, (encode(error_response(PARSE_ERROR, f"invalid JSON: {exc}")), ["-"])
        if isinstance(msg, list):
            if not msg:
                self.record("-", OUTCOMES[INVALID_REQUEST], 0.0)
                return True, (encode(error_response(INVALID_REQUEST, "empty batch")), ["-"])
            if len(msg) > self.max_batch:
                self.record("-", OUTCOMES[INVALID_REQUEST], 0.0)
                return True, (encode(error_response(
                    INVALID_REQUEST, f"batch larger than {self.max_batch} requests")), ["-"])
            return False, msg
        resp, name = self._one_fast(msg)
        if resp is _PENDING:
            return False, msg
        return True, ((encode(resp) if resp is not None else None), [name])

    async def finish(self, msg):
        if isinstance(msg, list):
            out, names = [], []
            for item in msg:  # in order: batches are small and most items are fast
                resp, name = await self._one(item)
                names.append(name)
                if resp is not None:
                    out.append(resp)
            return (encode(out) if out else None), names
        resp, name = await self._one(msg)
        return (encode(resp) if resp is not None else None), [name]

    async def handle(self, body: bytes):
        """(response bytes or None for "no content", rpc method names)."""
        done, value = self.parse(body)
        return value if done else await self.finish(value)

    def _one_fast(self, req):
        t0 = time.perf_counter()
        try:
            id_, method, params = _validate(req)
        except RpcError as exc:
            self.record("-", OUTCOMES[exc.code], time.perf_counter() - t0)
            rid = req.get("id") if isinstance(req, dict) and _valid_id(req.get("id", None)) else None
            return {"jsonrpc": "2.0", "error": exc.to_dict(), "id": rid}, "-"
        label = method if method in self.known else "unknown"
        if id_ is _NO_ID:
            # every method is read-only: a notification has no observable effect
            self.record(label, "notification", time.perf_counter() - t0)
            return None, label
        try:
            result = self.engine.fast_call(method, params)
        except RpcError as exc:
            self.record(label, OUTCOMES.get(exc.code, "error"), time.perf_counter() - t0)
            return {"jsonrpc": "2.0", "error": exc.to_dict(), "id": id_}, label
        except Exception:  # let the full path report it
            return _PENDING, label
        if result is None:
            return _PENDING, label
        self.record(label, "ok", time.perf_counter() - t0)
        return {"jsonrpc": "2.0", "result": result, "id": id_}, label

    async def _one(self, req):
        resp, label = self._one_fast(req)
        if resp is not _PENDING:
            return resp, label
        t0 = time.perf_counter()
        id_, method, params = _validate(req)
        try:
            if self.executor is not None:
                pending = self.engine.pending_open(method, params)
                if pending is not None:
                    await self._open(pending)
            if self.executor is None:
                result = self.engine.call(method, params)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.executor, self.engine.call,
                                                    method, params)
            resp = {"jsonrpc": "2.0", "result": result, "id": id_}
            outcome = "ok"
        except RpcError as exc:
            resp = {"jsonrpc": "2.0", "error": exc.to_dict(), "id": id_}
            outcome = OUTCOMES.get(exc.code, "error")
        except Exception as exc:  # a bug: report it, keep the server up
            traceback.print_exc(file=sys.stderr)
            resp = error_response(INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}", id_)
            outcome = OUTCOMES[INTERNAL_ERROR]
        self.record(label, outcome, time.perf_counter() - t0)
        return resp, label


    async def _open(self, trace_id):
        """Open (maybe index) a trace once, however many requests wait for it:
        waiters hold no executor thread, so other traces keep being served."""
        fut = self._opening.get(trace_id)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.executor, self.engine.open_quietly, trace_id)
            self._opening[trace_id] = fut
            fut.add_done_callback(lambda f: self._opening.pop(trace_id, None))
        await asyncio.shield(fut)


def _valid_id(v) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _validate(req):
    if not isinstance(req, dict):
        raise RpcError(INVALID_REQUEST, "request must be an object")
    if req.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'jsonrpc: must be "2.0"')
    method = req.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, "method: must be a string")
    params = req.get("params")
    if "params" in req and not isinstance(params, (dict, list)):
        raise RpcError(INVALID_REQUEST, "params: must be an object or an array")
    if "id" in req:
        if not _valid_id(req["id"]):
            raise RpcError(INVALID_REQUEST, "id: must be a string, a number or null")
        return req["id"], method, params
    return _NO_ID, method, params
