"""Client side of the data channel to the writer (docs/internals.md, "Data
channel"): a DEALER that sends a request and waits for its ack, resending the
same request if the writer does not answer in time (it may have been killed
and restarted by supervisord; the writer drops duplicates)."""
from __future__ import annotations

import itertools
import os
import time

import orjson
import zmq


RECONNECT_IVL_MS = 10


class WriterUnavailable(Exception):
    pass


class WriterRejected(Exception):
    """The writer answered with a nack: the request itself is bad."""


class WriterClient:
    def __init__(self, endpoint: str, client_name: str, ctx: zmq.Context | None = None,
                 resend_after_s: float = 3.0):
        self.endpoint = endpoint
        self.ctx = ctx or zmq.Context.instance()
        self.client_name = client_name
        self.resend_after_s = resend_after_s
        self._ids = itertools.count(1)
        self._prefix = f"{client_name}:{os.getpid()}:{time.monotonic_ns()}:"
        self._connect()

    def _connect(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a client may start before the writer binds (the injector does):
        # retry the connect often, not ZeroMQ's default 100 ms
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self.sock.connect(self.endpoint)

    def request(self, kind: str, header: dict, payload=None, deadline_s: float | None = 60.0) -> None:
        """Send one request and block until it is acked. Raises
        WriterUnavailable after ``deadline_s`` without an ack (None: forever)."""
        msg_id = self._prefix + str(next(self._ids))
        header = dict(header, msgId=msg_id)
        frames = [kind.encode(), orjson.dumps(header)]
        if payload is not None:
            frames.append(payload)
        start = time.monotonic()
        while True:
            self.sock.send_multipart(frames, copy=False)
            wait_until = time.monotonic() + self.resend_after_s
            while True:
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                if not self.sock.poll(int(remaining * 1000) + 1):
                    continue
                reply = self.sock.recv_multipart()
                if len(reply) >= 2 and reply[1].decode() == msg_id:
                    if reply[0] == b"ack":
                        return
                    if reply[0] == b"nack":
                        detail = reply[2].decode() if len(reply) > 2 else ""
                        raise WriterRejected(f"writer refused {kind}: {detail}")
                # an ack of an earlier, already resent request: ignore
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise WriterUnavailable(f"writer at {self.endpoint} did not ack {kind} "
                                        f"within {deadline_s:.0f}s")
            # Reconnect: a restarted writer binds a fresh socket; a new DEALER
            # identity also keeps stale replies from the old one away.
            self.sock.close(0)
            self._connect()

    def close(self) -> None:
        self.sock.close(0)
