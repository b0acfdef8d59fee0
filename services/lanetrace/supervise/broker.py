"""The broker: a ZeroMQ XSUB/XPUB proxy that carries heartbeats, metrics and
control events between the services of a session.

Run as ``python -m lanetrace.supervise.broker --run-dir DIR``; supervisord restarts it
if it dies, and ZeroMQ peers reconnect to the same ipc paths by themselves.

The proxy runs on a thread and the main thread waits for SIGTERM/SIGINT with
sigwait(), then stops the proxy through its control socket: a Python signal
handler would run only when zmq_proxy() returns, which a signal that lands
while it forwards a message never makes it do."""
import argparse
import os
import signal
import sys
import threading

import zmq

from lanetrace.core.rundir import RunDir

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lanetrace-broker")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    # Blocked before any thread starts, so every thread inherits the mask and
    # the signals wait for sigwait() below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock, endpoint in ((xsub, run_dir.broker_pub), (xpub, run_dir.broker_sub)):
        path = endpoint[len("ipc://"):]
        # A previous broker killed with SIGKILL leaves its socket file behind;
        # binding over it is safe because only one broker runs per run dir.
        if os.path.exists(path):
            os.unlink(path)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
    # Let late subscribers see every subscription-relevant message without a
    # slow-joiner gap for topics they already asked for.
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    control_endpoint = f"inproc://broker-control-{os.getpid()}"
    control_out = ctx.socket(zmq.PAIR)
    control_out.bind(control_endpoint)
    control_in = ctx.socket(zmq.PAIR)
    control_in.connect(control_endpoint)

    def forward() -> None:
        try:
            zmq.proxy_steerable(xsub, xpub, None, control_in)
        except zmq.ContextTerminated:
            pass

    proxy = threading.Thread(target=forward, name="proxy")
    proxy.start()
    signal.sigwait(STOP_SIGNALS)
    control_out.send(b"TERMINATE")
    proxy.join()
    for sock in (xsub, xpub, control_in, control_out):
        sock.close(0)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
