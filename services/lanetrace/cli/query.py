"""``lanetrace query``: thin client of the query server, or of the same engine
in-process when no server runs. Tables for people, ``--json`` for programs."""
from __future__ import annotations

import argparse
import os
import re
import sys

import orjson

from lanetrace.cli import CliError
from lanetrace.cli import human

DEFAULT_SERVER = "http://127.0.0.1:9090"
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def duration_ns(text: str) -> int:
    """'1ms', '250us', '2s', '1.5ms', '300' (ns) → nanoseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1ms, 250us, 2s)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2) or "ns"]))


def register(subparsers):
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--server", metavar="URL", default=None,
                   help=f"query server (default: $LANETRACE_SERVER, else {DEFAULT_SERVER} if it "
                        "answers, else the engine in-process)")
    g.add_argument("--trace-root", metavar="DIR", default=None,
                   help="query this trace root in-process, without a server")
    g.add_argument("--token", default=None, help="bearer token (default: $LANETRACE_TOKEN)")
    g.add_argument("--json", action="store_true", help="print the JSON result")
    g.add_argument("--budget", type=int, metavar="TOKENS", default=None,
                   help="fit the table into this many tokens (200-20000), as the MCP server "
                        "does: whole rows only, saying how many were left out and how to get them")

    p = subparsers.add_parser("query", help="query traces (JSON-RPC client)",
                              description="Query traces through the query server or in-process.")
    sub = p.add_subparsers(dest="query_command", metavar="QUERY", required=True)

    s = sub.add_parser("list", parents=[common], help="list the traces under the root")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", parents=[common], help="summary of one trace")
    s.add_argument("trace_id", metavar="traceId")
    s.add_argument("--checksums", action="store_true", help="include MD5 checksums")
    s.add_argument("--samples", action="store_true", help="include sample events")
    s.set_defaults(func=cmd_info)

    def time_window(s):
        s.add_argument("--from", dest="time_start", type=int, metavar="NS", help="start time (ns, inclusive)")
        s.add_argument("--to", dest="time_end", type=int, metavar="NS", help="end time (ns, inclusive)")
        s.add_argument("--thread", dest="threads", type=int, action="append", metavar="TID",
                       help="only this thread (repeatable)")
        s.add_argument("--module", dest="modules", action="append", metavar="MODULE",
                       help="only functions of this module (repeatable)")

    def paging(s):
        s.add_argument("--limit", type=int, default=50, help="rows per page (default 50, max 10000)")
        s.add_argument("--offset", type=int, default=0)
        s.add_argument("--cursor", default=None, help="continue after a previous page's nextCursor")

    s = sub.add_parser("events", parents=[common], help="events of a trace")
    s.add_argument("trace_id", metavar="traceId")
    time_window(s)
    s.add_argument("--function", dest="functions", action="append", metavar="NAME",
                   help="only events of this function (exact name, repeatable)")
    s.add_argument("--type", dest="types", action="append", metavar="TYPE",
                   choices=("traceStart", "traceEnd", "functionCall", "functionReturn",
                            "signalDelivery", "unknown"), help="only this event type (repeatable)")
    s.add_argument("--order-by", choices=("timestamp", "threadId"), default="timestamp")
    s.add_argument("--desc", action="store_true", help="newest first")
    s.add_argument("--args", action="store_true", help="include argument/return registers")
    paging(s)
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("spans", parents=[common], help="calls matched with their returns")
    s.add_argument("trace_id", metavar="traceId")
    time_window(s)
    s.add_argument("--function", dest="functions", action="append", metavar="NAME")
    s.add_argument("--min-duration", type=duration_ns, metavar="DUR", help="e.g. 1ms, 250us")
    s.add_argument("--max-duration", type=duration_ns, metavar="DUR")
    s.add_argument("--min-depth", type=int)
    s.add_argument("--max-depth", type=int)
    s.add_argument("--roots-only", action="store_true", help="only outermost spans (depth 0)")
    paging(s)
    s.set_defaults(func=cmd_spans)

    s = sub.add_parser("functions", parents=[common], help="per-function call counts and times")
    s.add_argument("trace_id", metavar="traceId")
    time_window(s)
    s.add_argument("--top", type=int, default=20, help="how many (default 20)")
    s.add_argument("--order-by", choices=("calls", "totalTimeNs", "selfTimeNs"), default="calls")
    s.set_defaults(func=cmd_functions)

    s = sub.add_parser("threads", parents=[common], help="threads of a trace")
    s.add_argument("trace_id", metavar="traceId")
    s.set_defaults(func=cmd_threads)


# ---- plumbing ------------------------------------------------------------

def _client(args):
    from lanetrace.query.client import HttpClient, LocalClient, server_is_up

    token = args.token or os.environ.get("LANETRACE_TOKEN")
    if args.server and args.trace_root:
        raise CliError("--server and --trace-root exclude each other")
    if args.server:
        return HttpClient(args.server, token)
    if args.trace_root:
        if not os.path.isdir(args.trace_root):
            raise CliError(f"--trace-root: no such directory: {args.trace_root}")
        return LocalClient(args.trace_root)
    env = os.environ.get("LANETRACE_SERVER")
    if env:
        return HttpClient(env, token)
    if server_is_up(DEFAULT_SERVER):
        return HttpClient(DEFAULT_SERVER, token)
    if not os.path.isdir("traces"):
        raise CliError(f"no server at {DEFAULT_SERVER} and no ./traces; use --server or --trace-root")
    return LocalClient("traces")


def _call(args, method, params):
    from lanetrace.query.client import QueryError

    try:
        return _client(args).call(method, params)
    except QueryError as exc:
        raise CliError(str(exc), status=1) from None
    except ConnectionError as exc:
        raise CliError(str(exc), status=1) from None


def _emit(args, result, rows, columns, footer=None, meta=None, more=None, align_numbers=True):
    if args.json and args.budget is not None:
        raise CliError("--budget fits the table for people; --json prints the whole result")
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if args.budget is not None:
        return _emit_budgeted(args, rows, columns, meta, more, align_numbers)
    print_table(rows, columns)
    if footer:
        print(footer)
    return 0


def _emit_budgeted(args, rows, columns, meta, more, align_numbers):
    import io

    from lanetrace.mcp.budget import BudgetError, check_budget, fit_table

    try:
        budget = check_budget(args.budget, "--budget")
    except BudgetError as exc:
        raise CliError(str(exc)) from None
    buf = io.StringIO()
    print_table(rows, columns, out=buf, align_numbers=align_numbers)
    header, *lines = buf.getvalue().splitlines()
    total = meta["totalCount"] - meta["offset"] if meta else len(lines)
    if meta and more is None:
        more = lambda shown: f"--offset {meta['offset'] + shown} (without --cursor)"  # noqa: E731
    r = fit_table(budget, f"lanetrace query {args.query_command}", header, lines, total=total,
                  noun="rows", more=more or "raise --budget")
    print(r.text)
    return 0


def print_table(rows, columns, out=None, align_numbers=True):
    out = out or sys.stdout
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.rjust(w) if align_numbers and _numeric(v) else v.ljust(w)
                            for v, w in zip(row, widths)).rstrip() + "\n")


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return orjson.dumps(v).decode()
    return str(v)


_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?( ?(ns|us|ms|s))?")


def _numeric(v: str) -> bool:
    """Numbers, durations ('1.5 ms') and relative times ('+1.25s') align right."""
    return _NUMBER.fullmatch(v) is not None


def _filters(args, **extra):
    f = {}
    if getattr(args, "time_start", None) is not None:
        f["timeStartNs"] = args.time_start
    if getattr(args, "time_end", None) is not None:
        f["timeEndNs"] = args.time_end
    if getattr(args, "threads", None):
        f["threadIds"] = args.threads
    if getattr(args, "modules", None):
        f["modules"] = args.modules
    if getattr(args, "functions", None):
        f["functionNames"] = args.functions
    f.update({k: v for k, v in extra.items() if v is not None})
    return f


def _paging_params(args, p):
    p["limit"] = args.limit
    if args.offset:
        p["offset"] = args.offset
    if args.cursor:
        p["cursor"] = args.cursor
    return p


def _page_footer(meta):
    s = f"{meta['returnedCount']} of {meta['totalCount']} (offset {meta['offset']})"
    if meta.get("nextCursor"):
        s += f"; next page: --cursor {meta['nextCursor']}"
    return s


def _origin(args):
    """The trace's start (ns): human tables show times relative to it."""
    return _call(args, "trace.info", {"traceId": args.trace_id}).get("timeStartNs")


