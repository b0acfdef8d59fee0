"""Corrupt traces at every surface a user meets them: the query server over
real HTTP (-32603 "failed to load trace: ..."), each CLI command that reads
a trace (non-zero exit, the reason on stderr, no traceback), and each
exporter (an error, no output file left). A torn tail still reads."""
import os
import subprocess
import sys

import orjson
import pytest

from lanetrace.cli import main
from lanetrace.core import atf
from lanetrace.export.parquet import ParquetExportError, export_parquet
from lanetrace.export.run import FORMATS, ExportError, ExportOptions, export_trace

from corrupt import corruptions
from corrupt.corruptions import CASES, GOOD_EVENTS
from query.qhelpers import start_server


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("traces"))
    patterns = {name: corruptions.make(base, name)[1] for name in CASES}
    corruptions.good_trace(os.path.join(base, "good"))
    corruptions.torn_tail(base)
    return base, patterns


@pytest.fixture(scope="module")
def server(root):
    s = start_server(root[0])
    yield s
    s.stop()


# ---- the query server -------------------------------------------------------

@pytest.mark.parametrize("method,params", [
    ("trace.info", {}), ("events.get", {"projection": {"args": True}}), ("spans.list", {})])
@pytest.mark.parametrize("case", CASES)
def test_serve__corrupt_trace__then_32603_failed_to_load_saying_what(server, root, case,
                                                                     method, params):
    _, patterns = root
    msg = server.rpc(method, {"traceId": case, **params})
    assert msg["error"]["code"] == -32603, msg
    assert msg["error"]["message"] == "Internal error"
    assert msg["error"]["data"].startswith("failed to load trace: ")
    assert patterns[case].search(msg["error"]["data"]), msg["error"]["data"]


def test_serve__corrupt_traces_requested__then_good_and_torn_traces_still_served(server):
    for case in CASES:
        server.rpc("trace.info", {"traceId": case})
    assert server.result("trace.info", {"traceId": "good"})["eventCount"] == GOOD_EVENTS
    torn = server.result("trace.info", {"traceId": "torn"})
    assert torn["eventCount"] == GOOD_EVENTS
    assert torn["files"]["tornTailBytes"] == len(corruptions.TORN_TAIL)


def test_serve__trace_damaged_after_it_was_loaded__then_32603_not_the_old_index(tmp_path):
    base = str(tmp_path / "traces")
    d = corruptions.good_trace(os.path.join(base, "t"))
    s = start_server(base)
    try:
        assert s.result("trace.info", {"traceId": "t"})["eventCount"] == GOOD_EVENTS
        with open(os.path.join(d, atf.EVENTS_FILE), "ab") as f:
            f.write(b"\xff\xff\xff\xff\x0f\x00\x00")
        msg = s.rpc("trace.info", {"traceId": "t"})
        assert msg["error"]["code"] == -32603
        assert "says 4294967295 bytes" in msg["error"]["data"]
    finally:
        s.stop()


# ---- the CLI ------------------------------------------------------------------

def _commands(trace, base):
    return {
        "query info": ["query", "info", trace, "--trace-root", base],
        "query events": ["query", "events", trace, "--trace-root", base],
        "query functions": ["query", "functions", trace, "--trace-root", base],
        "replay": ["replay", trace, "--trace-root", base],
        "graph": ["graph", trace, "--trace-root", base],
        "sql": ["sql", "--trace-root", base, trace, "select count(*) from calls"],
        "diff": ["diff", "good", trace, "--trace-root", base],
        "export": ["export", trace, "--trace-root", base, "-f", "jsonl", "-o",
                   os.path.join(base, "out.jsonl")],
    }


COMMANDS = tuple(_commands("T", "R"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES)
def test_cli__corrupt_trace__then_nonzero_exit_and_the_reason(root, case, command, capsys):
    base, patterns = root
    status = main(_commands(case, base)[command])
    out, err = capsys.readouterr()
    assert status not in (0, None)
    assert err.startswith("lanetrace: error: ")
    assert patterns[case].search(err), err
    assert not os.path.exists(os.path.join(base, "out.jsonl"))


def test_cli_process__corrupt_trace__then_exit_1_and_no_traceback(root):
    base, patterns = root
    case = "impossible_length"
    r = subprocess.run([sys.executable, "-m", "lanetrace", "query", "events", case,
                        "--trace-root", base], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert patterns[case].search(r.stderr), r.stderr


def test_cli_export__torn_tail__then_exported_and_the_tail_reported(root, tmp_path, capsys):
    base, _ = root
    out = tmp_path / "torn.jsonl"
    assert main(["export", "torn", "--trace-root", base, "-f", "jsonl", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == GOOD_EVENTS
    assert f"a torn last frame of {len(corruptions.TORN_TAIL)} bytes cut" in capsys.readouterr().err


# ---- the exporters ------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_export__corrupt_trace__then_error_and_no_output_left(root, tmp_path, case, fmt):
    base, patterns = root
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(ExportError) as exc:
        export_trace(os.path.join(base, case), fmt, str(out))
    assert patterns[case].search(str(exc.value)), str(exc.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", CASES)
def test_export_parquet__corrupt_trace__then_error_and_no_directory_written(root, tmp_path, case):
    base, patterns = root
    with pytest.raises(ParquetExportError) as exc:
        export_parquet(os.path.join(base, case), str(tmp_path / "pq"))
    assert patterns[case].search(str(exc.value)), str(exc.value)
    assert os.listdir(tmp_path) == []


def test_export_chrome_split__corrupt_frame_after_parts_were_written__then_every_part_removed(
        tmp_path):
    from query import tracegen
    import random

    d = tracegen.write_trace(str(tmp_path / "t"), tracegen.random_program(
        random.Random(3), threads=2, steps=3000), flavour="ours")
    with open(os.path.join(d, atf.EVENTS_FILE), "ab") as f:
        f.write(atf.frame(b"\x0f\x01"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExportError, match="corrupt event at offset"):
        export_trace(d, "chrome", str(out_dir / "run.json"), ExportOptions(split_mb=0.05))
    assert os.listdir(out_dir) == []


def test_export__torn_tail__then_every_event_and_the_tail_counted(root, tmp_path):
    base, _ = root
    out = tmp_path / "torn.jsonl"
    stats = export_trace(os.path.join(base, "torn"), "jsonl", str(out))
    assert stats.torn_tail_bytes == len(corruptions.TORN_TAIL)
    assert stats.to_dict()["tornTailBytes"] == len(corruptions.TORN_TAIL)
    assert len([orjson.loads(x) for x in out.read_text().splitlines()]) == GOOD_EVENTS
