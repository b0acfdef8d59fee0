"""A process the injector traces, and the error that says why one cannot be."""
from __future__ import annotations

import threading
import time
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
    # every planned batch (start, then each dlopen): functions, verdicts,
    # install result, selection skips; target.hooks summarizes them all
    hook_batches: list = field(default_factory=list)
    sent_signal: int = 0  # the signal we ended a spawned target with
    parent_pid: int | None = None  # --follow-children: who forked or ran it
    control: dict | None = None  # registry-mode counters, read when it is finished
    # CLOCK_MONOTONIC ns of each set-up step (attach, scripts, plan, live),
    # system-wide, so the CLI and bench/attach.py can line them up with theirs
    timings: dict = field(default_factory=dict)
    modules: list[dict] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)
    addresses: dict = field(default_factory=dict)  # function id -> entry, role functions too
    roles: dict = field(default_factory=dict)  # function id -> role (C++ throw/catch hooks)
    sweep_ahead: object = None  # sweepahead.SweepAhead started before the attach
    plan_ahead: object = None  # planahead.PlanAhead started before the attach
    # the process' threads just before Frida attached: the program's own
    # (any thread that appears later during the attach may be Frida's)
    program_tids: list[int] = field(default_factory=list)
    # it exec'd another image: the injector's main loop follows it untraced
    # (pending until it has attached to the new image)
    exec_pending: bool = False
    exec_followed: bool = False
    verdicts: dict = field(default_factory=dict)        # function id -> hooksafety.Verdict
    selection_skips: list[dict] = field(default_factory=list)
    prepare_error: Exception | None = None
    trace_started: bool = False  # the writer acked target_start: its trace exists

    def mark(self, step: str) -> None:
        self.timings[step] = time.monotonic_ns()

    @property
    def trace_dir_name(self) -> str:
        return f"pid_{self.pid}"