def _humanize(rows, origin, times=(), durations=()):
    """Rows for a table: ``times`` as '+1.25ms' after the trace start,
    ``durations`` with units (the JSON output keeps raw nanoseconds)."""
    out = []
    for row in rows:
        row = dict(row)
        for src, dst in times:
            if src in row:
                row[dst] = human.relative(row.pop(src), origin)
        for src, dst in durations:
            if src in row:
                row[dst] = human.duration(row.pop(src))
        out.append(row)
    return out


def _pipe_safe(fn):
    """`lanetrace query ... | head` closes our stdout early: that is not an
    error. A trace found corrupt while a view reads it is one, told plainly."""
    def run(args):
        from lanetrace.query.errors import RpcError

        try:
            return fn(args)
        except RpcError as exc:
            raise CliError(str(exc.data), status=1) from None
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush stays quiet
            return 0
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


# ---- commands --------------------------------------------------------------

@_pipe_safe
def cmd_list(args):
    r = _call(args, "trace.list", {})
    return _emit(args, r, r["traces"], ["traceId", "pid", "eventCount", "timeStartNs",
                                        "timeEndNs", "executablePath"])


@_pipe_safe
def cmd_info(args):
    params = {"traceId": args.trace_id}
    if args.checksums:
        params["include_checksums"] = True
    if args.samples:
        params["include_samples"] = True
    r = _call(args, "trace.info", params)
    if args.json:
        return _emit(args, r, [], [])
    rows = []
    for k, v in r.items():
        if k == "samples":
            continue
        rows.append({"field": k, "value": v})
    if args.budget is not None:
        return _emit(args, r, rows, ["field", "value"], align_numbers=False)
    print_table(rows, ["field", "value"], align_numbers=False)
    for name, evs in (r.get("samples") or {}).items():
        print(f"\n{name}:")
        print_table(evs, ["timestampNs", "threadId", "eventType", "functionName", "depth"])
    return 0


