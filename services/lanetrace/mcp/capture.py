"""Capturing for the agent: the real ``lanetrace run`` / ``lanetrace attach``
commands as a subprocess, exactly as a user would type them, with their
``--json`` session summary read back."""
from __future__ import annotations

import os
import subprocess
import tempfile
import sys

import orjson

# a run without durationSec ends when the program does; past this it is stopped
RUN_TIMEOUT_SEC = 600
MAX_DURATION_SEC = 3600


class CaptureError(Exception):
    pass


def _strings(value, name) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise CaptureError(f"{name}: must be a list of non-empty strings")
    return value


def _duration(value, required=False):
    if value is None:
        if required:
            raise CaptureError("durationSec: required (how long to trace the running process)")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_DURATION_SEC:
        raise CaptureError(f"durationSec: must be a number of seconds in (0, {MAX_DURATION_SEC}]")
    return value


def selection_args(include=None, exclude=None, triggers=None) -> list:
    out = []
    for flag, name, values in (("-i", "include", include), ("-x", "exclude", exclude),
                               ("-t", "triggers", triggers)):
        for v in _strings(values, name):
            out += [flag, v]
    return out


def run_args(trace_root, argv, include=None, exclude=None, triggers=None, durationSec=None) -> list:
    argv = _strings(argv, "argv")
    if not argv:
        raise CaptureError("argv: the program and its arguments, e.g. [\"./myprog\", \"--flag\"]")
    d = _duration(durationSec)
    out = ["run", "-o", trace_root, *selection_args(include, exclude, triggers)]
    if d is not None:
        out += ["--duration", str(d)]
    return out + ["--", *argv]


def attach_args(trace_root, pid, include=None, durationSec=None) -> list:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise CaptureError("pid: must be a positive process id")
    if not os.path.exists(f"/proc/{pid}"):
        raise CaptureError(f"pid: no process {pid}")
    d = _duration(durationSec, required=True)
    return ["attach", "-o", trace_root, *selection_args(include),
            "--duration", str(d), str(pid)]


def capture(args: list, timeout: float) -> dict:
    """Run ``lanetrace ARGS``; its summary (``--json-out``) plus ``status``
    (the command's exit status: the program's, for run), the program's
    ``stdout`` and ``stderr``."""
    with tempfile.TemporaryDirectory(prefix="lanetrace-mcp-") as tmp:
        summary_file = os.path.join(tmp, "summary.json")
        cmd = [sys.executable, "-m", "lanetrace", args[0], "--json-out", summary_file, *args[1:]]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise CaptureError(f"lanetrace {args[0]} did not finish within {timeout:.0f} s; "
                               "give durationSec to bound the capture") from None
        try:
            with open(summary_file, "rb") as f:
                summary = orjson.loads(f.read())
        except (OSError, ValueError):
            summary = None
    stderr = proc.stderr.decode(errors="replace")
    program_out = proc.stdout
    if summary is None:
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        raise CaptureError(f"lanetrace {args[0]} failed (exit status {proc.returncode}) "
                           f"and wrote no trace:\n{tail}")
    summary["status"] = proc.returncode
    summary["stdout"] = program_out.decode(errors="replace")
    summary["stderr"] = stderr
    return summary
