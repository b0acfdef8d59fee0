"""``lanetrace replay``, ``graph`` and ``sql`` as a user runs them."""
import random
import subprocess
import sys

import orjson
import pytest

from lanetrace.cli import main
from query.tracegen import Ev, random_program, simple_events

from views.vhelpers import write

TRACE = "20261121-101500-ab12/pid_4242"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "traces"
    write(root, TRACE, simple_events())
    return str(root)


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_replay__simple_trace__then_uftrace_like_tree_with_relative_times(root, capsys):
    status, out, _ = run(capsys, "replay", TRACE, "--trace-root", root)
    assert status == 0
    assert out == (
        "#         TIME     DURATION      TID    FUNCTION\n"
        "    +0.000000s               [  4243] | main() {\n"
        "    +0.000000s               [  4243] |   parse() {\n"
        "    +0.000000s        50 ns  [  4243] |     lex();\n"
        "    +0.000000s       300 ns  [  4243] |   } /* parse */\n"
        "    +0.000001s       100 ns  [  4243] |   emit();\n"
        "    +0.000001s       800 ns  [  4243] | } /* main */\n"
        "    +0.000000s               [  4244] | parse() {\n"
        "    +0.000000s        10 ns  [  4244] |   alloc();\n"
        "    +0.000000s               [  4244] |   /* signal SIGSEGV (11) */\n"
        "    +0.000000s       300 ns  [  4244] | } /* parse */\n")


def test_replay__absolute_interleave_thread_window__then_filtered(root, capsys):
    status, out, _ = run(capsys, "replay", TRACE, "--trace-root", root, "--absolute",
                         "--interleave", "--from", "160", "--to", "450")
    assert status == 0
    lines = out.splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == [
        "100", "150", "160", "200", "250", "400", "450", "500", "900"]
    _, out, _ = run(capsys, "replay", TRACE, "--trace-root", root, "--thread", "4244",
                    "--depth", "1")
    assert [ln.split("|")[1].strip() for ln in out.splitlines()[1:]] == ["parse();"]
    _, out, _ = run(capsys, "replay", TRACE, "--trace-root", root, "--min-duration", "100ns",
                    "--from", "+0.4us")
    assert [ln.split("|")[1].strip() for ln in out.splitlines()[1:]] == [
        "main() {", "parse() {", "} /* parse */", "emit();", "} /* main */",
        "parse() {", "} /* parse */"]


def test_replay__function__then_its_subtrees_indented_from_zero(root, capsys):
    status, out, _ = run(capsys, "replay", TRACE, "--trace-root", root, "--function", "parse")
    assert status == 0
    assert [ln.split("|")[1] for ln in out.splitlines()[1:]] == [
        " parse() {", "   alloc();", "   /* signal SIGSEGV (11) */", " } /* parse */",
        " parse() {", "   lex();", " } /* parse */"]


def test_replay__json__then_calltree_lines_with_raw_ns(root, capsys):
    status, out, _ = run(capsys, "replay", TRACE, "--trace-root", root, "--json",
                         "--thread", "4243")
    lines = [orjson.loads(x) for x in out.splitlines()]
    assert status == 0 and lines[0] == {
        "type": "entry", "threadId": 4243, "timestampNs": 100, "depth": 0,
        "functionName": "main", "module": "demo", "callId": 0, "durationNs": 800}
    assert [ln["type"] for ln in lines] == ["entry", "entry", "leaf", "exit", "leaf", "exit"]


def test_replay__marks_and_arguments__then_shown_on_the_lines(tmp_path, capsys):
    events = [Ev("call", 10, 1, "main"),
              Ev("call", 20, 1, "add", regs={"rdi": 5, "rsi": (1 << 32) - 3, "rdx": 0,
                                             "rcx": 0, "r8": 0, "r9": 0x7FFD00001000}, detail=True),
              Ev("ret", 25, 1, "add", regs={"rax": 2}, detail=True),
              Ev("call", 30, 1, "jump"), Ev("ret", 40, 1, "jump", unwound=True),
              Ev("call", 50, 1, "tail")]
    write(tmp_path, "t/pid_1", events)
    status, out, _ = run(capsys, "replay", "t/pid_1", "--trace-root", str(tmp_path))
    assert status == 0
    assert [ln.split("|")[1] for ln in out.splitlines()[1:]] == [
        " main() {",
        "   add(arg0=5, arg1=-3, arg2=0, arg3=0, arg4=0, arg5=0x7ffd00001000) = 2;",
        "   jump(); /* unwound */",
        "   tail() {",
        "   } /* tail: open at trace end */",
        " } /* main: open at trace end */"]


