"""The broker: a ZeroMQ XSUB/XPUB proxy that carries heartbeats, metrics and
control events between the services of a session.

Run as ``python -m lanetrace.supervise.broker --run-dir DIR``; supervisord restarts it
if it dies, and ZeroMQ peers reconnect to the same ipc paths by themselves."""
import argparse
import os
import signal
import sys

import zmq

from lanetrace.core.rundir import RunDir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lanetrace-broker")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
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
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        zmq.proxy(xsub, xpub)
    except (KeyboardInterrupt, zmq.ContextTerminated):
        pass
    finally:
        xsub.close(0)
        xpub.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
