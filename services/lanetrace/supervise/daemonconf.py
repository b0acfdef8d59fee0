"""The daemon's settings, ``<run dir>/daemon.json``: its session, trace root
and pipeline options, written by ``lanetrace daemon start`` (or created with
defaults by the first service the launcher starts) and read by every service."""
from __future__ import annotations

import os
import secrets
import time

import orjson

from lanetrace.core.rundir import RunDir, new_session_id

DAEMON_FILE = "daemon.json"
DEFAULT_DAEMON_DIR = "/tmp/lanetrace-daemon"
DEFAULT_TRACE_ROOT = "/var/tmp/lanetrace/traces"
DEFAULT_QUERY_BIND = "127.0.0.1:9090"
DEFAULT_AGENT_STALE_MS = 5000


def default_daemon_dir() -> str:
    return os.environ.get("LANETRACE_DAEMON_DIR") or DEFAULT_DAEMON_DIR


def daemon_defaults() -> dict:
    return {"sessionId": new_session_id(), "traceRoot": os.environ.get("LANETRACE_TRACE_ROOT")
            or DEFAULT_TRACE_ROOT, "queryBind": DEFAULT_QUERY_BIND, "slots": 64,
            "ringBytes": 256 * 1024, "ringsPerLane": 8, "inlineSymbols": False,
            "startedAt": time.time()}


def load_daemon_config(run_dir: RunDir, create: bool = True) -> dict:
    """The daemon's settings; created with defaults (new session) if absent.
    Creation is atomic (link of a complete temp file), so services started at
    the same moment all end up with the same session."""
    path = run_dir.file(DAEMON_FILE)
    if not os.path.exists(path) and create:
        run_dir.create()
        write_daemon_config(run_dir, daemon_defaults(), replace=False)
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def write_daemon_config(run_dir: RunDir, cfg: dict, replace: bool = True) -> None:
    path = run_dir.file(DAEMON_FILE)
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(cfg, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    try:
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def session_dir(cfg: dict) -> str:
    return os.path.join(cfg["traceRoot"], cfg["sessionId"])
