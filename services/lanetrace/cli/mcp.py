"""``lanetrace mcp``: the MCP server for coding agents, over stdio."""
from __future__ import annotations

import os

from lanetrace.cli import CliError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mcp", help="serve traces to coding agents over MCP (stdio)",
        description="Serve the traces under --trace-root to an MCP client (a coding agent's "
        "host) over stdin/stdout: list_traces, trace_summary, hot_functions, find_calls, "
        "call_tree, flight_window, diff_traces; with --allow-capture also run_trace and "
        "attach_trace. Every answer fits the token budget the agent gives (docs/mcp.md).")
    p.add_argument("--trace-root", metavar="DIR", default="traces",
                   help="root of the trace ids (default: ./traces)")
    p.add_argument("--allow-capture", action="store_true",
                   help="let the agent run programs and attach to processes under the tracer "
                        "(read-only without it)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not os.path.isdir(args.trace_root):
        if not args.allow_capture:
            raise CliError(f"--trace-root: no such directory: {args.trace_root}")
        os.makedirs(args.trace_root, exist_ok=True)  # captures will fill it
    try:
        from lanetrace.mcp.server import serve
    except ModuleNotFoundError as exc:
        raise CliError(f"the MCP server needs the 'mcp' package ({exc}); "
                       "pip install lanetrace again to get it") from None
    serve(args.trace_root, args.allow_capture)
    return 0
