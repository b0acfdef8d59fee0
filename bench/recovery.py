"""Recovery time after SIGKILL of each lanetrace service, measured on a real
daemon (real supervisord) while it traces a real program.

    .venv/bin/python bench/recovery.py [--repeat N] [--drainers N] [--json]

For each kind of kill, N times at spaced moments:

  drainer   kill -9 drainer-K -> the shard's heartbeat in the target's
            segment moves again (written by the restarted drainer); also
            reported: until the shard's fallback flag is up (the watchdog
            acting on supervisord's exit event) and until it is cleared
  writer    kill -9 writer -> a ``hb.writer`` from the new writer's pid
            arrives on the broker (and a data-channel ping is acked)
  broker    kill -9 broker -> heartbeats flow through the new broker again
            (a subscriber connected before the kill receives any ``hb.*``)

Times are wall-clock from the kill(2) call: supervisord notices the exit
(lanetrace.supervise.supervisord wakes on SIGCHLD), forks and execs Python,
and the service starts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client

import orjson
import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "services"))

from supervisor.xmlrpc import SupervisorTransport  # noqa: E402

from lanetrace.core.bus import RECONNECT_IVL_MS  # noqa: E402
from lanetrace.core.datachannel import WriterClient  # noqa: E402
from lanetrace.core.shm import TargetSegment  # noqa: E402

TIMEOUT_S = 60.0


def lanetrace(*args):
    proc = subprocess.run([sys.executable, "-m", "lanetrace", *args], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode:
        raise SystemExit(f"lanetrace {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


class Bench:
    def __init__(self, drainers: int):
        self.tmp = tempfile.mkdtemp(prefix="ltbench-", dir="/tmp")
        self.run_dir = os.path.join(self.tmp, "run")
        self.drainers = drainers

    def rpc(self):
        t = SupervisorTransport(None, None, f"unix://{self.run_dir}/supervisord.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=t)

    def info(self, name):
        return self.rpc().supervisor.getProcessInfo(name)

    def start(self):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        lanetrace("daemon", "start", "--run-dir", self.run_dir, "-o", os.path.join(self.tmp, "traces"),
                  "--drainers", str(self.drainers), "--query-bind", f"127.0.0.1:{port}")
        out = lanetrace("ctl", "attach", "--run-dir", self.run_dir, "--json", "--",
                        os.path.join(REPO, "examples", "bin", "sleeper"), "3600")
        self.target = json.loads(out)[0]["pid"]
        with open(os.path.join(self.run_dir, "targets", f"{self.target}.json"), "rb") as f:
            self.segment = TargetSegment.open(orjson.loads(f.read())["shm"])
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"hb.")
        # reconnects to a restarted broker as the services' own sockets do
        self.sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self.sub.connect(f"ipc://{self.run_dir}/broker-sub.sock")

    def stop(self):
        try:
            self.segment.close()
            self.sub.close(0)
            self.ctx.term()
            lanetrace("ctl", "detach", "--run-dir", self.run_dir, str(self.target))
            lanetrace("daemon", "stop", "--run-dir", self.run_dir)
        finally:
            try:
                os.kill(self.target, signal.SIGKILL)
            except (ProcessLookupError, AttributeError):
                pass
            shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_running(self, name, old_pid):
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            i = self.info(name)
            if i["statename"] == "RUNNING" and i["pid"] != old_pid:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not come back")
            time.sleep(0.05)

    def _drain_sub(self):
        while self.sub.poll(0):
            self.sub.recv_multipart()

    def kill(self, name) -> tuple[int, float, int]:
        pid = self.info(name)["pid"]
        self._drain_sub()
        t_ns = time.monotonic_ns()
        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        return pid, t, t_ns

    def drainer(self, k) -> dict:
        name = f"lanetrace:drainer-{k}"
        pid, t, t_ns = self.kill(name)
        fresh = cleared = ordered = None
        deadline = time.perf_counter() + TIMEOUT_S
        saw_fallback = False
        while (fresh is None or cleared is None) and time.perf_counter() < deadline:
            if self.segment.shard_fallback()[k]:
                saw_fallback = True
                if ordered is None:
                    ordered = time.perf_counter() - t
            if fresh is None and self.segment.heartbeats()[k] > t_ns + 1:
                fresh = time.perf_counter() - t
            if fresh is not None and cleared is None and saw_fallback and \
                    not self.segment.shard_fallback()[k]:
                cleared = time.perf_counter() - t
            time.sleep(0.001)
        self.wait_running(name, pid)
        return {"fresh": fresh, "cleared": cleared, "ordered": ordered}

    def writer(self) -> dict:
        """The ping is sent right after the kill and resent every 50 ms
        (a drainer resends its batches the same way), on a thread, while
        this one watches the bus for the new writer's heartbeat."""
        client = WriterClient(f"ipc://{self.run_dir}/writer.sock", "bench", resend_after_s=0.05)
        client.request("ping", {}, deadline_s=TIMEOUT_S)  # connected before the kill
        acked = []

        def ping():
            client.request("ping", {}, deadline_s=TIMEOUT_S)
            acked.append(time.perf_counter() - t)

        pid, t, _ = self.kill("lanetrace:writer")
        pinger = threading.Thread(target=ping)
        pinger.start()
        fresh = None
        deadline = time.perf_counter() + TIMEOUT_S
        while fresh is None and time.perf_counter() < deadline:
            if self.sub.poll(10):
                topic, body = self.sub.recv_multipart()
                if topic == b"hb.writer" and orjson.loads(body).get("pid") != pid:
                    fresh = time.perf_counter() - t
        pinger.join()
        client.close()
        self.wait_running("lanetrace:writer", pid)
        return {"fresh": fresh, "acked": acked[0] if acked else None}

    def broker(self) -> dict:
        pid, t, _ = self.kill("lanetrace:broker")
        fresh = None
        deadline = time.perf_counter() + TIMEOUT_S
        time.sleep(0.001)
        self._drain_sub()  # anything already in flight before the kill
        while fresh is None and time.perf_counter() < deadline:
            if self.sub.poll(10):
                self.sub.recv_multipart()
                if self.info("lanetrace:broker")["pid"] != pid:
                    fresh = time.perf_counter() - t
        self.wait_running("lanetrace:broker", pid)
        return {"fresh": fresh}


