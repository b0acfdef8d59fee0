"""``lanetrace diff``: compare two traces (function changes, per-thread
divergence of the call sequences)."""
from __future__ import annotations

import sys

import orjson

from lanetrace.cli import CliError
from lanetrace.cli.argtypes import non_negative_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diff", help="compare two traces",
        description="Compare two traces: functions whose call counts or total time "
        "changed most, functions found in only one trace, and for each thread (matched "
        "by creation order) the first call where the two call sequences diverge. "
        "Exit status: 0 if the call structure is identical, 1 if it differs "
        "(timings alone do not count), 2 on error.")
    p.add_argument("trace_a", metavar="TRACE_A", help="trace directory or id under --trace-root")
    p.add_argument("trace_b", metavar="TRACE_B", help="trace directory or id under --trace-root")
    p.add_argument("--trace-root", default="traces", help="root of trace ids (default: ./traces)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--context", type=non_negative_int(), default=3,
                   help="calls shown on each side of a divergence (default 3)")
    p.add_argument("--top", type=non_negative_int(), default=20,
                   help="functions listed per ranking (default 20)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lanetrace.core import atf
    from lanetrace.export.diff import diff_traces
    from lanetrace.export.tracedir import TraceNotFound, resolve_trace
    try:
        dir_a = resolve_trace(args.trace_a, args.trace_root)
        dir_b = resolve_trace(args.trace_b, args.trace_root)
        result = diff_traces(dir_a, dir_b, context=args.context, top=args.top)
    except (TraceNotFound, atf.TraceFormatError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(render(result))
    return 0 if result["identical"] else 1


def _dur(ns: int) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns} ns"


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


def render(result: dict) -> str:
    """The diff for people."""
    out = []
    for label, key in (("A", "traceA"), ("B", "traceB")):
        t = result[key]
        out.append(f"{label}: {t['traceDir']}  ({t['calls']} calls, {t['functions']} functions, "
                   f"{t['threads']} threads)")
    if result["identical"]:
        out.append("\nCall structure identical (same calls, same order on every thread).")
    f = result["functions"]
    if f["byCallsDelta"]:
        out.append("\nLargest call-count changes:")
        width = max(len(r["functionName"]) for r in f["byCallsDelta"])
        for r in f["byCallsDelta"]:
            out.append(f"  {r['functionName']:<{width}}  {r['callsA']:>8} -> {r['callsB']:<8} "
                       f"({_signed(r['callsDelta'])})")
    if f["byTotalTimeDelta"]:
        out.append("\nLargest total-time changes:")
        width = max(len(r["functionName"]) for r in f["byTotalTimeDelta"])
        for r in f["byTotalTimeDelta"]:
            sign = "+" if r["totalTimeDeltaNs"] > 0 else "-"
            out.append(f"  {r['functionName']:<{width}}  {_dur(r['totalTimeNsA']):>12} -> "
                       f"{_dur(r['totalTimeNsB']):<12} ({sign}{_dur(abs(r['totalTimeDeltaNs']))})")
    for key, label in (("onlyInA", "Only in A"), ("onlyInB", "Only in B")):
        if f[key]:
            out.append(f"\n{label}:")
            for r in f[key]:
                out.append(f"  {r['functionName']}  ({_calls(r['calls'])}, {_dur(r['totalTimeNs'])})")
    for t in result["threads"]:
        head = (f"\nThread #{t['index'] + 1} (A tid {t['threadIdA']}, B tid {t['threadIdB']}; "
                f"{t['callsA']} vs {t['callsB']} calls)")
        d = t["divergence"]
        if d is None:
            out.append(f"{head}: same call sequence")
            continue
        out.append(f"{head}: diverges at call {d['callIndex'] + 1}")
        if d["before"]:
            out.append(f"    common: ... {', '.join(d['before'])}")
        for side in ("a", "b"):
            s = d[side]
            if s["call"] is None:
                out.append(f"  {side.upper()}: (thread has no more calls)")
            else:
                after = f"  then {', '.join(s['after'])}" if s["after"] else ""
                out.append(f"  {side.upper()}: {s['call']} at {s['timestampNs']} ns{after}")
    um = result["unmatchedThreads"]
    if um["a"] or um["b"]:
        out.append("")
        if um["a"]:
            out.append(f"Threads only in A: {', '.join(map(str, um['a']))}")
        if um["b"]:
            out.append(f"Threads only in B: {', '.join(map(str, um['b']))}")
    return "\n".join(out) + "\n"
