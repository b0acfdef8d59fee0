"""The one list of supervised services. The one-shot session's and the
daemon's supervisord configurations and the Procfile are all rendered from
it (supervisorconf.py), and the launcher starts each service from it."""
from __future__ import annotations

import sys
from dataclasses import dataclass

GROUP = "lanetrace"


@dataclass(frozen=True)
class Service:
    name: str                    # supervisord program (event listener if listener)
    module: str                  # what ``python -m`` runs
    priority: int                # supervisord start order; stopped in reverse
    job: str                     # one line, written above its stanza
    stopwaitsecs: int | None = None
    daemon_stopwaitsecs: int | None = None  # when the daemon's differs
    replicas: str | None = None  # option that says how many run (numprocs)
    listener: bool = False       # a supervisord event listener
    daemon_only: bool = False


SERVICES = (
    Service("broker", "lanetrace.supervise.broker", 10,
            "ZeroMQ XSUB/XPUB proxy: heartbeats, metrics, control commands and events."),
    Service("writer", "lanetrace.writer", 20,
            "ATF V4 persistence; acks batches once durable (restart: clients resend).",
            stopwaitsecs=60),
    Service("drainer", "lanetrace.drainer", 30,
            "One drainer per registry shard; --shards must equal numprocs.",
            stopwaitsecs=60, replicas="drainers"),
    Service("injector", "lanetrace.injector", 40,
            "Spawns or attaches the targets, loads the agent, follows them to their end.",
            stopwaitsecs=60, daemon_stopwaitsecs=150),
    Service("query", "lanetrace.query", 50,
            "JSON-RPC query server over the daemon's trace root (replicas share the port).",
            replicas="queryReplicas", daemon_only=True),
    Service("watchdog", "lanetrace.supervise.watchdog", 5,
            "Event listener: drainer exit -> shard fallback at once; fresh heartbeat -> back.",
            listener=True),
)
SERVICE_NAMES = tuple(s.name for s in SERVICES)
DAEMON_INJECTOR_MODULE = "lanetrace.injector.daemon"


def service(name: str) -> Service:
    for s in SERVICES:
        if s.name == name:
            return s
    raise KeyError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")


def service_argv(name: str, run_dir: str, opts: dict, python: str = sys.executable) -> list[str]:
    """The command line that runs one service. ``opts`` holds the session's
    settings (daemon.json's keys): sessionId, traceRoot, inlineSymbols,
    shard, drainers, spec (one-shot injector), queryBind, standalone."""
    svc = service(name)
    argv = [python, "-m", svc.module]
    if name == "broker":
        return argv + ["--run-dir", run_dir]
    if name == "writer":
        argv += ["--run-dir", run_dir, "--trace-root", opts["traceRoot"], "--session",
                 opts["sessionId"]]
        return argv + (["--inline-symbols"] if opts.get("inlineSymbols") else [])
    if name == "drainer":
        return argv + ["--run-dir", run_dir, "--shard", str(opts["shard"]), "--shards",
                       str(opts["drainers"])]
    if name == "injector":
        if opts.get("spec"):
            return argv + ["--run-dir", run_dir, "--spec", opts["spec"]]
        return [python, "-m", DAEMON_INJECTOR_MODULE, "--run-dir", run_dir, "--shards",
                str(opts.get("drainers") or 2)]
    if name == "watchdog":
        argv += ["--run-dir", run_dir, "--group", GROUP]
        return argv + (["--standalone"] if opts.get("standalone") else [])
    if name == "query":
        return argv + ["--trace-root", opts["traceRoot"], "--bind", opts["queryBind"],
                       "--reuseport", "--access-log", "off"]
    raise AssertionError(name)
