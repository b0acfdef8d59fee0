"""Helpers for the view tests: synthetic traces in a root and an in-process
engine over it, and an independent stack walk of the raw events that says
what a call tree must show."""
from __future__ import annotations

import os

from lanetrace.query.engine import Engine
from query import tracegen


def write(root, name, events, flavour="ours"):
    tracegen.write_trace(os.path.join(root, name), events, flavour=flavour)
    return name


def engine(root):
    return Engine(str(root), subprocess_builds=False)


def expected_lines(events, tid):
    """(type, function, depth, durationNs, end) per line of thread ``tid``,
    from the events in the thread's order: a return closes the topmost call
    of its function; calls above it never returned; a call followed at once
    by its return is a leaf; what is open at the end stays open."""
    evs = [e for e in events if e.tid == tid and e.kind in ("call", "ret", "signal")]
    out, stack = [], []
    i = 0
    while i < len(evs):
        e = evs[i]
        if e.kind == "call":
            nxt = evs[i + 1] if i + 1 < len(evs) else None
            if nxt is not None and nxt.kind == "ret" and nxt.func == e.func:
                out.append(("leaf", e.func, len(stack), nxt.ts - e.ts,
                            "unwound" if nxt.unwound else "returned"))
                i += 2
                continue
            out.append(("entry", e.func, len(stack), None, None))
            stack.append((e.func, e.ts))
        elif e.kind == "ret":
            j = max((k for k, f in enumerate(stack) if f[0] == e.func), default=-1)
            if j >= 0:
                while len(stack) - 1 > j:
                    name, _ = stack.pop()
                    out.append(("exit", name, len(stack), None, "noReturn"))
                name, ts = stack.pop()
                out.append(("exit", name, len(stack), e.ts - ts,
                            "unwound" if e.unwound else "returned"))
        else:
            out.append(("signal", None, len(stack), None, None))
        i += 1
    while stack:
        name, _ = stack.pop()
        out.append(("exit", name, len(stack), None, "openAtTraceEnd"))
    return out


def shape(lines):
    """The comparable part of calltree lines (entry durations are the
    exit's, so they are left out)."""
    return [(ln["type"], ln.get("functionName"), ln["depth"],
             None if ln["type"] in ("entry", "signal") else ln.get("durationNs"), ln.get("end"))
            for ln in lines]


def all_lines(e, params):
    """Every line of a calltree.get query, page after page."""
    lines, cursor = [], None
    while True:
        p = dict(params)
        if cursor:
            p["cursor"] = cursor
        r = e.call("calltree.get", p)
        lines += r["lines"]
        cursor = r["metadata"].get("nextCursor")
        if not cursor:
            return lines
