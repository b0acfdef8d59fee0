"""Daemon mode end to end: ``lanetrace daemon start|stop``, ``lanetrace ctl
attach|detach|status`` and ``supervisorctl`` on the shipped configuration,
with real supervisord, real services and real example programs."""
import json
import os
import subprocess
import time

import pytest

from conftest import example
from supervise.daemonkit import Daemon, lanetrace, leftover_segments, traces_of, wait_for
from e2e.tracecheck import Trace, count_mismatches, load_expectation

WORKERS_SELECTION = ["-I", "workers", "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*"]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "traces")
    try:
        yield d.start()
    finally:
        d.cleanup()


# ---- errors without a daemon ------------------------------------------------------

@pytest.mark.parametrize("args", [["ctl", "status"], ["ctl", "attach", "1"], ["ctl", "detach", "1"],
                                  ["daemon", "stop"]])
def test_ctl__daemon_not_running__then_clear_error_at_once(tmp_path, args):
    run_dir = str(tmp_path / "no-daemon")
    proc = lanetrace([*args[:2], "--run-dir", run_dir, *args[2:]], timeout=30)
    assert proc.returncode == 1
    assert "the lanetrace daemon is not running" in proc.stderr
    assert "lanetrace daemon start" in proc.stderr


def test_ctl_attach__no_such_pid__then_specific_error_before_contacting_the_daemon(tmp_path):
    proc = lanetrace(["ctl", "attach", "--run-dir", str(tmp_path), "4000000"], timeout=30)
    assert proc.returncode == 2
    assert "no such process: 4000000" in proc.stderr


# ---- the running daemon -----------------------------------------------------------


@pytest.mark.frida
def test_daemon_start__then_all_services_run_and_supervisorctl_sees_them(daemon):
    procs = daemon.processes()
    expected = {"lanetrace:broker", "lanetrace:writer", "lanetrace:drainer-0",
                "lanetrace:drainer-1", "lanetrace:injector", "lanetrace:query-0",
                "watchdog:watchdog"}
    assert expected <= set(procs)
    wait_for(lambda: all(daemon.processes()[n]["statename"] == "RUNNING" for n in expected),
             "every service RUNNING")
    out = daemon.supervisorctl("status")
    assert "lanetrace:drainer-1" in out.stdout and "RUNNING" in out.stdout
    again = lanetrace(["daemon", "start", "--run-dir", daemon.run_dir, "-o", daemon.trace_root])
    assert again.returncode == 2 and "already running" in again.stderr


@pytest.mark.frida
def test_ctl_attach__two_spawned_programs_at_once__then_each_recorded_exactly(daemon, tmp_path):
    expects = [tmp_path / "a.json", tmp_path / "b.json"]
    pids = [daemon.spawn([example("tickboom"), "3", "1"], expects[0]),
            daemon.spawn([example("workers"), "2", "300"], expects[1], WORKERS_SELECTION)]
    for pid, expect_path in zip(pids, expects):
        entry = daemon.wait_ended(pid)
        assert entry["exitCode"] == 0 and not entry["error"], entry
        trace = Trace(daemon.trace_dir(pid))
        expect = load_expectation(str(expect_path))
        assert expect["pid"] == pid
        assert count_mismatches(trace, expect) == []
        assert trace.manifest["complete"] is True
        assert sum(trace.manifest["drops"].values()) == 0
    assert [os.path.basename(p) for p in traces_of(daemon.session_dir())] == \
        sorted(f"pid_{p}" for p in pids)
    assert {t["pid"] for t in daemon.session()["processTree"]} >= set(pids)


