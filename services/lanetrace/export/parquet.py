"""``lanetrace export --format parquet``: the SQL tables of a trace (calls,
events, functions, threads; see query/sql.py) as Parquet files in a
directory, for engines that read many traces from shared storage (DuckDB,
Spark, Trino). The tables come from the trace's index, as ``lanetrace sql``
sees them; each file is written under a temporary name and renamed, so a
reader never sees a half-written file."""
from __future__ import annotations

import os

from lanetrace.query.sql import SCHEMA

TABLES = tuple(SCHEMA)


class ParquetExportError(Exception):
    """An unreadable trace or an unwritable output directory."""


def export_parquet(trace_dir: str, out_dir: str) -> dict:
    """Write ``<out_dir>/<table>.parquet`` for every table; returns
    ``{files: [...], rows: {table: n}, bytesWritten}``."""
    import pyarrow.parquet as pq

    from lanetrace.query import sql
    from lanetrace.query.errors import RpcError
    from lanetrace.query.store import TraceStore

    real = os.path.realpath(trace_dir)
    store = TraceStore(os.path.dirname(real), subprocess_builds=False)
    try:
        t = store.get(os.path.basename(real))
    except RpcError as exc:
        raise ParquetExportError(f"{trace_dir}: {exc.data}") from None
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ParquetExportError(f"{out_dir} is not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ParquetExportError(f"cannot create {out_dir}: {exc.strerror}") from None
    files, rows, size = [], {}, 0
    for name, table in sql.tables(t).items():
        path = os.path.join(out_dir, f"{name}.parquet")
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
            os.replace(tmp, path)
        except OSError as exc:
            _remove(tmp)
            raise ParquetExportError(f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            _remove(tmp)
            raise
        files.append(path)
        rows[name] = table.num_rows
        size += os.path.getsize(path)
    return {"files": files, "rows": rows, "bytesWritten": size}


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass
