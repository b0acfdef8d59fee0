"""``lanetrace replay``, ``graph`` and ``sql``: a trace read as a call tree,
as an aggregated call graph, and with SQL. They run the query engine's own
code (query/calltree.py, callgraph.py, sql.py) in-process on the trace's
index, which is built on first use."""
from __future__ import annotations

import csv
import os
import sys

import orjson

from lanetrace.cli import CliError
from lanetrace.cli import human
from lanetrace.cli.query import _pipe_safe, print_table

TRACE_HELP = ("trace directory, or a path relative to --trace-root "
              "(e.g. 20261121-101500-ab12/pid_4242)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="print a trace as an indented call tree (like uftrace replay)",
        description="Print the calls of a trace as an indented tree, one line per call: "
        "time since the trace start, duration, thread id, and the function indented by "
        "depth. A call with children opens with 'name() {' and closes with a '}' line "
        "carrying its duration; a leaf is 'name();'. Inside flight-recorder windows "
        "arguments and return values show. The output streams.")
    p.add_argument("trace_id", metavar="TRACE", help=TRACE_HELP)
    p.add_argument("--trace-root", default="traces", help="root of trace ids (default: ./traces)")
    p.add_argument("--thread", dest="threads", type=int, action="append", metavar="TID",
                   help="only this thread (repeatable)")
    p.add_argument("--from", dest="time_start", type=human.parse_time, metavar="TIME",
                   help="start at this time: +1.2s, +350ms (after the trace start), or ns "
                   "with --absolute; calls open then are shown first")
    p.add_argument("--to", dest="time_end", type=human.parse_time, metavar="TIME",
                   help="stop after this time (same forms as --from)")
    p.add_argument("--absolute", action="store_true",
                   help="raw CLOCK_MONOTONIC timestamps (ns) in the output and in --from/--to")
    p.add_argument("--depth", type=int, metavar="N",
                   help="show N levels (a call at the last level shows as a leaf)")
    p.add_argument("--min-duration", type=human.parse_duration, metavar="DUR",
                   help="hide calls shorter than this (e.g. 10us)")
    p.add_argument("--function", metavar="NAME",
                   help="only the subtrees rooted at calls of this function")
    p.add_argument("--interleave", action="store_true",
                   help="merge the threads by time instead of one thread after another")
    p.add_argument("--no-args", dest="args", action="store_false",
                   help="do not decode flight-recorder arguments and return values")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (calltree.get lines, raw ns)")
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser(
        "graph", help="aggregated call graph: calls, total and self time per call path",
        description="Aggregate every completed call of a trace by its call path, like "
        "uftrace graph: calls, total and self time per node; recursion is folded. "
        "With FUNCTION: its callers, and the graph of what it calls.")
    p.add_argument("trace_id", metavar="TRACE", help=TRACE_HELP)
    p.add_argument("function", nargs="?", metavar="FUNCTION")
    p.add_argument("--trace-root", default="traces", help="root of trace ids (default: ./traces)")
    p.add_argument("--thread", dest="threads", type=int, action="append", metavar="TID",
                   help="only calls of this thread (repeatable)")
    p.add_argument("--from", dest="time_start", type=human.parse_time, metavar="TIME",
                   help="only calls starting at or after this time (+1.2s, or ns with --absolute)")
    p.add_argument("--to", dest="time_end", type=human.parse_time, metavar="TIME",
                   help="only calls ending at or before this time")
    p.add_argument("--absolute", action="store_true", help="--from/--to are raw timestamps (ns)")
    p.add_argument("--depth", type=int, metavar="N", help="show N levels")
    p.add_argument("--json", action="store_true", help="the callgraph.get result")
    p.set_defaults(func=cmd_graph)

    p = subparsers.add_parser(
        "sql", help="query a trace with SQL (DuckDB, in-process)",
        description="Run one read-only SQL query (DuckDB dialect) over the tables calls, "
        "events, functions and threads of a trace, read from its index without copying. "
        "--schema lists the tables.")
    p.add_argument("trace_id", metavar="TRACE", help=TRACE_HELP)
    p.add_argument("query", nargs="?", metavar="QUERY")
    p.add_argument("--trace-root", default="traces", help="root of trace ids (default: ./traces)")
    p.add_argument("--schema", action="store_true", help="print the tables and their columns")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON array per row after a header "
                     "object {columns}")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.set_defaults(func=cmd_sql)


