"""The injector's side of the flight recorder (docs/internals.md, "Flight
recorder"): size the detail lanes, arm the agent's symbol triggers, write
time and crash marks, forward every mark to the writer as a window, and
record a crash as a SignalDelivery event before the process dies.

The injector calls in at a few points (segment creation, after planning,
its main-loop tick, the lifecycle crash report); everything else lives here.
"""
from __future__ import annotations

import signal as _signal
import time

from lanetrace.core import flightrec
from lanetrace.core.flightrec import Trigger, TriggerError

DETAIL_RING_BYTES = 256 * 1024
DETAIL_RINGS_PER_LANE = 8


class FlightControl:
    def __init__(self, spec: dict):
        fr = spec.get("flight") or {}
        self.triggers = [Trigger.from_spec(t) for t in fr.get("triggers", [])]
        self.full = bool(fr.get("full"))
        self.enabled = self.full or bool(self.triggers)
        self.pre_ns = flightrec.seconds_to_ns(fr.get("preRollSec", flightrec.DEFAULT_PRE_ROLL_S))
        self.post_ns = flightrec.seconds_to_ns(fr.get("postRollSec", flightrec.DEFAULT_POST_ROLL_S))
        self.stack_bytes = int(fr.get("stackBytes", flightrec.DEFAULT_STACK_BYTES))
        self.buffer_bytes = int(fr.get("bufferMb", flightrec.DEFAULT_BUFFER_MB)) << 20
        self.crash = any(t.kind == "crash" for t in self.triggers)
        self.times = [t for t in self.triggers if t.kind == "time"]
        # per target pid: marks already forwarded, time triggers already fired,
        # function id -> trigger label
        self._forwarded: dict[int, set] = {}
        self._fired: dict[int, set] = {}
        self._labels: dict[int, dict[int, str]] = {}

    # ---- setup --------------------------------------------------------------------
    def segment_kwargs(self) -> dict:
        if not self.enabled:
            return {}
        return {"detail_ring_bytes": DETAIL_RING_BYTES,
                "detail_rings_per_lane": DETAIL_RINGS_PER_LANE}

    def configure(self, segment) -> None:
        if self.enabled:
            segment.set_detail(True, self.stack_bytes)

    def registration(self, start_ns: int) -> dict:
        """What the drainers need (they read it from targets/<pid>.json).
        Time marks are known in advance: the drainers open those windows on
        their own clock, so a busy injector writing the mark late cannot cost
        the window its pre-roll."""
        return {"enabled": self.enabled, "full": self.full, "preRollNs": self.pre_ns,
                "postRollNs": self.post_ns, "bufferBytes": self.buffer_bytes,
                "timeMarksNs": [start_ns + flightrec.seconds_to_ns(t.seconds) for t in self.times]}

    def describe(self) -> dict:
        """The configuration as the manifest reports it."""
        if not self.enabled:
            return {}
        return {"triggers": [t.text for t in self.triggers], "full": self.full,
                "preRollNs": self.pre_ns, "postRollNs": self.post_ns,
                "stackBytes": self.stack_bytes, "bufferBytes": self.buffer_bytes}

    def arm(self, pid: int, agent, functions: list[dict]) -> None:
        """Flag the functions symbol triggers name; raises TriggerError if a
        symbol trigger names no hooked function."""
        labels = flightrec.resolve_symbol_triggers(self.triggers, functions)
        self._labels[pid] = {int(fn["id"]): fn["name"] for fn in functions}
        self._forwarded[pid] = set()
        self._fired[pid] = set()
        if labels:
            agent.set_triggers({"functionIds": sorted(labels)})

    # ---- while running --------------------------------------------------------
    def tick(self, target, writer) -> None:
        """Time marks that are due, and every new mark forwarded as a window."""
        if not self.enabled or target.segment is None or self.full:
            return
        now = time.monotonic_ns()
        fired = self._fired.setdefault(target.pid, set())
        for trig in self.times:
            due = target.start_ns + flightrec.seconds_to_ns(trig.seconds)
            if trig.text not in fired and now >= due and not target.ended.is_set():
                target.segment.add_mark(due, "time")
                fired.add(trig.text)
        self.forward_windows(target, writer)

    def forward_windows(self, target, writer) -> None:
        seen = self._forwarded.setdefault(target.pid, set())
        names = self._labels.get(target.pid, {})
        times = iter(t.text for t in self.times)
        for mark in target.segment.marks():
            key = (mark["tsNs"], mark["kind"], mark.get("functionId", 0), mark.get("tid", 0))
            if key in seen:
                continue
            if mark["kind"] == "time":
                label = self._time_label(target, mark) or next(times, "time")
            else:
                label = flightrec.mark_label(mark, names)
            w = flightrec.window_of(mark, self.pre_ns, self.post_ns, label)
            writer.request("window", {"pid": target.pid, "startNs": w["startNs"],
                                      "endNs": w["endNs"], "trigger": label})
            seen.add(key)

    def _time_label(self, target, mark) -> str:
        for trig in self.times:
            if target.start_ns + flightrec.seconds_to_ns(trig.seconds) == mark["tsNs"]:
                return trig.text
        return ""

    # ---- crash ----------------------------------------------------------------
    def on_crash(self, target, report: dict, writer) -> None:
        """The target is about to die of a fatal signal (it waits for us):
        record the signal, and with a crash trigger mark the moment."""
        ts = time.monotonic_ns()
        number = int(report.get("signal") or 0)
        tid = int(report.get("threadId") or 0)
        regs = {}
        for name, value in (report.get("registers") or {}).items():
            try:
                regs[name] = int(value, 16) & ((1 << 64) - 1)
            except (TypeError, ValueError):
                continue
        try:
            name = _signal.Signals(number).name if number else report.get("kind", "")
        except ValueError:
            name = f"SIG{number}"
        writer.request("signal", {"pid": target.pid, "tid": tid, "tsNs": ts, "number": number,
                                  "name": name, "registers": regs})
        if self.crash and target.segment is not None and self.enabled:
            target.segment.add_mark(ts, "crash", 0, tid)


__all__ = ["FlightControl", "TriggerError"]
