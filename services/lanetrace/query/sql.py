"""SQL over a trace with DuckDB, in-process, reading the memory-mapped index
arrays through zero-copy Arrow tables (nothing is loaded into a database).

Every query runs on a fresh in-memory connection that can only see the four
trace tables: external access (files, network, extensions) is off, Python
replacement scans are off, the configuration is locked before the query
runs, and only one SELECT statement (SELECT, WITH, VALUES, FROM-first,
DESCRIBE, SHOW, SUMMARIZE) is accepted. A row cap and a time limit
(``connection.interrupt``) bound the work.
"""
from __future__ import annotations

import decimal
import threading
import time

import numpy as np

from lanetrace.query import index as ix
from lanetrace.query import params as P
from lanetrace.query.errors import INTERNAL_ERROR, RpcError, invalid_params
from lanetrace.query.store import thread_names

MAX_QUERY_CHARS = 100_000
DEFAULT_MAX_ROWS = 1000
MAX_ROWS = 10_000
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
MEMORY_LIMIT = "2GB"

# table -> [(column, SQL type, meaning)]; `lanetrace sql --schema` prints this
SCHEMA = {
    "calls": [
        ("call_id", "INTEGER", "span id: calls numbered by start time (as spans.list spanId)"),
        ("thread_id", "INTEGER", "kernel thread id"),
        ("function", "VARCHAR", "function name (NULL when the trace has none)"),
        ("module", "VARCHAR", "module (shared object or executable) of the function"),
        ("start_ns", "BIGINT", "call time, ns (CLOCK_MONOTONIC)"),
        ("end_ns", "BIGINT", "return time, ns"),
        ("duration_ns", "BIGINT", "end_ns - start_ns"),
        ("self_ns", "BIGINT", "duration minus the durations of completed direct children"),
        ("depth", "INTEGER", "stack depth at entry, 0 = outermost"),
        ("parent_call_id", "INTEGER", "call_id of the calling call; NULL for a root or when "
                                      "the caller never returned"),
    ],
    "events": [
        ("ts_ns", "BIGINT", "event time, ns"),
        ("thread_id", "INTEGER", "kernel thread id (0 for TraceStart/TraceEnd)"),
        ("kind", "VARCHAR", "TraceStart, TraceEnd, FunctionCall, FunctionReturn, "
                            "SignalDelivery or Unknown"),
        ("function", "VARCHAR", "function of a call/return, else NULL"),
        ("module", "VARCHAR", "its module"),
        ("depth", "INTEGER", "call depth of a call/return, else NULL"),
        ("seq", "UBIGINT", "per-thread sequence number (NULL when the writer has none)"),
    ],
    "functions": [
        ("function_id", "INTEGER", "function number within this trace"),
        ("function", "VARCHAR", "name"),
        ("module", "VARCHAR", "module"),
        ("address", "UBIGINT", "runtime address"),
        ("source_file", "VARCHAR", "DWARF source file, NULL without debug info"),
        ("source_line", "INTEGER", "DWARF line"),
    ],
    "threads": [
        ("thread_id", "INTEGER", "kernel thread id"),
        ("name", "VARCHAR", "thread name where the trace recorded it, else NULL"),
    ],
}

_ALLOWED = None  # the SELECT statement type, resolved on first use


def _pa():
    import pyarrow as pa
    return pa


def _plain(pa, typ, arr):
    arr = np.ascontiguousarray(arr)
    return pa.Array.from_buffers(typ, len(arr), [None, pa.py_buffer(arr)])


def _nullable(pa, typ, arr, valid):
    arr = np.ascontiguousarray(arr)
    bits = np.packbits(valid, bitorder="little")
    return pa.Array.from_buffers(typ, len(arr), [pa.py_buffer(bits), pa.py_buffer(arr)])


def _names(pa, values):
    # "" (no name / no module) stays in the dictionary but no row points at it:
    # those rows are null (a dictionary holding nulls is not valid Parquet)
    return pa.array(list(values) or [""], pa.string())


