"""The broker bus: every service publishes heartbeats, metrics and control
events as ``[topic, orjson payload]`` and subscribes to the topics it needs.

PUB/SUB over the broker is fire-and-forget by design: nothing on the bus may
be needed for correctness of the recorded data (that travels on the acked
data channel); a lost heartbeat only delays a decision. Each topic's payload
is a message of proto/bus.proto."""
from __future__ import annotations

import os
import time

import orjson
import zmq

# Topics; the ones written with <...> are a prefix and a name.
HEARTBEAT = "hb."                    # hb.<service>
WRITER_METRICS = "metrics.writer"
DRAINER_METRICS = "metrics.drainer-"  # metrics.drainer-<k>
METRICS = "metrics."                 # both of the above
TARGET_STARTED = "target.started"
TARGET_ENDED = "target.ended"
TARGET_DRAINED = "target.drained"
MODE_CHANGE = "ctl.mode"
CONTROL_REQUEST = "ctl.req."         # ctl.req.<verb>
CONTROL_REPLY = "ctl.reply."         # ctl.reply.<client>
DRAINER_LOG = "log.drainer"
FLIGHT_BUDGET = "flight.budget"
TOPICS = (HEARTBEAT + "<service>", WRITER_METRICS, DRAINER_METRICS + "<k>", TARGET_STARTED,
          TARGET_ENDED, TARGET_DRAINED, MODE_CHANGE, CONTROL_REQUEST + "<verb>",
          CONTROL_REPLY + "<client>", DRAINER_LOG, FLIGHT_BUDGET)


# A restarted broker binds within ~0.1 s of its exit; reconnecting to a
# missing ipc socket costs one failed connect(), so peers retry often.
RECONNECT_IVL_MS = 10


class Bus:
    def __init__(self, run_dir, service: str, ctx: zmq.Context | None = None):
        self.service = service
        self.ctx = ctx or zmq.Context.instance()
        self.run_dir = run_dir
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 10000)
        self.pub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self.pub.connect(run_dir.broker_pub)
        self._last_heartbeat = 0.0

    def publish(self, topic: str, payload: dict) -> None:
        try:
            self.pub.send_multipart([topic.encode(), orjson.dumps(payload)], zmq.NOBLOCK)
        except zmq.Again:
            pass  # the bus is best-effort; see the module docstring

    def heartbeat(self, **extra) -> bool:
        """Publish ``hb.<service>`` at most once per second; True if sent."""
        now = time.monotonic()
        if now - self._last_heartbeat < 1.0:
            return False
        self._last_heartbeat = now
        self.publish(f"{HEARTBEAT}{self.service}", {"service": self.service, "pid": os.getpid(),
                                            "ts": time.monotonic_ns(), **extra})
        return True

    def subscriber(self, *prefixes: str) -> zmq.Socket:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        for prefix in prefixes or ("",):
            sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        sub.connect(self.run_dir.broker_sub)
        return sub

    def close(self) -> None:
        self.pub.close(0)


def receive(sub: zmq.Socket, timeout_ms: int) -> tuple[str, dict] | None:
    if not sub.poll(timeout_ms):
        return None
    topic, payload = sub.recv_multipart()
    return topic.decode(), orjson.loads(payload)
