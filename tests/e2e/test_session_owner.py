"""A one-shot session whose ``lanetrace`` CLI is killed (SIGKILL: no chance
to stop anything) goes on tracing its target to the end, finishes the trace,
and then ends itself: no session process is left behind."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import example, wait_until

pytestmark = pytest.mark.frida


def _session_processes(run_dir: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if run_dir in cmdline:
            found.append(int(entry))
    return found


def test_run__cli_killed_while_tracing__then_trace_finished_and_session_ends_itself(tmp_path):
    out = tmp_path / "traces"
    cli = subprocess.Popen([sys.executable, "-m", "lanetrace", "run", "-o", str(out), "--",
                            example("sleeper"), "4"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: glob.glob(str(out / "*" / "pid_*")) or cli.poll() is not None,
               "a trace directory (tracing has begun)", timeout=120)
    assert cli.poll() is None, "lanetrace run ended before it traced anything"
    (session_dir,) = glob.glob(str(out / "*"))
    run_dir = f"/tmp/lanetrace-run-{os.path.basename(session_dir)}"
    cli.kill()
    cli.wait()
    wait_until(lambda: not _session_processes(run_dir), "the session's processes to end", timeout=120)
    (manifest,) = glob.glob(str(out / "*" / "pid_*" / "trace.json"))
    with open(manifest) as f:
        m = json.load(f)
    assert m["complete"] is True and m["eventCount"] > 0
    subprocess.run([sys.executable, "-m", "lanetrace", "gc"], check=True, capture_output=True)
    assert not os.path.exists(run_dir)
