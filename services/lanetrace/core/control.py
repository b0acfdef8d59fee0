"""The control protocol between ``lanetrace ctl`` and the daemon's injector:
request/reply over the broker's pub/sub (proto/bus.proto, ``ControlRequest``
and ``ControlReply``)::

    request  topic ctl.req.<verb>    {id, verb, args, replyTo}
    reply    topic <replyTo>         {id, ok, result | error}

The client subscribes to its own ``ctl.reply.<client>`` topic, then
publishes the request and re-publishes it (same id) every
``RESEND_S`` until a reply arrives or the timeout passes: PUB/SUB drops
messages sent before a connection is up, and the broker itself may be
restarting. The server remembers the replies of the last requests by id, so
a repeated request is answered from that memory and never executed twice.

Verbs: ``ping``, ``attach`` ``{pid}`` or ``{spawn: {argv, env, cwd}}``
(+ ``selection``, ``followChildren``), ``detach`` ``{pid}``, ``status``.
"""
from __future__ import annotations

import os
import secrets
import time

import orjson
import zmq

from lanetrace.core.bus import CONTROL_REPLY, CONTROL_REQUEST, receive
from lanetrace.core.rundir import RunDir

RESEND_S = 0.5
VERBS = ("ping", "attach", "detach", "status")


class ControlError(Exception):
    """A control command failed; the message is for the user."""


class ControlClient:
    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.ctx = zmq.Context()
        self.client_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.reply_topic = CONTROL_REPLY + self.client_id
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(run_dir.broker_pub)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.reply_topic.encode())
        self.sub.connect(run_dir.broker_sub)

    def request(self, verb: str, args: dict | None = None, timeout_s: float = 30.0) -> dict:
        req_id = secrets.token_hex(8)
        msg = [(CONTROL_REQUEST + verb).encode(),
               orjson.dumps({"id": req_id, "verb": verb, "args": args or {},
                             "replyTo": self.reply_topic})]
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise ControlError(f"no reply to {verb!r} from the daemon's injector within "
                                   f"{timeout_s:.0f}s (see the logs in {self.run_dir.logs_dir})")
            if now >= next_send:
                try:
                    self.pub.send_multipart(msg, zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_send = now + RESEND_S
            got = receive(self.sub, int(max(1, min(next_send, deadline) - now) * 1000) or 1)
            if got is None:
                continue
            _, reply = got
            if reply.get("id") != req_id:
                continue
            if not reply.get("ok"):
                raise ControlError(reply.get("error") or f"{verb} failed")
            return reply.get("result") or {}

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()
