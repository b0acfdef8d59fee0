"""``lanetrace serve``: the JSON-RPC query server, optionally as N replicas
sharing one port (SO_REUSEPORT)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from lanetrace.cli import CliError

DEFAULT_BIND = "127.0.0.1:9090"


def register(subparsers):
    p = subparsers.add_parser(
        "serve", help="serve traces over JSON-RPC 2.0 (POST /rpc)",
        description="Serve the traces under --trace-root over JSON-RPC 2.0 (see docs/api.md).")
    p.add_argument("--trace-root", default="traces", help="directory holding the traces (default: traces)")
    p.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                   help=f"listen address (default {DEFAULT_BIND}; port 0 picks a free port)")
    p.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="run N server processes on the same port (SO_REUSEPORT)")
    p.add_argument("--reuseport", action="store_true",
                   help="bind with SO_REUSEPORT so that separately started servers share the port")
    p.add_argument("--token", default=None,
                   help="bearer token required on /rpc and /metrics (default: $LANETRACE_TOKEN); "
                        "mandatory for a non-loopback bind")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                   help="largest accepted request body; larger gets HTTP 413 (default 1 MiB)")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N",
                   help="open connections per replica before requests get -32002")
    p.add_argument("--rate-limit", type=float, default=0.0, metavar="RPS",
                   help="requests/s per client address before -32001 (default: no limit)")
    p.add_argument("--rate-burst", type=float, default=0.0, metavar="N",
                   help="token bucket size for --rate-limit (default: the rate)")
    p.add_argument("--access-log", default="-", metavar="PATH",
                   help="JSON-lines access log: a path, '-' for stderr (default) or 'off'")
    p.add_argument("--index-cache", default=None, metavar="DIR",
                   help="keep indexes here instead of <trace>/index/")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="close connections without a complete request for this long (default 60)")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="threads per replica for requests that scan (default 4)")
    p.set_defaults(func=run)


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CliError(f"--bind: expected HOST:PORT, got {bind!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _config(args):
    from lanetrace.query.server import ServerConfig, is_loopback

    host, port = parse_bind(args.bind)
    token = args.token or os.environ.get("LANETRACE_TOKEN") or None
    if not is_loopback(host) and not token:
        raise CliError(f"binding {host} (not loopback) requires a token: --token or LANETRACE_TOKEN")
    if not os.path.isdir(args.trace_root):
        raise CliError(f"--trace-root: no such directory: {args.trace_root}")
    for name in ("replicas", "max_body", "max_connections", "workers"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')}: must be >= 1")
    if args.idle_timeout <= 0:
        raise CliError("--idle-timeout: must be > 0")
    if args.rate_limit < 0:
        raise CliError("--rate-limit: must be >= 0")
    return ServerConfig(
        trace_root=args.trace_root, host=host, port=port, token=token, max_body=args.max_body,
        max_connections=args.max_connections, rate_limit=args.rate_limit,
        rate_burst=args.rate_burst, access_log=None if args.access_log == "off" else args.access_log,
        reuseport=args.reuseport or args.replicas > 1, index_cache=args.index_cache,
        workers=args.workers, idle_timeout=args.idle_timeout)


def run(args) -> int:
    cfg = _config(args)
    if args.replicas > 1:
        return _run_replicas(args, cfg)
    import asyncio

    from lanetrace.query.server import serve_forever

    def ready(port):
        print(f"lanetrace serve: listening on http://{_host(cfg.host)}:{port}/rpc (pid {os.getpid()})",
              flush=True)

    try:
        asyncio.run(serve_forever(cfg, ready))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.bind}: {exc.strerror or exc}") from None
    return 0


def _host(h):
    return f"[{h}]" if ":" in h else h


def _die_with_parent():
    """In a replica: get SIGTERM when the supervising parent dies, even by
    SIGKILL, so that no orphan keeps the port."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _run_replicas(args, cfg) -> int:
    """Parent of N single-process servers bound to one port with
    SO_REUSEPORT; restarts a replica that dies, stops all on SIGTERM/SIGINT."""
    port = cfg.port
    reserve = None
    if port == 0:
        # hold the port (bound, not listening: it takes no connections) while replicas bind it
        reserve = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((cfg.host, 0))
        port = reserve.getsockname()[1]
    argv = [sys.executable, "-m", "lanetrace", "serve", "--trace-root", args.trace_root,
            "--bind", f"{_host(cfg.host)}:{port}", "--reuseport", "--replicas", "1",
            "--max-body", str(args.max_body), "--max-connections", str(args.max_connections),
            "--rate-limit", str(args.rate_limit), "--rate-burst", str(args.rate_burst),
            "--access-log", args.access_log, "--workers", str(args.workers),
            "--idle-timeout", str(args.idle_timeout)]
    if args.index_cache:
        argv += ["--index-cache", args.index_cache]
    env = dict(os.environ)
    if cfg.token:
        env["LANETRACE_TOKEN"] = cfg.token  # not on the command line, where ps shows it

    def start():
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
        line = child.stdout.readline().decode(errors="replace")
        if "listening" not in line:
            child.kill()
            child.wait()
            raise CliError(f"replica failed to start (exit {child.poll()})")
        return child

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [start() for _ in range(args.replicas)]
    if reserve is not None:
        reserve.close()
    print(f"lanetrace serve: listening on http://{_host(cfg.host)}:{port}/rpc "
          f"(replicas {len(children)}: pids {','.join(str(c.pid) for c in children)})", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
            for i, c in enumerate(children):
                if c.poll() is not None and not stopping:
                    print(f"lanetrace serve: replica {c.pid} exited ({c.returncode}); restarting",
                          file=sys.stderr, flush=True)
                    children[i] = start()
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()
        for c in children:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
    return 0
