"""Replicas: N processes on one port (SO_REUSEPORT), hand-started replicas on
other ports, and indexes shared through the trace directory."""
import http.client
import os
import signal
import subprocess
import sys
import time

import orjson

from .qhelpers import FOREIGN, OURS, start_server


def _replica_of_new_connection(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        body = orjson.dumps({"jsonrpc": "2.0", "method": "trace.info", "params": {"traceId": OURS}, "id": 1})
        c.request("POST", "/rpc", body)
        r = c.getresponse()
        assert orjson.loads(r.read())["result"]["eventCount"] == 15
        return r.getheader("X-Lanetrace-Replica")
    finally:
        c.close()


def test_replicas__two_on_one_port__then_both_answer(root):
    s = start_server(root, "--replicas", "2")
    try:
        seen = set()
        # the kernel spreads new connections by their source port: a few hundred
        # connections reach both listeners with overwhelming probability
        for _ in range(400):
            seen.add(_replica_of_new_connection(s.port))
            if len(seen) == 2:
                break
        assert len(seen) == 2
        assert str(s.proc.pid) not in seen  # the parent only supervises
    finally:
        s.stop()


def test_replicas__parent_stopped__then_children_stop_too(root):
    s = start_server(root, "--replicas", "2")
    pids = set()
    for _ in range(400):
        pids.add(int(_replica_of_new_connection(s.port)))
        if len(pids) == 2:
            break
    s.stop()
    # the parent waited for its children before exiting: they are gone
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_replicas__crashed_replica__then_restarted_and_port_still_served(root):
    s = start_server(root, "--replicas", "2")
    try:
        victim = int(_replica_of_new_connection(s.port))
        os.kill(victim, signal.SIGKILL)
        seen, resets = set(), 0
        # liveness bound, not a speed check: the supervisor starts a new process
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                seen.add(int(_replica_of_new_connection(s.port)))
            except ConnectionError:
                # connections queued on the killed listener are reset by the kernel
                resets += 1
                continue
            if len(seen) == 2:
                break
        assert victim not in seen and len(seen) == 2
    finally:
        s.stop()


def test_replicas__started_by_hand_on_other_ports__then_serve_the_same_root(root):
    a = start_server(root)
    b = start_server(root)
    try:
        assert a.port != b.port
        ra = a.result("events.get", {"traceId": FOREIGN, "limit": 5})
        rb = b.result("events.get", {"traceId": FOREIGN, "limit": 5})
        assert ra["events"] == rb["events"]
        # a cursor from one replica continues on the other: cursors carry no server state
        nxt = b.result("events.get", {"traceId": FOREIGN, "limit": 5, "cursor": ra["metadata"]["nextCursor"]})
        assert nxt["metadata"]["offset"] == 5
    finally:
        a.stop()
        b.stop()


def test_reuseport__two_single_servers_on_one_port__then_both_bind(root):
    a = start_server(root, "--reuseport")
    try:
        cmd = [sys.executable, "-m", "lanetrace", "serve", "--trace-root", root, "--bind",
               f"127.0.0.1:{a.port}", "--reuseport", "--access-log", "off"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        line = proc.stdout.readline().decode()
        assert f":{a.port}/rpc" in line
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        a.stop()


def test_replicas__parent_killed__then_replicas_exit_too(root):
    s = start_server(root, "--replicas", "2")
    pids = set()
    for _ in range(400):
        pids.add(int(_replica_of_new_connection(s.port)))
        if len(pids) == 2:
            break
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    deadline = time.monotonic() + 60  # liveness bound: they get SIGTERM at once
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