@_pipe_safe
def cmd_events(args):
    params = _paging_params(args, {"traceId": args.trace_id,
                                   "filters": _filters(args, eventTypes=args.types),
                                   "projection": {"functionName": True, "depth": True,
                                                  "args": args.args},
                                   "orderBy": args.order_by, "ascending": not args.desc})
    r = _call(args, "events.get", params)
    if args.json:
        return _emit(args, r, [], [])
    cols = ["time", "threadId", "eventType", "functionName", "depth"]
    if args.args:
        cols.append("args")
    rows = _humanize(r["events"], _origin(args), times=[("timestampNs", "time")])
    return _emit(args, r, rows, cols, _page_footer(r["metadata"]), meta=r["metadata"])


@_pipe_safe
def cmd_spans(args):
    f = _filters(args, minDurationNs=args.min_duration, maxDurationNs=args.max_duration,
                 minDepth=args.min_depth, maxDepth=args.max_depth)
    params = _paging_params(args, {"traceId": args.trace_id, "filters": f,
                                   "includeChildren": not args.roots_only,
                                   "projection": {"threadId": True, "depth": True,
                                                  "childCount": True}})
    r = _call(args, "spans.list", params)
    if args.json:
        return _emit(args, r, [], [])
    cols = ["spanId", "threadId", "functionName", "start", "end", "duration", "depth",
            "childCount"]
    rows = _humanize(r["spans"], _origin(args), times=[("startTimeNs", "start"), ("endTimeNs", "end")],
                     durations=[("durationNs", "duration")])
    return _emit(args, r, rows, cols, _page_footer(r["metadata"]), meta=r["metadata"])


@_pipe_safe
def cmd_functions(args):
    f = _filters(args)
    r = _call(args, "functions.list", {"traceId": args.trace_id, "filters": f,
                                       "orderBy": args.order_by, "limit": args.top})
    if args.json:
        return _emit(args, r, [], [])
    rows = _humanize(r["functions"], None, durations=[
        ("totalTimeNs", "total"), ("selfTimeNs", "self"), ("maxDurationNs", "max")])
    columns = ["functionName", "module", "calls", "total", "self", "max"]
    if any("sourceFile" in row for row in rows):
        # file:line where DWARF had it; the basename keeps the table narrow
        rows = [dict(row, source=f"{os.path.basename(row['sourceFile'])}:{row['sourceLine']}")
                if "sourceFile" in row else row for row in rows]
        columns.append("source")
    return _emit(args, r, rows, columns, more="raise --top or --budget")


@_pipe_safe
def cmd_threads(args):
    r = _call(args, "threads.list", {"traceId": args.trace_id})
    if args.json:
        return _emit(args, r, [], [])
    rows = _humanize(r["threads"], _origin(args), times=[("firstNs", "first"), ("lastNs", "last")])
    return _emit(args, r, rows, ["threadId", "name", "eventCount", "first", "last"])
