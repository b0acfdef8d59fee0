"""Renders the service table (services.py) into the one-shot session's
supervisord configuration, the daemon's (``config/supervisord.conf`` is its
output for the defaults; a test keeps them identical) and the Procfile."""
from __future__ import annotations

import sys

from lanetrace.supervise.services import GROUP, SERVICES, Service, service_argv

SHIPPED_PYTHON = "%(here)s/../.venv/bin/python"
LAUNCHER = "lanetrace.supervise"

_HEADER = """[unix_http_server]
file={rd}/supervisord.sock
chmod=0700

[supervisord]
{supervisord}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{rd}/supervisord.sock
"""


def _stanza(svc: Service, command: str, logs: str, count: int, daemon: bool) -> str:
    kind = "eventlistener" if svc.listener else "program"
    opts = [("command", command)]
    if svc.listener:
        opts.append(("events", "PROCESS_STATE,TICK_5"))
    if svc.replicas:
        opts += [("process_name", f"{svc.name}-%(process_num)d"), ("numprocs", str(count))]
    # The one-shot injector owns the session's targets: never restarted.
    owner = svc.name == "injector" and not daemon
    opts += [("priority", str(svc.priority)), ("autorestart", "false" if owner else "true"),
             ("startsecs", "0" if owner else "1"), ("stopsignal", "TERM")]
    wait = (svc.daemon_stopwaitsecs if daemon else None) or svc.stopwaitsecs
    if wait:
        opts.append(("stopwaitsecs", str(wait)))
    log = f"{logs}/{svc.name}" + ("-%(process_num)d" if svc.replicas else "")
    if svc.listener:
        opts += [("buffer_size", "1024"), ("stderr_logfile", f"{log}.log")]
    elif owner:
        # A spawned target gets the caller's own stdin/stdout/stderr from the
        # CLI (lanetrace.core.stdio), not through supervisord: what the injector
        # itself prints goes to its log.
        opts += [("stdout_logfile", f"{logs}/injector-output.log"), ("redirect_stderr", "true")]
    else:
        # injector.log is the injector's own logging; its output goes next to it
        suffix = ".out" if svc.name == "injector" else ".log"
        opts += [("stdout_logfile", log + suffix), ("redirect_stderr", "true")]
    body = "\n".join(f"{k}={v}" for k, v in opts)
    return f"; {svc.job}\n[{kind}:{svc.name}]\n{body}\n"


def _group(services) -> str:
    return f"[group:{GROUP}]\nprograms={','.join(s.name for s in services if not s.listener)}\n"


def render_session_config(run_dir: str, session_id: str, trace_root: str, drainers: int,
                          inline_symbols: bool, spec_path: str | None,
                          python: str = sys.executable) -> str:
    """A one-shot session's supervisord.conf: every service runs its module
    directly; without a spec there is no injector."""
    logs = f"{run_dir}/logs"
    opts = {"sessionId": session_id, "traceRoot": trace_root, "drainers": drainers,
            "inlineSymbols": inline_symbols, "spec": spec_path, "shard": "%(process_num)d"}
    chosen = [s for s in SERVICES if not s.daemon_only and (s.name != "injector" or spec_path)]
    supervisord = (f"nodaemon=true\nsilent=true\nlogfile={run_dir}/supervisord.log\n"
                   f"pidfile={run_dir}/supervisord.pid\nchildlogdir={logs}\nloglevel=info\n"
                   f'environment=PYTHONUNBUFFERED="1",LANETRACE_SESSION="{session_id}"\n')
    parts = [_HEADER.format(rd=run_dir, supervisord=supervisord)]
    parts += [_stanza(s, " ".join(service_argv(s.name, run_dir, opts, python)), logs, drainers,
                      daemon=False) for s in chosen if not s.listener]
    parts.append(_group(chosen))
    parts += [_stanza(s, " ".join(service_argv(s.name, run_dir, opts, python)), logs, drainers,
                      daemon=False) for s in chosen if s.listener]
    return "\n".join(parts)


def launch_command(python: str, run_dir: str, name: str, *extra: str) -> str:
    """The daemon's command for one service: the launcher reads daemon.json."""
    return " ".join([python, "-m", LAUNCHER, "exec", name, "--run-dir", run_dir, *extra])


def _daemon_extra(svc: Service, drainers: int) -> tuple[str, ...]:
    if svc.name == "drainer":
        return ("--shard", "%(process_num)d", "--shards", str(drainers))
    if svc.name == "injector":
        return ("--shards", str(drainers))
    return ()


def render_daemon_config(run_dir: str, python: str, drainers: int = 2,
                         query_replicas: int = 1) -> str:
    """The daemon's supervisord configuration; ``lanetrace daemon start``
    writes it into the run directory with the running interpreter and the
    chosen run directory and sizes."""
    rd = run_dir.rstrip("/")
    logs = f"{rd}/logs"
    counts = {"drainers": drainers, "queryReplicas": query_replicas}
    supervisord = (f"nodaemon=false\nlogfile={rd}/supervisord.log\npidfile={rd}/supervisord.pid\n"
                   f'childlogdir={logs}\nloglevel=info\nenvironment=PYTHONUNBUFFERED="1"\n')
    parts = [f"""; lanetrace daemon: supervisord configuration.
;
; Start:   lanetrace daemon start      (creates {rd}, a new session, then runs
;                                       supervisord -c on a copy of this file)
;   or:    mkdir -p {logs} && supervisord -c config/supervisord.conf
; Control: lanetrace ctl attach PID | detach PID | status
;          supervisorctl -c config/supervisord.conf status|restart {GROUP}:drainer-1|...
; Stop:    lanetrace daemon stop
;
; Every service is started by the launcher (python -m {LAUNCHER} exec
; SERVICE), which reads the daemon's session, trace root and options from
; {rd}/daemon.json (created with defaults if absent).
; Rendered from lanetrace.supervise.services by
; python -m {LAUNCHER} render; edit those, not this.
""", _HEADER.format(rd=rd, supervisord=supervisord)]
    stanzas = {s.name: _stanza(s, launch_command(python, rd, s.name, *_daemon_extra(s, drainers)),
                               logs, counts.get(s.replicas, 1), daemon=True) for s in SERVICES}
    parts += [stanzas[s.name] for s in SERVICES if not s.listener]
    parts.append(_group(SERVICES))
    parts += [stanzas[s.name] for s in SERVICES if s.listener]
    return "\n".join(parts)


def render_procfile(run_dir: str, python: str, drainers: int = 2) -> str:
    """The daemon for honcho/foreman: the same services without supervisord
    (nothing restarts them; the watchdog only watches heartbeats)."""
    lines = ["# lanetrace daemon for honcho/foreman (the same services as config/supervisord.conf,",
             "# without supervisord: nothing restarts them, and the watchdog only watches",
             f"# heartbeats). Control it with LANETRACE_DAEMON_DIR={run_dir} lanetrace ctl ...",
             f"# Rendered from lanetrace.supervise.services by python -m {LAUNCHER} render --procfile."]
    for s in SERVICES:
        if s.name == "drainer":
            lines += [f"drainer{k}: " + launch_command(python, run_dir, "drainer", "--shard", str(k),
                                                       "--shards", str(drainers))
                      for k in range(drainers)]
        elif s.listener:
            lines.append(f"{s.name}: " + launch_command(python, run_dir, s.name, "--standalone"))
        else:
            lines.append(f"{s.name}: " + launch_command(python, run_dir, s.name,
                                                        *_daemon_extra(s, drainers)))
    return "\n".join(lines) + "\n"
