"""Locating a trace directory and reading what exporters need from its
manifest (process identity, thread names, persistence windows)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from lanetrace.core import atf


class TraceNotFound(Exception):
    """A trace id that names no trace directory."""


def resolve_trace(trace_id: str, trace_root: str = "traces") -> str:
    """Trace directory of ``trace_id``: a directory path as given, or a path
    relative to ``trace_root``. A trace is a directory holding both
    ``trace.json`` and ``events.bin``."""
    if not trace_id:
        raise TraceNotFound("empty trace id")
    candidates = [trace_id]
    if not os.path.isabs(trace_id):
        candidates.append(os.path.join(trace_root, trace_id))
    for path in candidates:
        if os.path.isdir(path):
            missing = [n for n in (atf.MANIFEST_FILE, atf.EVENTS_FILE)
                       if not os.path.isfile(os.path.join(path, n))]
            if missing:
                raise TraceNotFound(f"{path} is not a trace directory (no {', '.join(missing)})")
            return path
    tried = " or ".join(repr(c) for c in candidates)
    raise TraceNotFound(f"trace {trace_id!r} not found (looked for {tried})")


@dataclass
class Window:
    start_ns: int
    end_ns: int
    trigger: str


@dataclass
class TraceMeta:
    pid: int = 0
    executable_path: str = ""
    args: list[str] = field(default_factory=list)
    thread_names: dict[int, str] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    clock: str = "monotonic"  # the clock of every timestamp in the trace
    manifest: dict = field(default_factory=dict)

    @property
    def process_name(self) -> str:
        return os.path.basename(self.executable_path) or f"pid {self.pid}"

    @property
    def cmdline(self) -> list[str]:
        """The command line; writers differ on whether ``args`` holds argv[0]."""
        if not self.executable_path:
            return list(self.args)
        if self.args and os.path.basename(self.args[0]) == self.process_name:
            return list(self.args)
        return [self.executable_path, *self.args]


def _int(value, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise atf.TraceFormatError(f"{source}: {what} is not an integer: {value!r}")
    return value


def read_meta(trace_dir: str) -> TraceMeta:
    """Manifest facts; the event stream's TraceStart may refine pid and
    executable later. Malformed windows are an error rather than silently
    dropped, since a missing marker would misrepresent the trace."""
    manifest = atf.read_manifest(trace_dir)
    source = os.path.join(trace_dir, atf.MANIFEST_FILE)
    meta = TraceMeta(manifest=manifest)
    pid = manifest.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool):
        meta.pid = pid
    else:
        m = re.fullmatch(r"pid_(\d+)", os.path.basename(os.path.normpath(trace_dir)))
        if m:
            meta.pid = int(m.group(1))
    exe = manifest.get("executablePath") or manifest.get("executable") or ""
    meta.executable_path = exe if isinstance(exe, str) else ""
    args = manifest.get("args")
    if isinstance(args, list):
        meta.args = [str(a) for a in args]
    meta.thread_names = _thread_names(manifest.get("threads"))
    clock = manifest.get("clock")
    if isinstance(clock, str) and clock:
        meta.clock = clock.lower()
    windows = manifest.get("windows") or []
    if not isinstance(windows, list):
        raise atf.TraceFormatError(f"{source}: windows is not a list")
    for i, w in enumerate(windows):
        if not isinstance(w, dict):
            raise atf.TraceFormatError(f"{source}: windows[{i}] is not an object")
        start = _int(w.get("startNs"), f"windows[{i}].startNs", source)
        end = _int(w.get("endNs"), f"windows[{i}].endNs", source)
        if end < start:
            raise atf.TraceFormatError(f"{source}: windows[{i}] ends before it starts")
        meta.windows.append(Window(start, end, str(w.get("trigger") or "")))
    meta.windows.sort(key=lambda w: (w.start_ns, w.end_ns))
    return meta


def _thread_names(threads) -> dict[int, str]:
    """Accept ``[{threadId|tid, name}]`` or ``{"<tid>": name}``; writers may
    not record names at all."""
    names: dict[int, str] = {}
    if isinstance(threads, list):
        for t in threads:
            if isinstance(t, dict):
                tid = t.get("threadId", t.get("tid"))
                name = t.get("name")
                if isinstance(tid, int) and isinstance(name, str) and name:
                    names[tid] = name
    elif isinstance(threads, dict):
        for tid, name in threads.items():
            if isinstance(name, str) and name and str(tid).isdigit():
                names[int(tid)] = name
    return names
