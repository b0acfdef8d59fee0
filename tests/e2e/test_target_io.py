"""The traced program's standard streams are the caller's own, and a script
is traced through its interpreter."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from e2e.tracecheck import Trace, single_trace_dir

pytestmark = pytest.mark.frida

LINES = 200

# Writes numbered lines alternately to stdout and stderr with write(2), so the
# order in a shared file is the order of the calls; then copies stdin.
STDIO_LINES_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) void emit(int fd, int i)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%s %d\n", fd == 1 ? "out" : "err", i);
    if (write(fd, buf, (size_t)n) != n)
        exit(3);
}

__attribute__((noinline)) long copy_stdin(void)
{
    char buf[4096];
    long total = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        if (write(1, buf, (size_t)n) != n)
            exit(3);
        total += n;
    }
    return total;
}

int main(int argc, char **argv)
{
    int lines = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < lines; i++)
        emit(i % 2 ? 2 : 1, i);
    if (argc > 2 && strcmp(argv[2], "-") == 0)
        copy_stdin();
    return 0;
}
"""


@pytest.fixture(scope="module")
def stdio_lines(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the test program (make installs it)")
    work = tmp_path_factory.mktemp("stdio")
    src = work / "stdio_lines.c"
    src.write_text(STDIO_LINES_C)
    exe = work / "stdio_lines"
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(src)], check=True)
    return str(exe)


def lanetrace_cmd(*args):
    return [sys.executable, "-m", "lanetrace", *args]


def expected_lines(n):
    return [f"{'err' if i % 2 else 'out'} {i}" for i in range(n)]


def program_lines(text):
    return [line for line in text.splitlines() if line.startswith(("out ", "err "))]


def test_run__stdout_and_stderr_redirected_to_one_file__then_every_line_kept_in_order(
        tmp_path, stdio_lines):
    log = tmp_path / "log"
    with open(log, "w") as f:  # `> log 2>&1`: one open file description, no O_APPEND
        proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"), "--",
                                            stdio_lines, str(LINES)),
                              stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=180, cwd=REPO)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert program_lines(text) == expected_lines(LINES)
    assert "lanetrace session" in text  # the summary follows, overwriting nothing
    trace = Trace(single_trace_dir(str(tmp_path / "traces")))
    assert sum(n for (_, name), n in trace.entries.items() if name == "emit") == LINES


def test_run__input_piped__then_target_reads_it(tmp_path, stdio_lines):
    data = "".join(f"line {i}\n" for i in range(1000))
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"), "--",
                                        stdio_lines, "0", "-"),
                          input=data, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    trace = Trace(single_trace_dir(str(tmp_path / "traces")))
    assert sum(n for (_, name), n in trace.entries.items() if name == "copy_stdin") == 1


def test_run__json__then_stdout_is_the_program_output_and_the_summary_is_on_stderr(
        tmp_path, stdio_lines):
    summary_file = tmp_path / "summary.json"
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"), "--json",
                                        "--json-out", str(summary_file), "--",
                                        stdio_lines, "20"),
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [line for line in expected_lines(20)
                                        if line.startswith("out")]
    err = proc.stderr
    assert program_lines(err) == [line for line in expected_lines(20) if line.startswith("err")]
    summary = json.loads(err[err.index("{"):])
    assert summary["targets"][0]["exitCode"] == 0
    assert json.loads(summary_file.read_text()) == summary


def test_run__json_out_in_missing_directory__then_specific_error_before_start(
        tmp_path, stdio_lines):
    target = tmp_path / "no-such-dir" / "summary.json"
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"), "--json-out",
                                        str(target), "--", stdio_lines, "1"),
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert f"cannot write the summary to {target}" in proc.stderr
    assert not (tmp_path / "traces").exists()


def test_run__sh_script__then_traced_as_its_interpreter(tmp_path, stdio_lines):
    script = tmp_path / "wrapper.sh"
    script.write_text(f"#!/bin/sh\n{stdio_lines} 4\n")
    script.chmod(0o755)
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"),
                                        "-i", "libc.so*!getenv", "--", str(script)),
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert f"{script} is a script: tracing its interpreter /bin/sh" in proc.stderr
    assert proc.stdout.splitlines() == ["out 0", "out 2"]
    assert "internal error" not in proc.stderr


def test_run__script_that_execs_a_program__then_exit_status_and_output_are_the_programs(
        tmp_path):
    # a shim: the traced interpreter replaces itself and the new program runs
    # on (one that ends within milliseconds may end before it is followed:
    # then the summary says its end was not observed)
    script = tmp_path / "shim.sh"
    script.write_text("#!/bin/sh\nexec /usr/bin/python3.11 -c "
                      "'import sys, time; time.sleep(2); print(42); sys.exit(3)'\n")
    script.chmod(0o755)
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"),
                                        "-i", "libc.so*!malloc", "--", str(script)),
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    assert proc.stdout == "42\n"
    assert "replaced its program with exec" in proc.stderr and "then exit code 3" in proc.stderr, \
        proc.stderr
    assert proc.returncode == 3


def test_run__env_python_script__then_traced_as_the_python_from_path(tmp_path):
    python = shutil.which("python3")
    if python is None:
        pytest.skip("no python3 in PATH")
    script = tmp_path / "hello.py"
    script.write_text("#!/usr/bin/env python3\nimport sys\nprint('hello', sys.argv[1:])\n")
    script.chmod(0o755)
    bindir = tmp_path / "bin"  # a PATH whose python3 is a real executable, not a shim
    bindir.mkdir()
    (bindir / "python3").symlink_to(os.path.realpath("/usr/bin/python3")
                                    if os.path.exists("/usr/bin/python3")
                                    else os.path.realpath(python))
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"),
                                        "-i", "libc.so*!getenv", "--", str(script), "a", "b"),
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert f"tracing its interpreter {bindir / 'python3'}" in proc.stderr
    assert proc.stdout == "hello ['a', 'b']\n"


def test_run__script_with_unresolvable_interpreter__then_clear_error_naming_what_to_run(
        tmp_path):
    script = tmp_path / "odd"
    script.write_text("#!/nonexistent/interp -x\necho hi\n")
    script.chmod(0o755)
    proc = subprocess.run(lanetrace_cmd("run", "-o", str(tmp_path / "traces"), "--",
                                        str(script)),
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert (f"program not found: /nonexistent/interp (the interpreter of the script {script})"
            in proc.stderr)
    assert "internal error" not in proc.stderr