# ---- opening ----------------------------------------------------------------

def open_trace(trace_id: str, trace_root: str):
    """(store, opened trace) for a trace directory or id, indexing it if needed."""
    from lanetrace.export.tracedir import TraceNotFound, resolve_trace
    from lanetrace.query.errors import RpcError
    from lanetrace.query.store import TraceStore

    try:
        path = os.path.realpath(resolve_trace(trace_id, trace_root))
    except TraceNotFound as exc:
        raise CliError(str(exc)) from None
    store = TraceStore(os.path.dirname(path), subprocess_builds=False)
    try:
        return store, store.get(os.path.basename(path))
    except RpcError as exc:
        raise CliError(f"{trace_id}: {exc.data}", status=1) from None


def _window(args, t):
    origin = t.idx.meta["timeStartNs"] or 0
    lo = human.resolve_time(args.time_start, origin, args.absolute)
    hi = human.resolve_time(args.time_end, origin, args.absolute)
    if lo is not None and hi is not None and lo >= hi:
        raise CliError("--from must be before --to")
    return lo, hi


# ---- replay -------------------------------------------------------------------

@_pipe_safe
def cmd_replay(args):
    from lanetrace.query import calltree, dwarfparams

    if args.depth is not None and args.depth < 1:
        raise CliError("--depth must be at least 1")
    _, t = open_trace(args.trace_id, args.trace_root)
    lo, hi = _window(args, t)
    tree = calltree.CallTree(t, calltree.TreeOptions(
        args.depth, args.min_duration, args.args, dwarfparams.for_trace(t) if args.args else None))
    known = set(tree.thread_ids())
    for tid in args.threads or ():
        if tid not in known:
            raise CliError(f"--thread {tid}: no such thread in the trace "
                           f"(threads: {', '.join(map(str, sorted(known))) or 'none'})")
    if args.function is not None and not len(t.fidx_for([args.function], None)):
        raise CliError(f"--function {args.function}: no such function in the trace")
    out = sys.stdout
    if args.function is not None:
        threads = args.threads or [None]
        items = (it for tid in threads for it in calltree.lines_for(
            tree, tid=tid, function=args.function, time_start=lo, time_end=hi))
    elif args.interleave:
        tids = args.threads or tree.thread_ids()
        items = tree.interleaved(tids, 0 if lo is None else tree.rank_at(lo),
                                 None if hi is None else tree.rank_at(hi, "right"))
    else:
        tids = args.threads or tree.thread_ids()
        items = (it for tid in tids for it in calltree.lines_for(
            tree, tid=tid, time_start=lo, time_end=hi))
    if args.json:
        for _, line in items:
            out.write(orjson.dumps(line).decode() + "\n")
    else:
        origin = None if args.absolute else (t.idx.meta["timeStartNs"] or 0)
        base, subtree = 0, None
        out.write(f"#{'TIME':>13} {'DURATION':>12}  {'TID':>7}    FUNCTION\n")
        for key, line in items:
            if args.function is not None and (line["threadId"], key[0]) != subtree:
                # each subtree is indented from its root
                subtree, base = (line["threadId"], key[0]), line["depth"]
            out.write(format_line(line, origin, base) + "\n")
    out.flush()
    if tree.stats.orphan_returns:
        print(f"lanetrace: {tree.stats.orphan_returns} returns without a recorded call "
              "(entered before tracing began, or the call was dropped) not shown",
              file=sys.stderr)
    return 0


def format_line(line: dict, origin, base: int = 0) -> str:
    """One replay line: time, duration, thread, indented call."""
    typ = line["type"]
    when = human.relative_fixed(line["timestampNs"], origin) if origin is not None \
        else str(line["timestampNs"])
    indent = "  " * max(line["depth"] - base, 0)
    dur = ""
    if typ == "signal":
        sig = line["signal"]
        text = f"/* signal {sig['name'] or sig['number']} ({sig['number']}) */"
    else:
        name = line["functionName"] or "?"
        if typ == "entry":
            text = f"{name}({_args(line)}) {{"
        elif typ == "leaf":
            ret = f" = {_value(line['returnValue'])}" if "returnValue" in line else ""
            text = f"{name}({_args(line)}){ret};{_note(line)}"
            dur = human.duration(line["durationNs"])
        else:
            ret = f" = {_value(line['returnValue'])};" if "returnValue" in line else ""
            text = f"}}{ret} /* {name}{_note(line, ': ')} */"
            dur = human.duration(line["durationNs"])
    return f"{when:>14} {dur:>12}  [{line['threadId']:>6}] | {indent}{text}"


