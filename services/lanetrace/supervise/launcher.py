"""The daemon's launcher (``python -m lanetrace.supervise``):

    exec SERVICE --run-dir D [...]   reads (or creates) D/daemon.json and execs
                                     the service with the daemon's session,
                                     trace root and options
    render [--procfile]              prints the shipped config/supervisord.conf
                                     (or the Procfile)
"""
from __future__ import annotations

import argparse
import os
import sys

from lanetrace.core.rundir import RunDir
from lanetrace.supervise.daemonconf import (DEFAULT_DAEMON_DIR, DEFAULT_QUERY_BIND,
                                            default_daemon_dir, load_daemon_config, session_dir)
from lanetrace.supervise.services import SERVICE_NAMES, service_argv
from lanetrace.supervise.supervisorconf import (SHIPPED_PYTHON, render_daemon_config,
                                                render_procfile)


class LaunchError(Exception):
    """The service cannot be started as asked; the message is for the user."""


def cmd_exec(args) -> int:
    run_dir = RunDir(args.run_dir).create()
    cfg = load_daemon_config(run_dir)
    os.makedirs(session_dir(cfg), exist_ok=True)
    if args.service == "drainer" and (args.shard is None or args.shards is None):
        raise LaunchError("exec drainer needs --shard and --shards")
    opts = dict(cfg, shard=args.shard, drainers=args.shards,
                queryBind=cfg.get("queryBind", DEFAULT_QUERY_BIND), standalone=args.standalone)
    argv = service_argv(args.service, run_dir.path, opts)
    env = dict(os.environ, LANETRACE_SESSION=cfg["sessionId"], PYTHONUNBUFFERED="1")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
    return 127  # not reached


def cmd_render(args) -> int:
    print(render_procfile(DEFAULT_DAEMON_DIR, ".venv/bin/python", 2) if args.procfile
          else render_daemon_config(DEFAULT_DAEMON_DIR, SHIPPED_PYTHON, 2, 1), end="")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanetrace.supervise")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec", help="start one daemon service from daemon.json")
    ex.add_argument("service", choices=SERVICE_NAMES)
    ex.add_argument("--run-dir", default=default_daemon_dir())
    ex.add_argument("--shard", type=int)
    ex.add_argument("--shards", type=int)
    ex.add_argument("--standalone", action="store_true",
                    help="watchdog without supervisord events (Procfile)")
    ex.set_defaults(func=cmd_exec)
    ren = sub.add_parser("render", help="print the shipped supervisord.conf (or --procfile)")
    ren.add_argument("--procfile", action="store_true")
    ren.set_defaults(func=cmd_render)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LaunchError as exc:
        print(f"lanetrace.supervise: error: {exc}", file=sys.stderr)
        return 2
