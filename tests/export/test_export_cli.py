import json
import os

import pytest

from .atf_builder import TraceBuilder, nested_trace

from lanetrace.cli import main
from lanetrace.core import atf


@pytest.fixture
def root(tmp_path):
    nested_trace(tmp_path / "traces" / "20261121-101500-ab12" / "pid_4242", open_at_end=True)
    return tmp_path / "traces"


TRACE_ID = "20261121-101500-ab12/pid_4242"


@pytest.mark.parametrize("fmt,name", [("perfetto", "run.pftrace"), ("chrome", "run.json"),
                                      ("folded", "run.folded"), ("jsonl", "run.jsonl")])
def test_cli_export__trace_id_under_root__then_file_written(tmp_path, root, capsys, fmt, name):
    out = tmp_path / name
    status = main(["export", TRACE_ID, "--trace-root", str(root), "--format", fmt, "-o", str(out)])
    assert status == 0
    assert out.stat().st_size > 0
    err = capsys.readouterr().err
    assert str(out) in err and "3 open at trace end" in err
    assert [p for p in os.listdir(tmp_path) if ".tmp." in p] == []


def test_cli_export__trace_directory_path__then_accepted(tmp_path, root):
    out = tmp_path / "run.json"
    assert main(["export", str(root / TRACE_ID), "-f", "chrome", "-o", str(out)]) == 0
    json.loads(out.read_text())


def test_cli_export__unknown_trace__then_clear_error(tmp_path, root, capsys):
    status = main(["export", "nope/pid_1", "--trace-root", str(root), "-f", "chrome",
                   "-o", str(tmp_path / "x.json")])
    assert status == 2
    assert "trace 'nope/pid_1' not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cli_export__directory_without_events__then_not_a_trace(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / atf.MANIFEST_FILE).write_text("{}")
    status = main(["export", str(tmp_path / "half"), "-f", "jsonl", "-o", str(tmp_path / "x")])
    assert status == 2
    assert "not a trace directory (no events.bin)" in capsys.readouterr().err


def test_cli_export__corrupt_event__then_error_and_no_output_left(tmp_path, capsys):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "main")
    trace = b.close()
    with open(os.path.join(trace, atf.EVENTS_FILE), "ab") as f:
        f.write(atf.frame(b"\xff\xff\xff"))
    out = tmp_path / "run.pftrace"
    status = main(["export", trace, "-f", "perfetto", "-o", str(out)])
    assert status == 2
    assert "corrupt event at offset" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["t"]


def test_cli_export__torn_last_frame__then_exports_whole_frames(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "main").ret(1, 20, "main")
    trace = b.close()
    with open(os.path.join(trace, atf.EVENTS_FILE), "ab") as f:
        f.write(b"\x40\x08\x01")  # claims 64 bytes, has 2: a writer killed mid-append
    out = tmp_path / "run.jsonl"
    assert main(["export", trace, "-f", "jsonl", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_cli_export__corrupt_manifest__then_error(tmp_path, capsys):
    trace = nested_trace(tmp_path / "t")
    (tmp_path / "t" / atf.MANIFEST_FILE).write_text("{not json")
    assert main(["export", trace, "-f", "chrome", "-o", str(tmp_path / "x.json")]) == 2
    assert "trace.json is not valid JSON" in capsys.readouterr().err


def test_cli_export__malformed_window__then_error(tmp_path, capsys):
    trace = nested_trace(tmp_path / "t", windows=[{"startNs": 5, "endNs": "late"}])
    assert main(["export", trace, "-f", "chrome", "-o", str(tmp_path / "x.json")]) == 2
    assert "windows[0].endNs is not an integer" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["-f", "chrome", "--time-start", "500", "--time-end", "500"], "time-start must be before time-end"),
    (["-f", "folded", "--split-mb", "1"], "split-mb applies to the chrome format only"),
    (["-f", "chrome", "--split-mb", "0"], "split-mb must be a positive number"),
    (["-f", "chrome", "--weight", "calls"], "apply to the folded format only"),
])
def test_cli_export__bad_options__then_specific_error(tmp_path, root, capsys, args, message):
    status = main(["export", TRACE_ID, "--trace-root", str(root), "-o", str(tmp_path / "x"), *args])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_export__negative_time__then_usage_error(tmp_path, root, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", TRACE_ID, "--trace-root", str(root), "-f", "chrome", "-o",
              str(tmp_path / "x"), "--time-start", "-5"])
    assert exc.value.code == 2
    assert "must not be negative" in capsys.readouterr().err


@pytest.mark.parametrize("target,message", [("missing-dir/run.json", "does not exist"),
                                            ("", "is a directory")])
def test_cli_export__unwritable_output__then_error(tmp_path, root, capsys, target, message):
    out = tmp_path / target if target else tmp_path
    status = main(["export", TRACE_ID, "--trace-root", str(root), "-f", "chrome", "-o", str(out)])
    assert status == 2
    assert message in capsys.readouterr().err


def test_cli_export__read_only_directory__then_error(tmp_path, root, capsys):
    if os.geteuid() == 0:
        out = "/proc/lanetrace-cannot-write-here.json"  # root ignores directory modes
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = str(ro / "run.json")
    status = main(["export", TRACE_ID, "--trace-root", str(root), "-f", "chrome", "-o", out])
    assert status == 2
    assert "cannot write" in capsys.readouterr().err


def diff_pair(tmp_path):
    a = TraceBuilder(tmp_path / "a")
    a.start(0).call(1, 10, "main").call(1, 20, "check").ret(1, 30, "check").ret(1, 40, "main")
    b = TraceBuilder(tmp_path / "b")
    b.start(0).call(7, 10, "main").call(7, 20, "panic").ret(7, 30, "panic").ret(7, 40, "main")
    return a.close(), b.close()


def test_cli_diff__json__then_machine_readable_and_exit_one(tmp_path, capsys):
    a, b = diff_pair(tmp_path)
    assert main(["diff", a, b, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    d = result["threads"][0]["divergence"]
    assert (d["callIndex"], d["a"]["call"], d["b"]["call"]) == (1, "check", "panic")


def test_cli_diff__human__then_divergence_described(tmp_path, capsys):
    a, b = diff_pair(tmp_path)
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "diverges at call 2" in out
    assert "A: check" in out and "B: panic" in out
    assert "Only in A:" in out and "Only in B:" in out


def test_cli_diff__same_trace__then_exit_zero(tmp_path, capsys):
    a, _ = diff_pair(tmp_path)
    assert main(["diff", a, a]) == 0
    assert "identical" in capsys.readouterr().out


def test_cli_diff__missing_trace__then_error(tmp_path, capsys):
    a, _ = diff_pair(tmp_path)
    assert main(["diff", a, str(tmp_path / "zzz")]) == 2
    assert "not found" in capsys.readouterr().err
