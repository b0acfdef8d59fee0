"""Attach to a running Debian python3.11 that computes a known answer: repeated
attach/detach rounds each record calls and leave the process to finish with
the right answer; an attach to a python3.11 of another user records calls.
Attach rounds to a program that keeps values in every vector register leave
them all as they were (Frida's own injection puts back only the general
registers of the thread it borrows)."""
import os
import select
import shutil
import subprocess
import tempfile

import pytest

from conftest import EXAMPLES_BIN, run_lanetrace
from e2e.tracecheck import Trace, single_trace_dir
from fidelity.fidelity import CAPTURE_OPTIONS

pytestmark = pytest.mark.frida

PYTHON = "/usr/bin/python3.11"
WORK = ('import hashlib, json\n'
        'def work():\n'
        '    d = {"k%d" % i: [i, str(i) * 40] for i in range(400)}\n'
        '    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()\n')
# Runs until the stop file appears; the answer does not depend on how long.
TARGET = WORK + ('import os, sys, time\n'
                 'first = work()\n'
                 'print("ready", flush=True)\n'
                 'mismatches = 0\n'
                 'while not os.path.exists(sys.argv[1]):\n'
                 '    mismatches += work() != first\n'
                 '    time.sleep(0.002)\n'
                 'print("answer", first, "mismatches", mismatches, flush=True)\n')
SELECTION = ["-i", "libc.so*!malloc"]


def _expected_answer() -> str:
    scope = {}
    exec(WORK, scope)
    return f"answer {scope['work']()} mismatches 0\n"


def _start(script_dir: str, prefix=()) -> tuple[subprocess.Popen, str]:
    script = os.path.join(script_dir, "target.py")
    with open(script, "w") as f:
        f.write(TARGET)
    os.chmod(script, 0o644)
    stop = os.path.join(script_dir, "stop")
    target = subprocess.Popen([*prefix, PYTHON, script, stop], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    ready, _, _ = select.select([target.stdout], [], [], 60)
    line = target.stdout.readline() if ready else ""
    if line != "ready\n":
        target.kill()
        raise RuntimeError(f"target did not start: {line!r} {target.stderr.read()[-500:]!r}")
    return target, stop


def _attach_once(pid: int, out: str) -> Trace:
    try:
        proc = run_lanetrace(["attach", "-o", out, *CAPTURE_OPTIONS, "--duration", "1",
                              *SELECTION, str(pid)], timeout=120)
    except subprocess.TimeoutExpired as e:
        stderr = (e.stderr or b"").decode(errors="replace")
        pytest.fail(f"`lanetrace attach --duration 1` did not end within 120 s: {stderr[-600:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Trace(single_trace_dir(out))


def _finish(target: subprocess.Popen, stop: str) -> tuple[int, str]:
    open(stop, "w").close()
    out, err = target.communicate(timeout=60)
    return target.returncode, out + err[-1000:]


def _check_answer(returncode: int, output: str) -> None:
    assert (returncode, output) == (0, _expected_answer())


def test_attach_python__three_attach_detach_rounds__then_each_records_calls_and_answer_is_right(
        tmp_path):
    if not os.path.exists(PYTHON):
        pytest.fail(f"{PYTHON} is not installed: run `make native examples` (APT_PKGS)")
    target, stop = _start(str(tmp_path))
    try:
        for round_ in range(3):
            trace = _attach_once(target.pid, str(tmp_path / f"traces-{round_}"))
            mallocs = sum(n for (_, name), n in trace.entries.items() if name == "malloc")
            assert mallocs > 0, f"round {round_}: no call recorded"
            assert trace.manifest["detached"] is True
            assert target.poll() is None, f"round {round_}: the target died ({target.returncode})"
        returncode, output = _finish(target, stop)
        _check_answer(returncode, output)
    finally:
        if target.poll() is None:
            target.kill()


def test_attach_python__target_runs_as_another_user__then_calls_are_recorded(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a target as uid 65534 and to attach to it")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if not os.path.exists(PYTHON):
        pytest.fail(f"{PYTHON} is not installed: run `make native examples` (APT_PKGS)")
    # The target reads its script from a directory uid 65534 can read,
    # wherever the clone is.
    script_dir = tempfile.mkdtemp(prefix="lanetrace-other-user-")
    os.chmod(script_dir, 0o755)
    try:
        try:
            target, stop = _start(script_dir, ["setpriv", "--reuid=65534", "--regid=65534",
                                               "--clear-groups", "--"])
        except RuntimeError as e:
            pytest.skip(f"cannot run python3.11 as uid 65534 here: {e}")
        try:
            trace = _attach_once(target.pid, str(tmp_path / "traces"))
            mallocs = sum(n for (_, name), n in trace.entries.items() if name == "malloc")
            assert mallocs > 0, "no call recorded"
            assert target.poll() is None, "the target died"
            returncode, output = _finish(target, stop)
            _check_answer(returncode, output)
        finally:
            if target.poll() is None:
                target.kill()
    finally:
        shutil.rmtree(script_dir, ignore_errors=True)


def test_attach__program_with_live_vector_registers__then_every_register_keeps_its_value(tmp_path):
    vecspin = os.path.join(EXAMPLES_BIN, "vecspin")
    target = subprocess.Popen([vecspin, "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
    try:
        first = target.stdout.readline()
        if first.startswith("no avx2"):
            pytest.skip("the CPU has no AVX2")
        assert first.startswith("ready "), first
        for round_ in range(3):
            trace = _attach_once(target.pid, str(tmp_path / f"traces-{round_}"))
            assert trace.manifest["detached"] is True
            assert target.poll() is None, f"round {round_}: the target died ({target.returncode})"
        target.terminate()
        out, err = target.communicate(timeout=60)
        assert target.returncode == 0, err[-1000:]
        passes, changed = (int(x) for x in out.split()[1::2])
        assert passes > 0 and changed == 0, out
    finally:
        if target.poll() is None:
            target.kill()
