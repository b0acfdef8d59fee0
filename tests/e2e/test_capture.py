"""End to end: ``lanetrace run`` / ``attach`` on real compiled programs,
through injector → shared-memory lanes → drainers → writer → ATF V4."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import (Trace, count_mismatches, leftover_segments, load_expectation,
                            session_id_of, single_trace_dir)

pytestmark = pytest.mark.frida

WORKERS_SELECTION = ["-I", "workers", "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*"]


def _assert_no_leftovers(trace_dir: str) -> None:
    session = session_id_of(trace_dir)
    assert leftover_segments(session) == []
    assert not os.path.exists(f"/tmp/lanetrace-run-{session}")


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_run__workers_with_linked_and_dlopened_libraries__then_every_call_recorded_exactly(tmp_path, threads):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), *WORKERS_SELECTION, "--",
                          example("workers"), str(threads), "200"],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    trace_dir = single_trace_dir(str(out))
    trace = Trace(trace_dir)
    expect = load_expectation(str(expect_path))
    assert len(expect["threads"]) == threads + 1
    assert count_mismatches(trace, expect) == []
    assert trace.problems_with_order() == []
    assert trace.manifest["complete"] is True
    assert sum(trace.manifest["drops"].values()) == 0
    assert trace.manifest["exitCode"] == 0
    _assert_no_leftovers(trace_dir)


def test_run__recursion__then_depth_follows_the_call_stack(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-i", "workers!fib", "-i", "workers!worker_main",
                          "--", example("workers"), "1", "64"],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    trace = Trace(single_trace_dir(str(out)))
    for tid, events in trace.by_thread.items():
        stack = []
        for _, _, kind, name, depth in events:
            if kind == "function_call":
                assert depth == len(stack), f"tid {tid}: {name} entered at depth {depth}"
                stack.append(name)
            else:
                assert stack and stack[-1] == name and depth == len(stack) - 1
                stack.pop()
    assert max(e[4] for events in trace.by_thread.values() for e in events) >= 3


def test_run__2000_short_lived_threads__then_all_recorded_exactly(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--", example("churn"), "2000", "8"],
                         env={"LANETRACE_EXPECT": str(expect_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trace_dir = single_trace_dir(str(out))
    trace = Trace(trace_dir)
    expect = load_expectation(str(expect_path))
    assert len(expect["threads"]) >= 2000
    assert count_mismatches(trace, expect) == []
    assert trace.problems_with_order() == []
    assert trace.manifest["drops"].get("no_slot", 0) == 0
    _assert_no_leftovers(trace_dir)


def test_run__target_crashes__then_lanetrace_exits_like_a_shell_and_trace_is_final(tmp_path):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--", example("crasher")])
    assert proc.returncode == 128 + signal.SIGSEGV, proc.stderr
    trace_dir = single_trace_dir(str(out))
    trace = Trace(trace_dir)
    assert trace.manifest["signal"] == signal.SIGSEGV
    assert trace.manifest["complete"] is True
    assert sum(trace.entries.values()) > 0
    _assert_no_leftovers(trace_dir)


def test_attach__threads_started_before_attach__then_they_are_traced_and_target_keeps_running(tmp_path):
    expect_path = tmp_path / "expect.json"
    target = subprocess.Popen([example("sleeper"), "30"], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, LANETRACE_EXPECT=str(expect_path)))
    try:
        assert "ready" in target.stdout.readline() + target.stdout.readline()
        tids_before = {int(t) for t in os.listdir(f"/proc/{target.pid}/task")}
        out = tmp_path / "traces"
        proc = run_lanetrace(["attach", "-o", str(out), "--duration", "2", str(target.pid)])
        assert proc.returncode == 0, proc.stderr
        assert target.poll() is None, "the target must keep running after detach"
        trace = Trace(single_trace_dir(str(out)))
        traced_tids = {tid for (tid, name) in trace.entries if name == "heartbeat_tick"}
        workers_before = tids_before - {target.pid}
        assert len(workers_before) >= 3
        assert workers_before <= traced_tids
        assert trace.manifest["detached"] is True
        assert trace.problems_with_order() == []
        # The target still works after detach: it finishes and reports.
        target.send_signal(signal.SIGTERM)
        assert target.wait(20) == 0
    finally:
        if target.poll() is None:
            target.kill()


def test_run__sigint__then_trace_is_readable_with_manifest(tmp_path):
    out = tmp_path / "traces"
    proc = subprocess.Popen([sys.executable, "-m", "lanetrace", "run", "-o", str(out), "--",
                             example("sleeper"), "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob("*/pid_*/events.bin")):
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    trace_dir = single_trace_dir(str(out))
    trace = Trace(trace_dir)
    assert trace.manifest["complete"] is True
    assert trace.manifest["eventCount"] > 0
    assert sum(trace.entries.values()) > 0
    _assert_no_leftovers(trace_dir)


# ---- bad input: specific message, non-zero exit, nothing started -----------

def test_run__program_not_found__then_specific_error(tmp_path):
    proc = run_lanetrace(["run", "-o", str(tmp_path), "--", "/nonexistent/prog"])
    assert proc.returncode != 0
    assert "program not found: /nonexistent/prog" in proc.stderr


def test_attach__pid_not_found__then_specific_error(tmp_path):
    pid = 4_000_000  # above the kernel's pid_max ceiling
    proc = run_lanetrace(["attach", "-o", str(tmp_path), str(pid)])
    assert proc.returncode != 0
    assert f"no such process: {pid}" in proc.stderr


NOBODY = 65534


def _skip_unless_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def _skip_unless_nobody_can_import_lanetrace() -> None:
    """lanetrace runs as uid 65534 only if that user can read this clone
    (not so for a clone under a 0700 directory such as `mktemp -d`)."""
    _skip_unless_root("switching to uid 65534")
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            "--", sys.executable, "-c", "import lanetrace.cli"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"uid {NOBODY} cannot run lanetrace from this clone ({reason})")


def test_attach__pid_of_another_user__then_not_permitted_error(tmp_path):
    _skip_unless_nobody_can_import_lanetrace()
    out = tmp_path / "traces"
    out.mkdir()
    out.chmod(0o777)
    tmp_path.chmod(0o755)
    proc = run_lanetrace(["attach", "-o", str(out), "1"], user=NOBODY, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert "not permitted to trace pid 1" in proc.stderr


def test_run__glob_matches_nothing__then_specific_error_and_no_leftovers(tmp_path):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-i", "workers!no_such_function_*", "--",
                          example("workers"), "1", "10"])
    assert proc.returncode != 0
    assert "'workers!no_such_function_*' matches no function" in proc.stderr
    sessions = os.listdir(out)
    assert leftover_segments(sessions[0]) == []


@pytest.mark.parametrize("glob,message", [
    ("a!b!c", "more than one '!'"),
    ("fo[o", "'[' at position 2 is never closed"),
    ("!x", "empty module part"),
])
def test_run__malformed_glob__then_specific_error(tmp_path, glob, message):
    proc = run_lanetrace(["run", "-o", str(tmp_path), "-i", glob, "--", example("workers"), "1"])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert os.listdir(tmp_path) == []


def test_run__unwritable_output_directory__then_specific_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_lanetrace(["run", "-o", str(blocker / "traces"), "--", example("workers"), "1"])
    assert proc.returncode != 0
    assert f"cannot write traces to {blocker / 'traces'}" in proc.stderr


PYTHON_MALLOC_LOOP = ("import json\n"
                      "doc = {'k%d' % i: 'v' * 40 for i in range(40)}\n"
                      "print('ready', flush=True)\n"
                      "while True:\n"
                      "    json.dumps(doc)\n")


def test_attach__root_to_a_process_of_another_user__then_calls_recorded_and_segment_private(
        tmp_path):
    """A root lanetrace attaching to a service account's process."""
    _skip_unless_root("attaching to another user's process")
    python = "/usr/bin/python3.11"
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed")
    target = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", "--", python, "-c", PYTHON_MALLOC_LOOP],
                              stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert target.stdout.readline().strip() == "ready"
        out = tmp_path / "traces"
        seen_owners = []
        proc = subprocess.Popen([sys.executable, "-m", "lanetrace", "attach", "-o", str(out),
                                 "-i", "libc.so*!malloc", "--duration", "3", str(target.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while proc.poll() is None:  # the segment, while it exists
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"`lanetrace attach --duration 3` did not end within 180 s: "
                            f"{proc.communicate()[1][-1500:]}")
            for name in os.listdir("/dev/shm"):
                if name.startswith("lanetrace-") and name.endswith(f"-{target.pid}-lanes"):
                    try:
                        st = os.stat(os.path.join("/dev/shm", name))
                        seen_owners.append((st.st_uid, st.st_gid, st.st_mode & 0o777))
                    except FileNotFoundError:
                        pass
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert target.poll() is None, "the target must keep running after detach"
        trace = Trace(single_trace_dir(str(out)))
        assert sum(n for (_, name), n in trace.entries.items() if name == "malloc") > 0
        assert trace.manifest["detached"] is True
        assert seen_owners and set(seen_owners) == {(NOBODY, NOBODY, 0o600)}
    finally:
        target.kill()
        target.wait()