def _note(line, sep=" /* ") -> str:
    end = line.get("end")
    words = {"unwound": "unwound", "noReturn": "no return", "openAtTraceEnd": "open at trace end"}
    if end not in words:
        return ""
    return f"{sep}{words[end]}" + (" */" if sep == " /* " else "")


def _args(line) -> str:
    args = line.get("args")
    if not args:
        return ""
    return ", ".join(f"{k}={_value(v)}" for k, v in args.items())


def _value(v: int) -> str:
    """Registers as C would most likely mean them: ints in decimal (a 32-bit
    negative as negative), pointers and other large values in hex."""
    if v is None:
        return "?"
    if v < 0x80000000:
        return str(v)
    if v <= 0xFFFFFFFF:
        return str(v - (1 << 32))
    if v >= 0xFFFFFFFF80000000:
        return str(v - (1 << 64))
    return hex(v)


# ---- graph --------------------------------------------------------------------

@_pipe_safe
def cmd_graph(args):
    from lanetrace.query import callgraph
    from lanetrace.query.errors import RpcError

    store, t = open_trace(args.trace_id, args.trace_root)
    lo, hi = _window(args, t)
    params = {"traceId": t.trace_id}
    if args.function is not None:
        params["functionName"] = args.function
    if args.threads:
        params["threadIds"] = args.threads
    if lo is not None:
        params["timeStartNs"] = lo
    if hi is not None:
        params["timeEndNs"] = hi
    if args.depth is not None:
        params["maxDepth"] = args.depth
    try:
        r = callgraph.callgraph_get(store, params)
    except RpcError as exc:
        raise CliError(str(exc.data)) from None
    out = sys.stdout
    if args.json:
        out.write(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    head = f"# {'CALLS':>9}  {'TOTAL':>12}  {'SELF':>12}    FUNCTION\n"
    if args.function is None:
        out.write("# call graph of the whole program\n" + head)
        _graph_nodes(out, r["roots"], 0)
    else:
        f = r["function"]
        out.write(f"# callers of {args.function}\n" + head)
        for c in r["callers"]:
            out.write(_graph_row(c, 0, c["functionName"] or "(no recorded caller)"))
        out.write(f"\n# call graph of {args.function}\n" + head)
        out.write(_graph_row(f, 0, f["functionName"]))
        _graph_nodes(out, r["callees"], 1)
    if r["truncated"]:
        out.write("# (truncated by --depth or the node limit)\n")
    return 0


def _graph_row(node, depth, name) -> str:
    return (f"  {node['calls']:>9}  {human.duration(node['totalTimeNs']):>12}  "
            f"{human.duration(node['selfTimeNs']):>12}    {'  ' * depth}{name}\n")


def _graph_nodes(out, nodes, depth):
    for n in nodes:
        out.write(_graph_row(n, depth, n["functionName"] or "?"))
        _graph_nodes(out, n["children"], depth + 1)


# ---- sql ----------------------------------------------------------------------

@_pipe_safe
def cmd_sql(args):
    from lanetrace.query import sql

    if args.schema:
        sys.stdout.write(sql.schema_text())
        if args.query is None:
            return 0
    if args.query is None:
        raise CliError("give a QUERY (or --schema)")
    _, t = open_trace(args.trace_id, args.trace_root)
    try:
        names, types, rows = sql.iter_rows(t, args.query)
        out = sys.stdout
        if args.json:
            out.write(orjson.dumps({"columns": [{"name": n, "type": ty}
                                                for n, ty in zip(names, types)]}).decode() + "\n")
            for row in rows:
                out.write(orjson.dumps(row).decode() + "\n")
        elif args.csv:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(names)
            for row in rows:
                w.writerow(["" if v is None else v for v in row])
        else:
            cols = _unique(names)
            print_table([dict(zip(cols, r)) for r in rows], cols)
    except sql.SqlError as exc:
        raise CliError(f"sql: {exc}") from None
    return 0


def _unique(names):
    seen, out = {}, []
    for n in names:
        k = n
        while k in seen:
            seen[n] += 1
            k = f"{n}_{seen[n]}"
        seen.setdefault(k, 0)
        out.append(k)
    return out
