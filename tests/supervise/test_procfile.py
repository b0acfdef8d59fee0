"""The Procfile as honcho/foreman would run it: each line's command, from the
repository root, no supervisord."""
import json
import os
import shlex
import signal
import subprocess
import tempfile

import pytest

from conftest import REPO, example
from supervise.daemonkit import free_port, lanetrace, wait_for
from e2e.tracecheck import Trace, count_mismatches, load_expectation


def _procfile_commands(run_dir: str) -> dict[str, list[str]]:
    from lanetrace.supervise.daemonconf import DEFAULT_DAEMON_DIR
    out = {}
    with open(os.path.join(REPO, "Procfile")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, command = line.partition(":")
            assert sep and name.isidentifier(), f"not a Procfile line: {line!r}"
            out[name] = shlex.split(command.replace(DEFAULT_DAEMON_DIR, run_dir))
    return out


@pytest.mark.frida
def test_procfile__every_command_started_like_honcho__then_the_daemon_traces_a_program(tmp_path):
    run_dir = tempfile.mkdtemp(prefix="ltp-", dir="/tmp")
    # What `lanetrace daemon start` would write; the launcher creates it otherwise.
    from lanetrace.core.rundir import RunDir
    from lanetrace.supervise.daemonconf import daemon_defaults, write_daemon_config
    cfg = dict(daemon_defaults(), traceRoot=str(tmp_path / "traces"),
               queryBind=f"127.0.0.1:{free_port()}")
    write_daemon_config(RunDir(run_dir).create(), cfg)
    commands = _procfile_commands(run_dir)
    assert set(commands) == {"broker", "writer", "drainer0", "drainer1", "injector", "watchdog",
                             "query"}
    procs = {name: subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
             for name, argv in commands.items()}
    try:
        expect = tmp_path / "expect.json"
        attach = wait_for(lambda: (lambda p: p if p.returncode == 0 else None)(
            lanetrace(["ctl", "attach", "--run-dir", run_dir, "--json", "--timeout", "20", "--",
                       example("tickboom"), "2", "1"], env={"LANETRACE_EXPECT": str(expect)})),
            "the Procfile daemon to take a command", timeout=120)
        pid = json.loads(attach.stdout)[0]["pid"]

        def ended():
            with open(os.path.join(cfg["traceRoot"], cfg["sessionId"], "session.json")) as f:
                doc = json.load(f)
            return [t for t in doc["targets"] if t["pid"] == pid and t["state"] == "ended"]
        wait_for(ended, "the target's trace to be finished", timeout=120)
        trace = Trace(os.path.join(cfg["traceRoot"], cfg["sessionId"], f"pid_{pid}"))
        assert count_mismatches(trace, load_expectation(str(expect))) == []
        status = lanetrace(["ctl", "status", "--run-dir", run_dir, "--json"])
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["processes"] == []  # no supervisord here
        assert all(p.poll() is None for p in procs.values()), \
            {n: p.returncode for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        import shutil
        shutil.rmtree(run_dir, ignore_errors=True)