@pytest.mark.parametrize("argv, message", [
    (["--thread", "1"], "--thread 1: no such thread in the trace (threads: 4243, 4244)"),
    (["--function", "nope"], "--function nope: no such function in the trace"),
    (["--from", "+2s", "--to", "+1s"], "--from must be before --to"),
    (["--depth", "0"], "--depth must be at least 1"),
])
def test_replay__bad_options__then_clear_error(root, capsys, argv, message):
    status, _, err = run(capsys, "replay", TRACE, "--trace-root", root, *argv)
    assert status == 2 and err == f"lanetrace: error: {message}\n"


def test_replay__unknown_trace_or_bad_time__then_clear_error(root, capsys):
    status, _, err = run(capsys, "replay", "nope/pid_1", "--trace-root", root)
    assert status == 2 and "trace 'nope/pid_1' not found" in err
    with pytest.raises(SystemExit):
        main(["replay", TRACE, "--trace-root", root, "--from", "soon"])
    assert "not a time: 'soon'" in capsys.readouterr().err


def test_replay__reader_quits_early__then_exit_0_and_no_traceback(tmp_path):
    events = random_program(random.Random(1), threads=2, steps=4000)
    write(tmp_path, "big/pid_1", events)
    cmd = [sys.executable, "-m", "lanetrace", "replay", "big/pid_1", "--trace-root", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` or quitting `less` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first.startswith(b"#") and "Traceback" not in err and err == ""


def test_graph__whole_program_and_function__then_calls_total_self_per_path(root, capsys):
    status, out, _ = run(capsys, "graph", TRACE, "--trace-root", root)
    assert status == 0
    assert out.splitlines()[2:] == [
        "          1        800 ns        400 ns    main",
        "          1        300 ns        250 ns      parse",
        "          1         50 ns         50 ns        lex",
        "          1        100 ns        100 ns      emit",
        "          1        300 ns        290 ns    parse",
        "          1         10 ns         10 ns      alloc"]
    status, out, _ = run(capsys, "graph", TRACE, "parse", "--trace-root", root)
    assert status == 0 and out.splitlines() == [
        "# callers of parse",
        "#     CALLS         TOTAL          SELF    FUNCTION",
        "          1        300 ns        290 ns    (no recorded caller)",
        "          1        300 ns        250 ns    main",
        "",
        "# call graph of parse",
        "#     CALLS         TOTAL          SELF    FUNCTION",
        "          2        600 ns        540 ns    parse",
        "          1         50 ns         50 ns      lex",
        "          1         10 ns         10 ns      alloc"]
    status, _, err = run(capsys, "graph", TRACE, "nope", "--trace-root", root)
    assert status == 2 and "functionName: no function 'nope' in the trace" in err


def test_sql__table_json_csv_schema__then_each_format(root, capsys):
    query = "SELECT function, count(*) AS calls, sum(duration_ns) AS total FROM calls " \
            "GROUP BY 1 ORDER BY 3 DESC LIMIT 2"
    status, out, _ = run(capsys, "sql", TRACE, query, "--trace-root", root)
    assert status == 0 and out == "function  calls  total\nmain          1    800\nparse         2    600\n"
    _, out, _ = run(capsys, "sql", "--json", TRACE, query, "--trace-root", root)
    assert [orjson.loads(x) for x in out.splitlines()] == [
        {"columns": [{"name": "function", "type": "VARCHAR"}, {"name": "calls", "type": "BIGINT"},
                     {"name": "total", "type": "HUGEINT"}]},
        ["main", 1, 800], ["parse", 2, 600]]
    _, out, _ = run(capsys, "sql", "--csv", TRACE, query, "--trace-root", root)
    assert out == "function,calls,total\nmain,1,800\nparse,2,600\n"
    status, out, _ = run(capsys, "sql", TRACE, "--schema", "--trace-root", root)
    assert status == 0 and out.startswith("calls(\n  call_id INTEGER,")
    for table in ("events(", "functions(", "threads("):
        assert table in out


def test_sql__refused_or_bad_query__then_clear_error(root, capsys):
    status, _, err = run(capsys, "sql", TRACE, "COPY calls TO '/tmp/x.csv'", "--trace-root", root)
    assert status == 2 and err == "lanetrace: error: sql: only SELECT queries are allowed (got COPY)\n"
    status, _, err = run(capsys, "sql", TRACE, "SELECT * FROM read_text('/etc/passwd')",
                         "--trace-root", root)
    assert status == 2 and "Permission Error" in err
    status, _, err = run(capsys, "sql", TRACE, "--trace-root", root)
    assert status == 2 and "give a QUERY (or --schema)" in err