def tables(t) -> dict:
    """The four tables of a trace as Arrow tables over its index arrays
    (cached on the opened trace; only validity bitmaps and call ids are new)."""
    got = t.cache.get("arrow")
    if got is not None:
        return got
    pa = _pa()
    idx = t.idx
    names = _names(pa, t.names)
    modules = _names(pa, t.modules)

    has_name = np.array([bool(v) for v in t.names] + [False], bool)
    has_module = np.array([bool(v) for v in t.modules] + [False], bool)

    def by_function(fidx):
        fidx = np.asarray(fidx, np.int32)
        out = []
        for dictionary, named in ((names, has_name), (modules, has_module)):
            valid = named[fidx]  # fidx -1 reads the trailing False
            ind = (_plain(pa, pa.int32(), fidx) if valid.all()
                   else _nullable(pa, pa.int32(), fidx, valid))
            out.append(pa.DictionaryArray.from_arrays(ind, dictionary))
        return out

    n = len(idx.sp_start)
    sp_f, sp_m = by_function(idx.sp_fidx)
    parent = np.asarray(idx.sp_parent)
    calls = pa.table({
        "call_id": _plain(pa, pa.int32(), np.arange(n, dtype=np.int32)),
        "thread_id": _plain(pa, pa.int32(), idx.sp_tid),
        "function": sp_f, "module": sp_m,
        "start_ns": _plain(pa, pa.int64(), idx.sp_start),
        "end_ns": _plain(pa, pa.int64(), idx.sp_end),
        "duration_ns": _plain(pa, pa.int64(), idx.sp_dur),
        "self_ns": _plain(pa, pa.int64(), idx.sp_self),
        "depth": _plain(pa, pa.int32(), idx.sp_depth),
        "parent_call_id": _nullable(pa, pa.int32(), parent, parent >= 0),
    })
    ev_f, ev_m = by_function(idx.ev_fidx)
    depth = np.asarray(idx.ev_depth)
    seq = np.asarray(idx.ev_seq)
    kinds = np.asarray(idx.ev_kind)
    kinds = np.where(kinds < len(ix.KIND_NAMES), kinds, ix.K_UNKNOWN).astype(np.uint8)
    events = pa.table({
        "ts_ns": _plain(pa, pa.int64(), idx.ev_ts),
        "thread_id": _plain(pa, pa.int32(), idx.ev_tid),
        "kind": pa.DictionaryArray.from_arrays(_plain(pa, pa.uint8(), kinds),
                                               pa.array(list(ix.KIND_NAMES), pa.string())),
        "function": ev_f, "module": ev_m,
        "depth": _nullable(pa, pa.int32(), depth, depth >= 0),
        "seq": _nullable(pa, pa.uint64(), seq, seq > 0),
    })
    fns = idx.meta["functions"]
    sources = fns.get("source") or [""] * len(fns["name"])
    files, lines = [], []
    for s in sources:
        file, _, line = s.rpartition(":")
        if s and line.isdigit():
            files.append(file)
            lines.append(int(line))
        else:
            files.append(s or None)
            lines.append(None)
    functions = pa.table({
        "function_id": pa.array(range(len(fns["name"])), pa.int32()),
        "function": pa.array([v or None for v in t.names], pa.string()),
        "module": pa.array([v or None for v in t.modules], pa.string()),
        "address": pa.array(fns["address"], pa.uint64()),
        "source_file": pa.array(files, pa.string()),
        "source_line": pa.array(lines, pa.int32()),
    })
    tnames = thread_names(t.manifest)
    tids = [th["threadId"] for th in idx.meta["threads"] if th["threadId"] != 0]
    threads = pa.table({"thread_id": pa.array(tids, pa.int32()),
                        "name": pa.array([tnames.get(x) for x in tids], pa.string())})
    got = t.cache["arrow"] = {"calls": calls, "events": events, "functions": functions,
                              "threads": threads}
    return got


class SqlError(Exception):
    """A query refused or failed; ``refused`` says it was the user's query."""

    def __init__(self, message, refused=True):
        super().__init__(message)
        self.refused = refused


def connect(t):
    """A sandboxed in-memory DuckDB connection seeing only the trace tables."""
    import duckdb

    con = duckdb.connect(":memory:", config={
        "enable_external_access": False, "python_enable_replacements": False,
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "allow_community_extensions": False, "memory_limit": MEMORY_LIMIT})
    for name, table in tables(t).items():
        con.register(name, table)
    con.execute("SET lock_configuration = true")
    return con


def check(con, query: str) -> None:
    """Refuse anything but one read-only SELECT-like statement."""
    import duckdb

    if not isinstance(query, str) or not query.strip():
        raise SqlError("empty query")
    if len(query) > MAX_QUERY_CHARS:
        raise SqlError(f"query longer than {MAX_QUERY_CHARS} characters")
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(_first_line(exc)) from None
    if len(stmts) != 1:
        raise SqlError(f"one statement per query (got {len(stmts)})")
    if stmts[0].type != duckdb.StatementType.SELECT:
        raise SqlError(f"only SELECT queries are allowed (got {stmts[0].type.name})")


