"""``export --format parquet``: the SQL tables as Parquet files that read
back (pyarrow, DuckDB) exactly as ``lanetrace sql`` sees the trace."""
import os
import random

import duckdb
import pyarrow.parquet as pq
import pytest

from lanetrace.cli import main
from lanetrace.query import sql
from lanetrace.query.store import TraceStore

from query import tracegen

TABLES = ("calls", "events", "functions", "threads")


def _trace(root, name, seed, flavour="ours"):
    events = tracegen.random_program(random.Random(seed), threads=2, steps=80, drop_rate=0.05,
                                     detail_rate=0.2)
    return tracegen.write_trace(os.path.join(root, name), events, flavour=flavour)


def _plain(table):
    """Rows with dictionary columns decoded, for comparison."""
    return table.to_pylist()


@pytest.mark.parametrize("flavour", ["ours", "compact", "foreign"])
def test_export_parquet__trace__then_every_table_reads_back_equal(tmp_path, flavour):
    trace = _trace(tmp_path / "traces", "s/pid_1", 3, flavour)
    out = tmp_path / "pq"
    assert main(["export", trace, "-f", "parquet", "-o", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted(f"{t}.parquet" for t in TABLES)
    t = TraceStore(os.path.dirname(trace), subprocess_builds=False).get("pid_1")
    want = sql.tables(t)
    for name in TABLES:
        back = pq.read_table(out / f"{name}.parquet")
        assert back.column_names == [c for c, _, _ in sql.SCHEMA[name]]
        assert _plain(back) == _plain(want[name]), name
        via_duckdb = duckdb.sql(f"SELECT * FROM '{out / name}.parquet'").fetchall()
        names, _, rows, _ = sql.execute(t, f"SELECT * FROM {name}", None, None)
        assert via_duckdb == [tuple(r) for r in rows], name


def test_export_parquet__several_sessions__then_one_duckdb_query_over_the_directory(tmp_path):
    exports = tmp_path / "exports"
    sums = {}
    for i, session in enumerate(("20261121-101500-ab12", "20261122-093000-cd34")):
        trace = _trace(tmp_path / "traces", f"{session}/pid_{100 + i}", i)
        assert main(["export", trace, "-f", "parquet", "-o",
                     str(exports / session / f"pid_{100 + i}")]) == 0
        t = TraceStore(os.path.dirname(trace), subprocess_builds=False).get(f"pid_{100 + i}")
        sums[session] = sql.execute(t, "SELECT count(*), sum(duration_ns) FROM calls",
                                    None, None)[2][0]
    rows = duckdb.sql(
        f"SELECT split_part(filename, '/', -3) AS session, count(*), sum(duration_ns) "
        f"FROM read_parquet('{exports}/*/*/calls.parquet', filename = true) "
        f"GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [(s, *sums[s]) for s in sorted(sums)]


def test_export_parquet__stdout_or_time_options__then_clear_error(tmp_path, capsys):
    trace = _trace(tmp_path / "traces", "s/pid_1", 1)
    assert main(["export", trace, "-f", "parquet", "-o", "-"]) == 2
    assert "parquet writes a directory of files: give -o DIR" in capsys.readouterr().err
    assert main(["export", trace, "-f", "parquet", "-o", str(tmp_path / "x"),
                 "--time-start", "5"]) == 2
    assert "--time-start: not applicable to the parquet format" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", trace, "-f", "parquet", "-o", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
