"""The broker forwards published messages to subscribers and exits cleanly
(status 0, not killed) on SIGTERM while its proxy runs."""
import signal
import subprocess
import sys
import time

import zmq


def test_broker__sigterm_while_forwarding__then_exits_with_status_0(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    broker = subprocess.Popen([sys.executable, "-m", "lanetrace.supervise.broker",
                               "--run-dir", str(run_dir)], stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"hb.")
    sub.connect(f"ipc://{run_dir}/broker-sub.sock")
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"ipc://{run_dir}/broker-pub.sock")
    try:
        received = None
        deadline = time.monotonic() + 60  # a hang guard
        while received is None and time.monotonic() < deadline:
            pub.send_multipart([b"hb.test", b"{}"])
            if sub.poll(50):
                received = sub.recv_multipart()
        assert received == [b"hb.test", b"{}"]
        pub.send_multipart([b"hb.test", b"{}"])  # in flight when the signal lands
        broker.send_signal(signal.SIGTERM)
        _, stderr = broker.communicate(timeout=60)
        assert broker.returncode == 0, stderr
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
        for sock in (sub, pub):
            sock.close(0)
        ctx.term()
