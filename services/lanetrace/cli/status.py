"""The live status of a capture: events/s, drops and elapsed time from the
drainers' and the writer's ``metrics.*`` on the broker, and flight-recorder
warnings. On a terminal it is one line rewritten in place; otherwise a plain
line every few seconds. Always on stderr: stdout belongs to the target."""
from __future__ import annotations

import sys
import time

import orjson
import zmq

from lanetrace.core import bus

PLAIN_INTERVAL_S = 5.0
TTY_INTERVAL_S = 0.5


class StatusLine:
    def __init__(self, broker_sub: str, out=None, tty: bool | None = None,
                 ctx: zmq.Context | None = None):
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.ctx = ctx or zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in (bus.METRICS, bus.FLIGHT_BUDGET):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sub.connect(broker_sub)
        self.started = time.monotonic()
        self.drainers: dict[str, dict] = {}
        self.writer: dict = {}
        # a TTY line at once; a plain line only once there is something to say
        self.last_print = 0.0 if self.tty else self.started
        self.shown = False
        self.warned: set = set()

    def tick(self) -> None:
        """Read what arrived (never blocks) and print when due."""
        while True:
            try:
                topic, payload = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            self._take(topic.decode(errors="replace"), orjson.loads(payload))
        now = time.monotonic()
        if now - self.last_print >= (TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S):
            self.last_print = now
            self._print(self.line())

    def _take(self, topic: str, msg: dict) -> None:
        if topic == bus.WRITER_METRICS:
            self.writer = msg
        elif topic.startswith(bus.DRAINER_METRICS):
            self.drainers[topic[len(bus.METRICS):]] = msg
        elif topic == bus.FLIGHT_BUDGET:
            key = (msg.get("pid"), msg.get("drainer"))
            if key not in self.warned:
                self.warned.add(key)
                self._print(
                    f"lanetrace: warning: pid {msg.get('pid')}: pre-roll of "
                    f"{msg.get('preRollSeconds', 0):g}s needs about "
                    f"{msg.get('needBytes', 0) / 2**20:.0f} MiB at the current rate, but the "
                    f"buffer holds {msg.get('budgetBytes', 0) / 2**20:.0f} MiB "
                    f"(~{msg.get('holdsSeconds', 0):.2f}s): windows will be shortened "
                    f"(raise --detail-buffer-mb)", final=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        events = float(self.writer.get("eventsPerSec", 0.0))
        detail = sum(lanes.get("detail", {}).get("eventsPerSec", 0.0)
                     for lanes in (self.writer.get("byTarget") or {}).values())
        drops: dict[str, int] = {}
        for d in self.drainers.values():
            for t in (d.get("targets") or {}).values():
                for reason, n in (t.get("drops") or {}).items():
                    drops[reason] = max(drops.get(reason, 0), int(n))
        total = sum(drops.values())
        lag = max((t.get("drainLagMs", 0.0) for d in self.drainers.values()
                   for t in (d.get("targets") or {}).values()), default=0.0)
        text = f"lanetrace: {elapsed:6.1f}s  {events:,.0f} events/s"
        if detail:
            text += f" (+{detail:,.0f} detail/s)"
        text += f"  drops {total:,}"
        if total:
            text += " (" + ", ".join(f"{k}={v:,}" for k, v in sorted(drops.items()) if v) + ")"
        text += f"  lag {lag:.0f} ms"
        return text

    def _print(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.shown = not final
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            self.out.write("\r\x1b[2K")
            self.out.flush()
        self.sub.close(0)