@pytest.mark.frida
def test_ctl_attach_and_detach__running_process__then_it_keeps_running_and_its_trace_is_final(
        daemon, tmp_path):
    target = subprocess.Popen([example("sleeper"), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert "ready" in target.stdout.readline() + target.stdout.readline()
        daemon.ctl("attach", str(target.pid))
        status = daemon.status()
        live = [t for t in status["targets"] if t["pid"] == target.pid]
        assert live and live[0]["state"] == "tracing"
        assert live[0]["mode"] in ("GLOBAL_ONLY", "DUAL_WRITE", "PER_THREAD_ONLY")
        assert "drops" in live[0] and "fallback" in live[0]
        assert any(p["name"] == "lanetrace:writer" for p in status["processes"])
        gc = lanetrace(["gc", "--dry-run"])
        assert status["sessionId"] not in gc.stdout, "gc must leave a live daemon alone"
        time.sleep(1.0)
        out = json.loads(daemon.ctl("detach", "--json", str(target.pid)).stdout)[0]
        assert out["detached"] is True and not out["error"], out
        assert target.poll() is None, "a detached target keeps running"
        trace = Trace(daemon.trace_dir(target.pid))
        assert trace.manifest["complete"] is True and trace.manifest["detached"] is True
        assert trace.manifest["hooks"]["fast"] + trace.manifest["hooks"]["fallback"] > 0
        assert sum(n for (tid, name), n in trace.entries.items() if name == "heartbeat_tick") > 0
        assert leftover_segments(f"-{target.pid}-") == []
        again = daemon.ctl("detach", str(target.pid), check=False)
        assert again.returncode == 1 and f"pid {target.pid} is not traced" in again.stderr
    finally:
        target.kill()
        target.wait()


@pytest.mark.frida
def test_ctl_attach__selection_matches_nothing__then_specific_error_and_daemon_keeps_serving(daemon):
    bad = daemon.ctl("attach", "-i", "workers!no_such_fn_*", "--", example("workers"), "1", "10",
                     check=False)
    assert bad.returncode == 1
    assert "'workers!no_such_fn_*' matches no function" in bad.stderr
    assert daemon.status()["targets"] == []
    pid = daemon.spawn([example("workers"), "1", "50"])
    assert daemon.wait_ended(pid)["exitCode"] == 0


@pytest.mark.frida
def test_daemon_stop__with_a_live_target__then_trace_finalized_and_nothing_left(tmp_path):
    d = Daemon(tmp_path / "traces")
    try:
        d.start()
        session = os.path.basename(d.session_dir())
        target = subprocess.Popen([example("sleeper"), "60"], stdout=subprocess.PIPE, text=True)
        try:
            assert "ready" in target.stdout.readline() + target.stdout.readline()
            d.ctl("attach", str(target.pid))
            session_dir = d.session_dir()
            proc = d.stop()
            assert proc.returncode == 0, proc.stderr
            assert target.poll() is None
        finally:
            target.kill()
            target.wait()
        trace = Trace(os.path.join(session_dir, f"pid_{target.pid}"))
        assert trace.manifest["complete"] is True
        assert leftover_segments(session) == []
        assert not os.path.exists(d.run_dir)
        assert os.path.isdir(os.path.join(session_dir, "logs"))
    finally:
        d.cleanup()


@pytest.mark.frida
def test_ctl_attach_follow_children__shell_runs_two_programs__then_each_child_has_its_own_trace(
        daemon, tmp_path):
    script = f"{example('workers')} 2 100; {example('workers')} 1 50"
    out = json.loads(daemon.ctl("attach", "--json", "--follow-children", "--", "/bin/sh", "-c",
                                script).stdout)[0]
    root = out["pid"]

    def children_ended():
        doc = daemon.session()
        kids = [t for t in doc["targets"] if t.get("parentPid") == root]
        return kids if len(kids) == 2 and all(t["state"] == "ended" for t in kids) else None
    kids = wait_for(children_ended, "two traced children", timeout=120)
    for kid in kids:
        assert kid["exitCode"] == 0
        trace = Trace(kid["traceDir"])
        assert trace.manifest["complete"] is True
        assert sum(n for (tid, name), n in trace.entries.items() if name == "worker_main") >= 1
    tree = {t["pid"]: t["parentPid"] for t in daemon.session()["processTree"]}
    assert all(tree[k["pid"]] == root for k in kids)