def summarize(values):
    vals = [v * 1000 for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{min(vals):7.0f} {statistics.median(vals):7.0f} {max(vals):7.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--drainers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    b = Bench(args.drainers)
    results = {"drainer": [], "writer": [], "broker": []}
    try:
        b.start()
        time.sleep(2.0)
        for i in range(args.repeat):
            results["drainer"].append(b.drainer(i % args.drainers))
            time.sleep(1.5)
            results["writer"].append(b.writer())
            time.sleep(1.5)
            results["broker"].append(b.broker())
            time.sleep(1.5)
    finally:
        b.stop()
    rows = [
        ("drainer", "kill -> fallback ordered (watchdog)", [r["ordered"] for r in results["drainer"]]),
        ("drainer", "kill -> shard heartbeat fresh", [r["fresh"] for r in results["drainer"]]),
        ("drainer", "kill -> watchdog fallback cleared", [r["cleared"] for r in results["drainer"]]),
        ("writer", "kill -> hb.writer of new writer", [r["fresh"] for r in results["writer"]]),
        ("writer", "kill -> data-channel ping acked", [r["acked"] for r in results["writer"]]),
        ("broker", "kill -> heartbeats flow again", [r["fresh"] for r in results["broker"]]),
    ]
    if args.json:
        print(json.dumps({k: v for k, v in results.items()}, indent=2))
        return 0
    print(f"recovery after SIGKILL (ms; {args.repeat} kills each, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'service':<8} {'measured':<36} {'min':>7} {'median':>7} {'max':>7}")
    for service, what, vals in rows:
        print(f"{service:<8} {what:<36} {summarize(vals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
