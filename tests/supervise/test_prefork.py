"""supervisord --prefork (lanetrace.supervise.prefork): a service command
runs in a child forked from supervisord's interpreter, which behaves as the
service exec'd would (its output in its log, its own signal handling, a
clean exit status); any other command is exec'd."""
import json
import os
import subprocess
import sys
import tempfile
import xmlrpc.client

import pytest
from supervisor.xmlrpc import SupervisorTransport

from conftest import wait_until
from lanetrace.supervise import prefork

WAIT_S = 60.0

CONF = """[unix_http_server]
file={rd}/supervisord.sock

[supervisord]
nodaemon=true
silent=true
logfile={rd}/supervisord.log
pidfile={rd}/supervisord.pid
childlogdir={rd}
environment=PYTHONUNBUFFERED="1"

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:writer]
command={py} -m lanetrace.writer --run-dir {rd} --trace-root {rd}/traces --session s1
startsecs=0
stdout_logfile={rd}/writer.log
redirect_stderr=true

[program:sleeper]
command=/bin/sleep 600
startsecs=0
"""


def _rpc(rd: str):
    transport = SupervisorTransport(None, None, f"unix://{rd}/supervisord.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _running_pid(rd: str, name: str):
    try:  # a fresh proxy: a transport that failed to connect stays unusable
        info = _rpc(rd).supervisor.getProcessInfo(name)
    except (OSError, xmlrpc.client.Fault):
        return None
    return info["pid"] if info["statename"] == "RUNNING" else None


@pytest.fixture(scope="module")
def supervisord():
    rd = tempfile.mkdtemp(prefix="ltpf-", dir="/tmp")  # short: unix socket paths
    conf = os.path.join(rd, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(rd=rd, py=sys.executable))
    proc = subprocess.Popen([sys.executable, "-m", "lanetrace.supervise.supervisord", "--prefork",
                             "-c", conf], cwd=rd, start_new_session=True)
    try:
        pids = {name: wait_until(lambda n=name: _running_pid(rd, n), f"{name} running",
                                 timeout=WAIT_S)
                for name in ("writer", "sleeper")}
        yield rd, _rpc(rd), pids
    finally:
        try:
            _rpc(rd).supervisor.shutdown()
        except (OSError, xmlrpc.client.Fault):
            proc.terminate()
        proc.wait(WAIT_S)
        subprocess.run(["rm", "-rf", rd])


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_prefork__service_command__then_forked_child_named_after_the_service(supervisord):
    rd, rpc, pids = supervisord
    assert _comm(pids["writer"]) == "writer"
    # the writer answers on its socket: the service really runs
    wait_until(lambda: os.path.exists(os.path.join(rd, "writer.sock")), "writer.sock bound",
               timeout=WAIT_S)


def test_prefork__other_command__then_exec_as_usual(supervisord):
    _, _, pids = supervisord
    assert _comm(pids["sleeper"]) == "sleep"


def test_prefork__service_stopped__then_its_own_handler_runs_and_output_reaches_its_log(
        supervisord):
    rd, rpc, _ = supervisord
    rpc.supervisor.stopProcess("writer")
    info = rpc.supervisor.getProcessInfo("writer")
    assert info["statename"] == "STOPPED"
    assert info["exitstatus"] == 0  # SIGTERM handled by the writer, not supervisord's handler
    with open(os.path.join(rd, "writer.log")) as f:
        log = f.read()
    assert "writer listening on" in log and "writer stopped" in log


def test_preload__thread_running__then_prefork_refused():
    probe = ("import json, threading, time\n"
             "from lanetrace.supervise import prefork\n"
             "alone = prefork.preload(())\n"
             "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
             "print(json.dumps([alone, prefork.preload(())]))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, False]


@pytest.mark.parametrize("argv, expected", [
    ([sys.executable, "-m", "lanetrace.writer", "--run-dir", "x"], "lanetrace.writer"),
    ([sys.executable, "-m", "lanetrace.injector.daemon"], "lanetrace.injector.daemon"),
    ([sys.executable, "-m", "http.server"], None),
    ([sys.executable, "-c", "pass"], None),
    (["/bin/sleep", "1"], None),
])
def test_service_module__command__then_only_service_modules_of_this_python(argv, expected):
    assert prefork.service_module(argv[0], argv) == expected
