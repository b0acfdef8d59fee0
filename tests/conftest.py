"""Shared test helpers: running the real ``lanetrace`` command and reading
the traces it writes."""
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_BIN = os.path.join(REPO, "examples", "bin")


def example(name: str) -> str:
    path = os.path.join(EXAMPLES_BIN, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run `make examples` (make test does)")
    return path


def wait_until(check, what: str, timeout: float):
    """Poll ``check`` until it returns something truthy, and return that; fail
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.02)


def run_lanetrace(args, *, timeout=180, env=None, cwd=None, user=None, text=True):
    """Run ``python -m lanetrace ARGS`` as a user would; returns CompletedProcess
    (with ``text=False``, stdout and stderr are bytes: a target's binary output).

    A run that ends with lanetrace's own report of the rare Frida injection
    hang (lanetrace.injector.fridaguard) is run once more: that failure is Frida's,
    it is reported to the user as such, and it says nothing of the case under
    test. Any other failure is returned as it is."""
    from lanetrace.injector.fridaguard import HANG_MESSAGE

    cmd = [sys.executable, "-m", "lanetrace", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *cmd]
    full_env = dict(os.environ, **(env or {}))
    for attempt in (1, 2):
        proc = subprocess.run(cmd, capture_output=True, text=text, timeout=timeout,
                              env=full_env, cwd=cwd)
        stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
        if proc.returncode == 0 or HANG_MESSAGE not in stderr:
            return proc
    return proc
