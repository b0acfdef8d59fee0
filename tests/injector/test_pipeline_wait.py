"""The one-shot injector starts next to supervisord, so it may wait for the
writer and the drainers: its spawned target is not resumed before they are
up, and a stop during that wait ends it with a clear error, the target ended
and no segment left (the real injector, with no services at all)."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import example, wait_until

WAIT_S = 120.0


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.frida
def test_injector__stopped_while_waiting_for_the_services__then_error_and_target_never_ran(tmp_path):
    run_dir = tempfile.mkdtemp(prefix="ltpw-", dir="/tmp")  # short: unix socket paths
    for sub in ("targets", "logs"):
        os.makedirs(os.path.join(run_dir, sub))
    session = f"20261127-000000-{os.getpid() % 0x10000:04x}"
    spec = {"sessionId": session, "traceRoot": str(tmp_path / "traces"), "drainers": 2,
            "selection": {"include": ["branchy!main"]},
            "spawn": {"argv": [example("branchy"), "good"], "env": dict(os.environ),
                      "cwd": str(tmp_path)}}
    spec_path = os.path.join(run_dir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    proc = subprocess.Popen([sys.executable, "-m", "lanetrace.injector", "--run-dir", run_dir,
                             "--spec", spec_path], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # the target inherits its stdout
    try:
        registered = wait_until(lambda: glob.glob(os.path.join(run_dir, "targets", "*.json")),
                                "the spawned target registered", timeout=WAIT_S)
        target = int(os.path.basename(registered[0]).split(".")[0])
        time.sleep(0.5)  # well inside the wait for the writer that never comes
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 1
        with open(os.path.join(run_dir, "result.json")) as f:
            result = json.load(f)
        assert "stopped before the writer and the drainers were ready" in result["error"]
        assert _state(target) in (None, "Z", "X")
        assert b"committed" not in output  # what branchy prints when it runs
        assert not glob.glob(f"/dev/shm/lanetrace-{session}-*")
        assert not os.listdir(os.path.join(run_dir, "targets"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", run_dir])
