"""``lanetrace daemon`` and ``lanetrace ctl``: one set of services under
supervisord tracing many targets on the host.

    lanetrace daemon start [-o DIR] [--drainers N] [--query-bind HOST:PORT]
    lanetrace daemon status | stop
    lanetrace ctl attach PID [PID...] | ctl attach [--follow-children] -- PROGRAM ARGS...
    lanetrace ctl detach PID
    lanetrace ctl status [--json]

The daemon's files live in its run directory (``--run-dir``, default
``$LANETRACE_DAEMON_DIR`` or ``/tmp/lanetrace-daemon``): supervisord's
config, socket, pid and log files, ``daemon.json`` (session, trace root,
options), the broker and writer sockets, ``targets/`` and ``logs/``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson

from lanetrace.cli import CliError
from lanetrace.cli.argtypes import int_range, positive_float
from lanetrace.cli.capture import add_pipeline_options, check_pid, resolve_program, ring_policy_spec
from lanetrace.core.rundir import RunDir, new_session_id
from lanetrace.core.selection import Selection, SelectionError
from lanetrace.supervise.daemonconf import (DEFAULT_DAEMON_DIR, default_daemon_dir,
                                            load_daemon_config, write_daemon_config)
from lanetrace.supervise.supervisorconf import render_daemon_config

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 180.0


def register(sub) -> None:
    daemon = sub.add_parser("daemon", help="start/stop the lanetrace daemon (supervisord)",
                            description="Run the lanetrace services (broker, writer, drainers, "
                            "injector, watchdog, query server) under supervisord.")
    dsub = daemon.add_subparsers(dest="daemon_command", metavar="ACTION")
    start = dsub.add_parser("start", help="start the daemon")
    _run_dir_option(start)
    start.add_argument("-o", "--output", default="traces", metavar="DIR",
                       help="trace root directory (default: ./traces)")
    start.add_argument("--query-bind", default="127.0.0.1:9090", metavar="HOST:PORT",
                       help="query server address (default 127.0.0.1:9090)")
    start.add_argument("--query-replicas", type=int_range(1, 64), default=1, metavar="N",
                       help="query server processes sharing the port (default 1)")
    start.add_argument("--agent-stale-ms", type=int_range(100, 600000), default=5000, metavar="MS",
                       help="a target's threads leave a shard whose drainer heartbeat is older "
                            "than this (the watchdog acts at once on a drainer exit; default 5000)")
    add_pipeline_options(start)
    start.set_defaults(func=cmd_start)
    stop = dsub.add_parser("stop", help="stop the daemon (targets are detached or ended, "
                           "traces finalized)")
    _run_dir_option(stop)
    stop.set_defaults(func=cmd_stop)
    status = dsub.add_parser("status", help="the daemon's processes")
    _run_dir_option(status)
    status.set_defaults(func=cmd_daemon_status)
    daemon.set_defaults(func=lambda a: _usage(daemon))

    ctl = sub.add_parser("ctl", help="control the running daemon: attach, detach, status")
    csub = ctl.add_subparsers(dest="ctl_command", metavar="ACTION")
    attach = csub.add_parser("attach", help="trace a running process, or spawn a program",
                             description="Add targets to the running daemon: PIDs, or a program "
                             "after -- (spawned by the daemon).")
    _run_dir_option(attach)
    attach.add_argument("--follow-children", action="store_true",
                        help="also trace the processes the target forks and execs")
    attach.add_argument("-i", "--include", action="append", default=[], metavar="[MODULE!]FUNCTION")
    attach.add_argument("-x", "--exclude", action="append", default=[], metavar="[MODULE!]FUNCTION")
    attach.add_argument("-I", "--include-module", action="append", default=[], metavar="MODULE")
    attach.add_argument("-X", "--exclude-module", action="append", default=[], metavar="MODULE")
    attach.add_argument("--no-drop", action="store_true", default=None,
                        help="these targets' threads wait for a free ring instead of dropping "
                             "(default: as the daemon was started)")
    attach.add_argument("--block-timeout-ms", type=positive_float, default=None, metavar="MS",
                        help="with --no-drop, the longest a thread waits for a ring "
                             "(default: as the daemon was started)")
    attach.add_argument("--timeout", type=float, default=90.0, metavar="SECONDS")
    attach.add_argument("--json", action="store_true")
    attach.add_argument("targets", nargs=argparse.REMAINDER, metavar="PID... | -- PROGRAM ARGS")
    attach.set_defaults(func=cmd_attach)
    detach = csub.add_parser("detach", help="stop tracing a target (attached: left running; "
                             "spawned by the daemon: ended) and finalize its trace")
    _run_dir_option(detach)
    detach.add_argument("pids", nargs="+", metavar="PID")
    detach.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS")
    detach.add_argument("--json", action="store_true")
    detach.set_defaults(func=cmd_detach)
    status = csub.add_parser("status", help="targets, modes, rates, drops, processes")
    _run_dir_option(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS")
    status.set_defaults(func=cmd_status)
    ctl.set_defaults(func=lambda a: _usage(ctl))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run_dir_option(p) -> None:
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help=f"the daemon's run directory (default $LANETRACE_DAEMON_DIR or "
                        f"{DEFAULT_DAEMON_DIR})")


def _run_dir(args) -> RunDir:
    return RunDir(os.path.abspath(args.run_dir or default_daemon_dir()))


# ---- supervisord access ---------------------------------------------------------

def _rpc(run_dir: RunDir):
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport
    transport = SupervisorTransport(None, None, f"unix://{run_dir.file('supervisord.sock')}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _rpc_errors() -> tuple[type[BaseException], ...]:
    import xmlrpc.client
    return (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError)


def daemon_running(run_dir: RunDir) -> bool:
    if not os.path.exists(run_dir.file("supervisord.sock")):
        return False
    try:
        return _rpc(run_dir).supervisor.getState()["statename"] == "RUNNING"
    except _rpc_errors():
        return False


def procfile_daemon(run_dir: RunDir) -> bool:
    """Services started without supervisord (Procfile, honcho/foreman): the
    launcher wrote daemon.json and the broker bound its socket."""
    if not (os.path.exists(run_dir.file("daemon.json"))
            and os.path.exists(run_dir.file("broker-sub.sock"))):
        return False
    import socket
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(run_dir.file("broker-sub.sock"))
        return True
    except OSError:
        return False
    finally:
        s.close()


def require_daemon(run_dir: RunDir, procfile_ok: bool = True) -> None:
    if not daemon_running(run_dir) and not (procfile_ok and procfile_daemon(run_dir)):
        raise CliError(f"the lanetrace daemon is not running (no supervisord answers at "
                       f"{run_dir.file('supervisord.sock')}); start it with: lanetrace daemon start"
                       + (f" --run-dir {run_dir.path}" if run_dir.path != _default_path() else ""),
                       status=1)


def _default_path() -> str:
    return os.path.abspath(default_daemon_dir())


def process_states(run_dir: RunDir) -> list[dict]:
    try:
        infos = _rpc(run_dir).supervisor.getAllProcessInfo()
    except _rpc_errors():
        return []
    return [{"name": f"{i['group']}:{i['name']}", "state": i["statename"], "pid": i["pid"],
             "description": i["description"]} for i in infos]


# ---- daemon start / stop ------------------------------------------------------------

def cmd_start(args) -> int:
    run_dir = _run_dir(args)
    if daemon_running(run_dir):
        raise CliError(f"the daemon is already running (run directory {run_dir.path})")
    host, sep, port = args.query_bind.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(f"--query-bind: expected HOST:PORT, got {args.query_bind!r}")
    trace_root = os.path.abspath(args.output)
    try:
        os.makedirs(trace_root, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot write traces to {trace_root}: {exc.strerror}") from None
    if not os.access(trace_root, os.W_OK):
        raise CliError(f"cannot write traces to {trace_root}: not writable")
    # A previous daemon killed hard leaves files behind; nothing of it runs.
    for stale in ("supervisord.sock", "daemon.json", "supervisord.pid"):
        try:
            os.unlink(run_dir.file(stale))
        except FileNotFoundError:
            pass
    shutil.rmtree(run_dir.targets_dir, ignore_errors=True)
    run_dir.create()
    session_id = new_session_id()
    cfg = {"sessionId": session_id, "traceRoot": trace_root, "queryBind": args.query_bind,
           "drainers": args.drainers, "queryReplicas": args.query_replicas, "slots": args.slots,
           "ringBytes": args.ring_kb * 1024, "ringsPerLane": args.rings_per_lane,
           **ring_policy_spec(args),
           "inlineSymbols": args.inline_symbols, "agentStaleMs": args.agent_stale_ms,
           "startedAt": time.time()}
    os.makedirs(os.path.join(trace_root, session_id), exist_ok=True)
    write_daemon_config(run_dir, cfg)
    _gc_marker(session_id, run_dir)
    conf = run_dir.file("supervisord.conf")
    with open(conf, "w") as f:
        f.write(render_daemon_config(run_dir.path, sys.executable, args.drainers,
                                        args.query_replicas))
    proc = subprocess.run([sys.executable, "-m", "lanetrace.supervise.supervisord", "-c", conf],
                          capture_output=True, text=True, cwd=run_dir.path)
    if proc.returncode != 0:
        raise CliError(f"supervisord did not start: {(proc.stderr or proc.stdout).strip()}",
                       status=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not daemon_running(run_dir):
        if time.monotonic() > deadline:
            raise CliError(f"supervisord did not come up within {START_TIMEOUT_S:.0f}s; see "
                           f"{run_dir.file('supervisord.log')}", status=1)
        time.sleep(0.05)
    from lanetrace.core.control import ControlClient, ControlError
    client = ControlClient(run_dir)
    try:
        client.request("ping", {}, timeout_s=max(1.0, deadline - time.monotonic()))
    except ControlError as exc:
        raise CliError(f"the daemon started but its injector does not answer: {exc}",
                       status=1) from None
    finally:
        client.close()
    print(f"lanetrace daemon started: session {session_id}, traces in "
          f"{os.path.join(trace_root, session_id)}, run directory {run_dir.path}, "
          f"query server http://{args.query_bind}/rpc")
    print(f"  control:  lanetrace ctl attach PID | detach PID | status"
          + (f"   (with --run-dir {run_dir.path})" if run_dir.path != _default_path() else ""))
    print(f"  services: supervisorctl -c {conf} status")
    return 0


def _gc_marker_dir(session_id: str) -> str:
    return f"/tmp/lanetrace-run-{session_id}"


def _gc_marker(session_id: str, run_dir: RunDir) -> None:
    """``lanetrace gc`` takes a session for alive while
    /tmp/lanetrace-run-<session>/supervisord.pid names a live process; the
    daemon's run directory is elsewhere, so point that path at its pidfile
    (once the daemon is gone the link dangles and gc removes the marker)."""
    marker = _gc_marker_dir(session_id)
    if os.path.realpath(marker) == os.path.realpath(run_dir.path):
        return
    os.makedirs(marker, mode=0o700, exist_ok=True)
    link = os.path.join(marker, "supervisord.pid")
    if not os.path.lexists(link):
        os.symlink(run_dir.file("supervisord.pid"), link)


def _supervisord_pid(run_dir: RunDir) -> int | None:
    try:
        with open(run_dir.file("supervisord.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cmd_stop(args) -> int:
    import xmlrpc.client

    from lanetrace.core.shm import remove_stale_segments
    run_dir = _run_dir(args)
    require_daemon(run_dir, procfile_ok=False)
    cfg = load_daemon_config(run_dir, create=False)
    pid = _supervisord_pid(run_dir)
    # The injector first, alone: it ends or detaches its targets and waits
    # until the drainers and the writer have everything (supervisord's own
    # shutdown would stop all of them at once).
    try:
        _rpc(run_dir).supervisor.stopProcess("lanetrace:injector", True)
    except xmlrpc.client.Fault:
        pass  # not running
    except OSError as exc:
        raise CliError(f"cannot reach supervisord: {exc}", status=1) from None
    try:
        _rpc(run_dir).supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault) as exc:
        if pid:
            os.kill(pid, signal.SIGTERM)
        else:
            raise CliError(f"cannot stop supervisord: {exc}", status=1) from None
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid and _alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"supervisord (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f}s",
                           status=1)
        time.sleep(0.1)
    session = os.path.join(cfg["traceRoot"], cfg["sessionId"])
    if os.path.isdir(run_dir.logs_dir):
        shutil.copytree(run_dir.logs_dir, os.path.join(session, "logs"), dirs_exist_ok=True)
    remove_stale_segments(cfg["sessionId"])
    shutil.rmtree(run_dir.path, ignore_errors=True)
    shutil.rmtree(_gc_marker_dir(cfg["sessionId"]), ignore_errors=True)
    print(f"lanetrace daemon stopped: traces in {session}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmd_daemon_status(args) -> int:
    run_dir = _run_dir(args)
    require_daemon(run_dir, procfile_ok=False)
    for p in process_states(run_dir):
        print(f"{p['name']:<28} {p['state']:<9} {p['description']}")
    return 0


# ---- ctl ----------------------------------------------------------------------

def _client(run_dir: RunDir):
    from lanetrace.core.control import ControlClient
    require_daemon(run_dir)
    return ControlClient(run_dir)


def _request(run_dir: RunDir, verb: str, body: dict, timeout: float) -> dict:
    from lanetrace.core.control import ControlError
    client = _client(run_dir)
    try:
        return client.request(verb, body, timeout_s=timeout)
    except ControlError as exc:
        raise CliError(str(exc), status=1) from None
    finally:
        client.close()


def cmd_attach(args) -> int:
    run_dir = _run_dir(args)
    sel = Selection(args.include, args.exclude, args.include_module, args.exclude_module)
    try:
        selection = sel.validate().to_agent()
    except SelectionError as exc:
        raise CliError(str(exc)) from None
    has_selection = bool(args.include or args.exclude or args.include_module or args.exclude_module)
    targets = list(args.targets)
    requests = []
    if targets and targets[0] == "--":
        argv = resolve_program(targets)
        requests.append({"spawn": {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}})
    elif not targets:
        raise CliError("nothing to attach: lanetrace ctl attach PID... or -- PROGRAM [ARGS...]")
    else:
        seen = set()
        for text in targets:
            pid = check_pid(text)
            if pid in seen:
                raise CliError(f"pid {pid} given twice")
            seen.add(pid)
            requests.append({"pid": pid})
    results = []
    for body in requests:
        body["followChildren"] = args.follow_children
        if has_selection:
            body["selection"] = selection
        if args.no_drop:
            body["noDrop"] = True
        if args.block_timeout_ms is not None:
            body["blockTimeoutMs"] = args.block_timeout_ms
        results.append(_request(run_dir, "attach", body, args.timeout))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        for r in results:
            print(f"tracing pid {r['pid']}: {r['functions']} functions hooked, trace {r['traceDir']}")
    return 0


def cmd_detach(args) -> int:
    run_dir = _run_dir(args)
    results = []
    for text in args.pids:
        try:
            pid = int(text)
        except ValueError:
            raise CliError(f"not a process id: {text!r}") from None
        results.append(_request(run_dir, "detach", {"pid": pid}, args.timeout))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        for r in results:
            note = f" ({r['error']})" if r.get("error") else ""
            print(f"pid {r['pid']}: trace finalized in {r['traceDir']}{note}")
    return 0


def cmd_status(args) -> int:
    from lanetrace.core.control import ControlClient, ControlError
    run_dir = _run_dir(args)
    require_daemon(run_dir)
    procs = process_states(run_dir)
    client = ControlClient(run_dir)
    error = ""
    try:
        status = client.request("status", {}, timeout_s=args.timeout)
    except ControlError as exc:
        status, error = {}, str(exc)
    finally:
        client.close()
    watchdog = {}
    try:
        with open(run_dir.file("watchdog.json"), "rb") as f:
            watchdog = orjson.loads(f.read())
    except (OSError, ValueError):
        pass
    doc = {"runDir": run_dir.path, "processes": procs, "error": error, "watchdog": watchdog,
           **status}
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 1 if error else 0
    print(f"lanetrace daemon: session {status.get('sessionId', '?')}, run directory {run_dir.path}")
    print("processes:")
    for p in procs:
        print(f"  {p['name']:<26} {p['state']:<9} {p['description']}")
    if error:
        print(f"injector: {error}")
        return 1
    rates = status.get("rates", {})
    print(f"rates: drainers {rates.get('drainerRecordsPerSec', 0):.0f} records/s, "
          f"writer {rates.get('writerEventsPerSec', 0):.0f} events/s")
    down = sorted((watchdog.get("down") or {}).keys())
    print(f"watchdog: shards in fallback: {', '.join(down) or 'none'}; "
          f"events {watchdog.get('events', {})}")
    targets = status.get("targets", [])
    print(f"targets: {len(targets)}")
    for t in targets:
        drops = ", ".join(f"{k}={v}" for k, v in sorted((t.get("drops") or {}).items()) if v) or "none"
        line = f"  pid {t['pid']} [{t.get('state')}] {' '.join(t.get('argv') or [])[:60]}"
        print(line)
        if t.get("state") == "tracing":
            fb = [k for k, on in enumerate(t.get("fallback") or []) if on]
            print(f"    mode {t.get('mode')}, fallback shards {fb or 'none'}, "
                  f"drained {t.get('recordsDrained', 0)} records "
                  f"({t.get('recordsPerSec', 0):.0f}/s, lag {t.get('drainLagMs', 0):.0f} ms), "
                  f"drops: {drops}")
            c = t.get("control") or {}
            print(f"    mode transitions {c.get('mode_transitions', 0)}, "
                  f"fallback events {c.get('fallback_events', 0)}, threads {t.get('threads', 0)}")
        print(f"    trace {t.get('traceDir')}")
    return 0