def execute(t, query: str, max_rows: int | None, timeout_s: float | None):
    """Run ``query``: (column names, column types, rows as lists, truncated).
    ``max_rows=None`` means all rows (the CLI); rows are plain JSON values."""
    import duckdb

    con = connect(t)
    timer = None
    try:
        check(con, query)
        if timeout_s:
            timer = threading.Timer(timeout_s, con.interrupt)
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        try:
            res = con.execute(query)
            names = [d[0] for d in res.description]
            types = [str(d[1]) for d in res.description]
            rows, truncated = [], False
            while True:
                want = 2048 if max_rows is None else min(2048, max_rows + 1 - len(rows))
                chunk = res.fetchmany(want)
                if not chunk:
                    break
                rows.extend([_json(v) for v in r] for r in chunk)
                if max_rows is not None and len(rows) > max_rows:
                    del rows[max_rows:]
                    truncated = True
                    break
        except duckdb.InterruptException:
            raise SqlError(f"time limit of {timeout_s:g} s exceeded", refused=False) from None
        except duckdb.Error as exc:
            if timeout_s and time.monotonic() - started >= timeout_s:
                raise SqlError(f"time limit of {timeout_s:g} s exceeded", refused=False) from None
            raise SqlError(_first_line(exc)) from None
        return names, types, rows, truncated
    finally:
        if timer is not None:
            timer.cancel()
        con.close()


def iter_rows(t, query: str):
    """(column names, types, row iterator) for streaming output (the CLI)."""
    import duckdb

    con = connect(t)
    check(con, query)
    try:
        res = con.execute(query)
    except duckdb.Error as exc:
        con.close()
        raise SqlError(_first_line(exc)) from None
    names = [d[0] for d in res.description]
    types = [str(d[1]) for d in res.description]

    def rows():
        try:
            while True:
                chunk = res.fetchmany(2048)
                if not chunk:
                    return
                for r in chunk:
                    yield [_json(v) for v in r]
        except duckdb.Error as exc:
            raise SqlError(_first_line(exc)) from None
        finally:
            con.close()

    return names, types, rows()


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.split("\n\n", 1)[0].replace("\n", " ")


def _json(v):
    """DuckDB values as JSON values (HUGEINT sums arrive as int, DECIMAL as
    Decimal, timestamps as datetime...)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    return str(v)


def schema_text() -> str:
    out = []
    for table, cols in SCHEMA.items():
        out.append(f"{table}(")
        for i, (name, typ, meaning) in enumerate(cols):
            sep = "," if i < len(cols) - 1 else ""
            out.append(f"  {name} {typ}{sep}".ljust(32) + f"-- {meaning}")
        out.append(")")
    return "\n".join(out) + "\n"


# ---- sql.query -----------------------------------------------------------------

def sql_query(store, params) -> dict:
    """Run one read-only SQL query over a trace.

    Params: ``{traceId, query, maxRows=1000 (max 10000), timeoutMs=10000
    (max 60000)}``. Result: ``{columns: [{name, type}], rows: [[...]],
    metadata: {returnedCount, truncated, executionTimeMs}}``; ``truncated``
    says more rows existed than ``maxRows``. A refused or failing query is
    Invalid params (``data`` = ``query: <why>``); the time limit is an
    Internal error saying so.
    """
    t0 = time.perf_counter()
    p = P.obj(params, ("traceId", "query", "maxRows", "timeoutMs"))
    query = P.string(p, "query", required=True)
    max_rows = P.integer(p, "maxRows", DEFAULT_MAX_ROWS, lo=0, hi=MAX_ROWS)
    timeout = P.integer(p, "timeoutMs", DEFAULT_TIMEOUT_MS, lo=1, hi=MAX_TIMEOUT_MS)
    t = store.get(p.get("traceId"))
    try:
        names, types, rows, truncated = execute(t, query, max_rows, timeout / 1000)
    except SqlError as exc:
        if exc.refused:
            raise invalid_params(f"query: {exc}") from None
        raise RpcError(INTERNAL_ERROR, f"query: {exc}") from None
    return {"columns": [{"name": n, "type": ty} for n, ty in zip(names, types)],
            "rows": rows,
            "metadata": {"returnedCount": len(rows), "truncated": truncated,
                         "executionTimeMs": round((time.perf_counter() - t0) * 1000, 3)}}
