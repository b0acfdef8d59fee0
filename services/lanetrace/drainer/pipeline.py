"""Pipelined client of the data channel (docs/internals.md, "Data channel"):
up to ``depth`` requests in flight to the writer, each with a callback run
when its ack arrives, in send order.

Why: a drainer that waits for every ack before collecting again leaves a hot
thread's rings full for a whole writer round trip; with a few batches in
flight the writer is encoding one while the drainer copies the next. The
ring commit still happens only after the ack (the callback), so a writer
crash loses nothing.

Ordering: the writer serves one DEALER's requests in order, so acks come in
send order. If the oldest request stays unacked for ``resend_after_s`` (the
writer was killed), every unacked request is resent in order on a fresh
socket; the writer drops the duplicates by sequence number.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import orjson
import zmq

from lanetrace.core.datachannel import WriterRejected


@dataclass
class _InFlight:
    msg_id: str
    frames: list
    on_ack: Callable[[], None] | None
    sent_at: float
    on_nack: Callable[[str], None] | None = None
    acked: bool = False


class Pipeline:
    def __init__(self, endpoint: str, client_name: str, depth: int = 4,
                 resend_after_s: float = 3.0, ctx: zmq.Context | None = None,
                 on_wait: Callable[[], None] | None = None):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.endpoint = endpoint
        self.depth = depth
        self.resend_after_s = resend_after_s
        self.ctx = ctx or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._prefix = f"{client_name}:{os.getpid()}:{time.monotonic_ns()}:"
        self._pending: deque[_InFlight] = deque()
        self._by_id: dict[str, _InFlight] = {}
        self.resends = 0
        # Called while blocked on acks: a client waiting for a restarting
        # writer is alive and must keep saying so (heartbeats).
        self.on_wait = on_wait
        self._connect()

    def _connect(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def idle(self) -> bool:
        return not self._pending

    def send(self, kind: str, header: dict, payload=None,
             on_ack: Callable[[], None] | None = None,
             on_nack: Callable[[str], None] | None = None) -> None:
        """Queue one request; blocks (serving acks) while ``depth`` are in
        flight. A nack raises WriterRejected, unless ``on_nack`` takes it (the
        request then counts as completed)."""
        while len(self._pending) >= self.depth:
            self.poll(100)
            if self.on_wait is not None:
                self.on_wait()
        msg_id = self._prefix + str(next(self._ids))
        frames = [kind.encode(), orjson.dumps(dict(header, msgId=msg_id))]
        if payload is not None:
            frames.append(payload)
        item = _InFlight(msg_id, frames, on_ack, time.monotonic(), on_nack)
        self.sock.send_multipart(frames, copy=False)
        self._pending.append(item)
        self._by_id[msg_id] = item

    def poll(self, timeout_ms: int = 0) -> int:
        """Serve acks that arrived (waiting up to timeout_ms for the first);
        returns how many requests completed."""
        done = 0
        wait = timeout_ms
        while self._pending and self.sock.poll(wait):
            wait = 0
            reply = self.sock.recv_multipart()
            if len(reply) < 2:
                continue
            item = self._by_id.get(reply[1].decode(errors="replace"))
            if item is None:
                continue  # an ack of a request already completed (a resend's twin)
            if reply[0] == b"nack":
                detail = reply[2].decode(errors="replace") if len(reply) > 2 else ""
                if item.on_nack is None:
                    raise WriterRejected(f"writer refused {item.frames[0].decode()}: {detail}")
                item.on_nack(detail)
                item.on_ack = None
                item.acked = True
            if reply[0] == b"ack":
                item.acked = True
        while self._pending and self._pending[0].acked:
            item = self._pending.popleft()
            del self._by_id[item.msg_id]
            if item.on_ack is not None:
                item.on_ack()
            done += 1
        if self._pending and time.monotonic() - self._pending[0].sent_at > self.resend_after_s:
            self._resend()
        return done

    def _resend(self) -> None:
        # A restarted writer binds a fresh socket; a new DEALER identity also
        # keeps stale replies to the old one away.
        self.sock.close(0)
        self._connect()
        now = time.monotonic()
        for item in self._pending:
            if not item.acked:
                self.sock.send_multipart(item.frames, copy=False)
                item.sent_at = now
                self.resends += 1

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every request is acked; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._pending:
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.poll(100)
            if self.on_wait is not None:
                self.on_wait()
        return True

    def close(self) -> None:
        self.sock.close(0)
