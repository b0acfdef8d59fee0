"""A process the injector traces, and the error that says why one cannot be."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import frida

from lanetrace.core.shm import TargetSegment


class TargetError(Exception):
    """A target could not be traced; the message is for the user."""


@dataclass
class TracedProcess:
    pid: int
    spawned: bool
    argv: list[str]
    segment: TargetSegment | None = None
    session: frida.core.Session | None = None
    agent: frida.core.Script | None = None
    lifecycle: frida.core.Script | None = None
    functions: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    signal: int = 0
    crash: dict | None = None
    detached: bool = False
    end_reason: str = ""
    ended: threading.Event = field(default_factory=threading.Event)
    start_ns: int = 0
    end_ns: int = 0
    error: str = ""
    hooks: dict = field(default_factory=dict)
    sent_signal: int = 0  # the signal we ended a spawned target with
    parent_pid: int | None = None  # --follow-children: who forked or ran it
    control: dict | None = None  # registry-mode counters, read when it is finished

    @property
    def trace_dir_name(self) -> str:
        return f"pid_{self.pid}"
