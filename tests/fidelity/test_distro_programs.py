"""Debian-packaged programs nobody here wrote, run once untraced and once
under ``lanetrace run`` with every function of their main library hooked:
tracing must not change what they print or how they exit, every call must be
closed by a return, and sqlite3's per-function counts must equal callgrind's."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from fidelity import callgrind
from fidelity.fidelity import (calls_by_function, compare_with_callgrind, describe_difference, hook_report_problems,
                               load_trace, lost_records, once, run_pair, shared_dir,
                               skipped_functions, unbalanced)

pytestmark = pytest.mark.frida

SQLITE_SQL = """
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
  INSERT INTO t SELECT i, printf('row%03d', i), i * 1.5 FROM n;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(a), round(avg(c), 2) FROM t WHERE b LIKE 'row1%';
SELECT b, c FROM t WHERE a % 37 = 0 ORDER BY c DESC;
UPDATE t SET c = c * 2 WHERE a < 50;
DELETE FROM t WHERE a > 280;
SELECT group_concat(a), max(c) FROM (SELECT a, c FROM t ORDER BY a DESC LIMIT 5);
"""
SQLITE_ARGV = ["/usr/bin/sqlite3", "-batch", "-init", "/dev/null", ":memory:", SQLITE_SQL]

PYTHON_SCRIPT = ("import json\n"
                 "d = {'k%d' % i: [i, i * i] for i in range(300)}\n"
                 "print(sum(i * i for i in range(2000)), len(json.dumps(d, sort_keys=True)))\n")

JQ_FILTER = '[.items[] | select(.name | test("^a[0-9]+$")) | .v] | add'


def _inputs(directory: str) -> dict:
    """Deterministic input files of the corpus, made once."""
    text = "".join(f"line {i:05d} {hashlib.sha256(str(i).encode()).hexdigest()}\n"
                   for i in range(1500))
    paths = {name: os.path.join(directory, name) for name in ("data.txt", "items.json")}
    with open(paths["data.txt"], "w") as f:
        f.write(text)
    with open(paths["items.json"], "w") as f:
        json.dump({"items": [{"name": ("a" if i % 3 else "b") + str(i), "v": i}
                             for i in range(200)]}, f)
    xz = subprocess.run(["xz", "-c", "-6", paths["data.txt"]], capture_output=True, check=True)
    paths["data.txt.xz"] = paths["data.txt"] + ".xz"
    with open(paths["data.txt.xz"], "wb") as f:
        f.write(xz.stdout)
    return paths


# id -> (argv from input paths, selection, minimum calls a faithful trace has)
PROGRAMS = {
    "sqlite3": (lambda p: SQLITE_ARGV, ["-I", "libsqlite3*"], 5000),
    "python3.11": (lambda p: ["/usr/bin/python3.11", "-c", PYTHON_SCRIPT], [], 5000),
    "openssl": (lambda p: ["/usr/bin/openssl", "dgst", "-sha256", p["data.txt"]],
                ["-I", "libcrypto*"], 1000),
    "jq": (lambda p: ["/usr/bin/jq", "-c", JQ_FILTER, p["items.json"]],
           ["-I", "libjq*", "-I", "libonig*"], 5000),
    "xz-compress": (lambda p: ["/usr/bin/xz", "-c", "-6", p["data.txt"]], ["-I", "liblzma*"], 20),
    "xz-decompress": (lambda p: ["/usr/bin/xz", "-dc", p["data.txt.xz"]], ["-I", "liblzma*"], 20),
    "curl": (lambda p: ["/usr/bin/curl", "-sS", "file://" + p["data.txt"]],
             ["-I", "libcurl*"], 100),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = shared_dir(tmp_path_factory, "inputs")
    return once(directory, _inputs)


def _pair(tmp_path_factory, inputs, program: str) -> dict:
    if not os.path.exists(PROGRAMS[program][0](inputs)[0]):
        pytest.fail(f"{program} is not installed: run `make native examples` (APT_PKGS)")
    argv_of, selection, _ = PROGRAMS[program]
    directory = shared_dir(tmp_path_factory, f"program-{program}")
    return once(directory, lambda d: run_pair(d, argv_of(inputs), selection, cwd=d))


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_distro_program__traced__then_stdout_and_exit_status_unchanged(tmp_path_factory, inputs,
                                                                       program):
    pair = _pair(tmp_path_factory, inputs, program)
    assert pair["untraced"]["returncode"] == 0, pair["untraced"]
    assert describe_difference(pair) == []


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_distro_program__traced__then_every_call_returns_and_trace_is_not_trivial(
        tmp_path_factory, inputs, program):
    pair = _pair(tmp_path_factory, inputs, program)
    trace = load_trace(pair)
    assert lost_records(trace) == []
    assert unbalanced(trace) == []
    assert trace.problems_with_order() == []
    minimum = PROGRAMS[program][2]
    assert sum(trace.entries.values()) >= minimum, \
        f"only {sum(trace.entries.values())} calls recorded (expected at least {minimum})"


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_distro_program__traced__then_trace_json_reports_every_hook_with_reasons(
        tmp_path_factory, inputs, program):
    pair = _pair(tmp_path_factory, inputs, program)
    trace = load_trace(pair)
    assert hook_report_problems(trace.manifest) == []
    skipped = skipped_functions(trace.manifest)
    called_yet_skipped = sorted(set(calls_by_function(trace)) & set(skipped))
    assert called_yet_skipped == [], "functions reported skipped have calls in the trace"


def _sqlite_callgrind(directory: str) -> dict:
    out_file = os.path.join(directory, "callgrind.out")
    proc = callgrind.run(SQLITE_ARGV, out_file, cwd=directory)
    assert proc.returncode == 0, proc.stderr[-2000:]
    objects = callgrind.objects(out_file)
    lib = next(path for name, path in objects.items() if name.startswith("libsqlite3"))
    table = callgrind.symbol_table(lib)
    counts = callgrind.entry_counts(out_file, {lib: callgrind.extents_of(table)})
    offsets = {name: offset for name, (offset, _) in table.items()}
    return {"offsets": offsets,
            "calls": {str(offset): counts[(lib, offset)] for offset in set(offsets.values())},
            "stdout": proc.stdout.decode("latin-1")}


def test_sqlite3_every_libsqlite3_function__traced__then_call_counts_equal_callgrind(
        tmp_path_factory, inputs):
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed: run `make native examples` (APT_PKGS)")
    pair = _pair(tmp_path_factory, inputs, "sqlite3")
    truth = once(shared_dir(tmp_path_factory, "callgrind-sqlite3"), _sqlite_callgrind)
    assert truth["stdout"] == pair["untraced"]["stdout"], "the callgrind run did other work"
    trace = load_trace(pair)
    problems = compare_with_callgrind(calls_by_function(trace), truth["offsets"],
                                      {int(k): v for k, v in truth["calls"].items()},
                                      skipped_functions(trace.manifest))
    assert sum(calls_by_function(trace).values()) > 0, "nothing traced"
    assert problems == [], f"{len(problems)} functions differ from callgrind"
