"""Budgeted answers to an agent's questions about traces.

Every answer is built from the query engine's own methods (trace.list,
trace.info, threads.list, functions.list, spans.list, events.get,
trace.diff, and the call-tree methods where the engine has them), called
in-process; nothing here computes a query of its own. Times in answers are
relative to the trace's first event (``+1.234567s``); the ``fromNs``,
``toNs`` and ``atNs`` parameters are on that same scale.
"""
from __future__ import annotations

import os
import threading

import orjson

from lanetrace.cli.human import duration as dur
from lanetrace.cli.human import relative_fixed
from lanetrace.cli.views import _value, format_line
from lanetrace.core import atf
from lanetrace.mcp.budget import Answer, check_budget
from lanetrace.query import index as ix
from lanetrace.query.engine import Engine
from lanetrace.query.errors import RpcError

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
ORDER_BY = ("selfTimeNs", "totalTimeNs", "calls")
HOT_LIMIT = 100
PAGE_MAX = 10_000  # the engine's page limit
SUMMARY_HOT = 30
DIFF_MEMO = 4


class AnswerError(Exception):
    """Bad input or an unknown trace: the message is for the agent."""


# ---- formatting ----------------------------------------------------------------

def rel(ns, t0) -> str:
    return "?" if ns is None or t0 is None else relative_fixed(ns, t0)


def call_text(name, args=None, ret=None) -> str:
    """``name(rdi=1, rsi=0x7ff...) = 5``: registers where the trace recorded them."""
    s = name or "?"
    if args:
        s += "(" + ", ".join(f"{r}={_value(args[r])}" for r in ARG_REGS if r in args) + ")"
    else:
        s += "()"
    if ret and "rax" in ret:
        s += f" = {_value(ret['rax'])}"
    return s


# ---- the engine ------------------------------------------------------------------

class Answers:
    """The tools' answers over one trace root, on one in-process engine."""

    def __init__(self, trace_root: str):
        self.root = os.path.realpath(trace_root)
        self.engine = Engine(self.root, subprocess_builds=True)
        self._diffs: dict = {}
        self._diff_lock = threading.Lock()

    def close(self):
        self.engine.close()

    def q(self, method: str, params: dict):
        try:
            return self.engine.call(method, params)
        except RpcError as exc:
            raise AnswerError(_rpc_message(exc)) from None

    def _manifest(self, trace_id: str) -> dict:
        path = self._resolve(trace_id)
        try:
            with open(os.path.join(path, atf.MANIFEST_FILE), "rb") as f:
                m = orjson.loads(f.read())
            return m if isinstance(m, dict) else {}
        except (OSError, ValueError):
            return {}

    def _resolve(self, trace_id, name="traceId") -> str:
        try:
            return self.engine.store.resolve(trace_id, name)
        except RpcError as exc:
            raise AnswerError(_rpc_message(exc)) from None

    def _info(self, trace_id) -> dict:
        return self.q("trace.info", {"traceId": trace_id})

    # ---- list_traces -------------------------------------------------------

    def list_traces(self, tokenBudget=None):
        budget = budget_of(tokenBudget)
        traces = self.q("trace.list", {})["traces"]

        def written(t):
            try:
                return os.stat(os.path.join(self.root, t["traceId"], atf.EVENTS_FILE)).st_mtime_ns
            except OSError:
                return 0

        traces.sort(key=lambda t: (-written(t), t["traceId"]))
        lines, recs = [], []
        for t in traces:
            m = self._manifest(t["traceId"])
            drops = lost_records(m)
            d = (t["timeEndNs"] - t["timeStartNs"]) if t["timeEndNs"] is not None \
                and t["timeStartNs"] is not None else None
            prog = os.path.basename(t["executablePath"] or "") or "?"
            lines.append(f"{t['traceId']}  {prog}  pid {t['pid']}  {t['eventCount']} events  "
                         f"{dur(d)}  drops {drops}")
            recs.append({"traceId": t["traceId"], "program": t["executablePath"], "pid": t["pid"],
                         "events": t["eventCount"], "durationNs": d, "drops": drops})
        ans = Answer(budget, f"{len(traces)} traces under {self.root}, newest first",
                     {"traceRoot": self.root, "traceCount": len(traces)})
        ans.section("traces", "traces", lines, recs, noun="traces",
                    more="raise tokenBudget to list more", empty="none (record one with lanetrace run)")
        return ans.render()

    # ---- trace_summary -----------------------------------------------------

    def trace_summary(self, traceId, tokenBudget=None, lead=()):
        budget = budget_of(tokenBudget)
        info = self._info(traceId)
        m = self._manifest(traceId)
        t0 = info["timeStartNs"]
        threads = self.q("threads.list", {"traceId": traceId})["threads"]
        hot = self.q("functions.list", {"traceId": traceId, "orderBy": "selfTimeNs",
                                        "limit": SUMMARY_HOT})["functions"]
        prog = m.get("executablePath") or "?"
        argv = m.get("args") if isinstance(m.get("args"), list) else [prog]
        ending = _ending(m)
        lost = lost_records(m)
        summary = {"traceId": traceId, "program": prog, "argv": argv, "pid": info["pid"],
                   "ending": ending, "exitCode": m.get("exitCode"), "signal": m.get("signal"),
                   "traceStartNs": t0, "durationNs": info["durationNs"],
                   "threads": info["threadCount"], "events": info["eventCount"],
                   "calls": m.get("callCount"), "spans": info["spanCount"],
                   "functions": info["functionCount"], "lostRecords": lost,
                   "windows": len(info["windows"])}
        ans = Answer(budget, f"trace {traceId}: {' '.join(map(str, argv))} (pid {info['pid']}): "
                             f"{ending}", summary)
        for line in lead:
            ans.fact(line)
        ans.fact(f"duration {dur(info['durationNs'])}; {info['threadCount']} threads; "
                 f"{info['eventCount']} events, {info['spanCount']} completed calls, "
                 f"{info['functionCount']} functions")
        ans.fact(f"drops: {'none' if not lost else f'{lost} records lost'}")
        if info["windows"]:
            ans.fact(f"flight recorder: {len(info['windows'])} window(s) with arguments and "
                     f"return values (flight_window)")
        ab_lines = abnormal(m, info)
        ans.section("abnormal", "abnormal", ab_lines, ab_lines, noun="findings")
        ans.section("hottest", "hottest functions by self time",
                    [_fn_line(f) for f in hot], hot, total=_called(hot, SUMMARY_HOT, info),
                    noun="functions", more=f"hot_functions traceId={traceId}")
        wl, wr = self._window_rows(traceId, info, m)
        ans.section("windows", "flight-recorder windows", wl, wr, noun="windows",
                    more=f"flight_window traceId={traceId}", empty="none (no -t trigger)")
        names = {r["threadId"]: r.get("name") for r in threads}
        tl = [f"tid {r['threadId']}{' ' + names[r['threadId']] if names.get(r['threadId']) else ''}"
              f": {r['eventCount']} events, {rel(r['firstNs'], t0)}..{rel(r['lastNs'], t0)}"
              for r in threads]
        ans.section("threads", "threads", tl, threads, noun="threads",
                    more="find_calls threadId=TID for one thread's calls")
        return ans.render()

    def _window_rows(self, trace_id, info, m):
        t0 = info["timeStartNs"]
        lines, recs = [], []
        for i, w in enumerate(info["windows"]):
            at = self._trigger_time(trace_id, w, m)
            lines.append(f"window {i}: {w.get('trigger')}  {rel(w['startNs'], t0)}..{rel(w['endNs'], t0)}"
                         f" ({dur(w['endNs'] - w['startNs'])}), trigger at {rel(at, t0)}")
            recs.append({"window": i, "trigger": w.get("trigger"), "startNs": w["startNs"] - t0,
                         "endNs": w["endNs"] - t0, "triggerAtNs": None if at is None else at - t0})
        return lines, recs

    def _trigger_time(self, trace_id, w, m):
        """When the trigger fired: the trigger function's first call or the
        signal inside the window; else the window end less the post-roll."""
        trig = w.get("trigger") or ""
        lo, hi = w["startNs"], w["endNs"]
        if trig.startswith("symbol=") and lo < hi:
            name = trig[len("symbol="):].rpartition("!")[2]
            r = self.q("events.get", {"traceId": trace_id, "limit": 1,
                                      "filters": {"timeStartNs": lo, "timeEndNs": hi,
                                                  "functionNames": [name],
                                                  "eventTypes": ["functionCall"]}})
            if r["events"]:
                return r["events"][0]["timestampNs"]
        if trig == "crash" and lo < hi:
            r = self.q("events.get", {"traceId": trace_id, "limit": 1,
                                      "filters": {"timeStartNs": lo, "timeEndNs": hi,
                                                  "eventTypes": ["signalDelivery"]}})
            if r["events"]:
                return r["events"][0]["timestampNs"]
        cfg = (m.get("flightRecorder") or {}).get("config") or {}
        post = cfg.get("postRollNs")
        if isinstance(post, int) and hi - post >= lo:
            return hi - post
        return (lo + hi) // 2

    # ---- hot_functions -----------------------------------------------------

    def hot_functions(self, traceId, orderBy=None, limit=None, tokenBudget=None):
        budget = budget_of(tokenBudget)
        order = orderBy or "selfTimeNs"
        if order not in ORDER_BY:
            raise AnswerError(f"orderBy: must be one of {', '.join(ORDER_BY)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 1 <= limit <= PAGE_MAX):
            raise AnswerError(f"limit: must be an integer from 1 to {PAGE_MAX}")
        info = self._info(traceId)
        rows = self.q("functions.list", {"traceId": traceId, "orderBy": order,
                                         "limit": limit or HOT_LIMIT})["functions"]
        total = _called(rows, limit or HOT_LIMIT, info)
        ans = Answer(budget, f"trace {traceId}: {total} functions called, by {order}",
                     {"traceId": traceId, "functions": total, "orderBy": order})
        ans.fact("columns: name  self  total  calls  max  [module]  [file:line]")
        more = (f"raise limit (now {limit or HOT_LIMIT}) or tokenBudget; "
                "find_calls function=NAME for one function's calls")
        ans.section("functions", f"functions by {order}", [_fn_line(f, full=True) for f in rows],
                    rows, total=total, noun="functions", more=more)
        return ans.render()

    # ---- find_calls --------------------------------------------------------

    def find_calls(self, traceId, function=None, threadId=None, fromNs=None, toNs=None,
                   minDurationNs=None, cursor=None, tokenBudget=None):
        budget = budget_of(tokenBudget)
        info = self._info(traceId)
        t0 = info["timeStartNs"] or 0
        f = {}
        if function is not None:
            f["functionNames"] = [function]
        if threadId is not None:
            f["threadIds"] = [threadId]
        for key, v in (("timeStartNs", fromNs), ("timeEndNs", toNs)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise AnswerError(f"{'fromNs' if key == 'timeStartNs' else 'toNs'}: must be "
                                      "a non-negative integer (ns after the trace start)")
                f[key] = t0 + v
        if minDurationNs is not None:
            f["minDurationNs"] = minDurationNs
        proj = {"threadId": True, "depth": True, "endTimeNs": True}
        # a line is at least ~12 tokens: never fetch more than can be shown
        want = min(PAGE_MAX, budget // 12 + 1)
        base = {"traceId": traceId, "filters": f, "projection": proj}
        page = self.q("spans.list", dict(base, limit=want, **({"cursor": cursor} if cursor else {})))
        spans, meta = page["spans"], page["metadata"]
        regs = self._registers(traceId, spans, info["windows"])
        lines, recs = [], []
        for s in spans:
            a = regs.get((s["threadId"], s["startTimeNs"], "FunctionCall", s["functionName"]))
            r = regs.get((s["threadId"], s["endTimeNs"], "FunctionReturn", s["functionName"]))
            lines.append(f"#{s['spanId']} tid {s['threadId']} {rel(s['startTimeNs'], t0)} "
                         f"{dur(s['durationNs'])} d{s['depth']} {call_text(s['functionName'], a, r)}")
            rec = {"spanId": s["spanId"], "threadId": s["threadId"], "function": s["functionName"],
                   "startNs": s["startTimeNs"] - t0, "durationNs": s["durationNs"],
                   "depth": s["depth"]}
            if a is not None:
                rec["args"] = {k: a[k] for k in ARG_REGS if k in a}
            if r is not None:
                rec["returnValue"] = r.get("rax")
            recs.append(rec)
        after = meta["offset"]
        total_left = meta["totalCount"] - after
        cursors = {}

        def more(shown):
            if shown not in cursors:
                if shown == 0:  # not even one call fits: paging on would not progress
                    cursors[0] = "raise tokenBudget to see the next call"
                else:
                    nxt = self.q("spans.list", dict(base, limit=shown,
                                                    **({"cursor": cursor} if cursor else {})))
                    c = nxt["metadata"].get("nextCursor")
                    cursors[shown] = f"cursor={c}" if c else ""
            return cursors[shown]

        what = ", ".join(f"{k}={v}" for k, v in (("function", function), ("threadId", threadId),
                                                  ("fromNs", fromNs), ("toNs", toNs),
                                                  ("minDurationNs", minDurationNs)) if v is not None)
        ans = Answer(budget, f"trace {traceId}: {meta['totalCount']} calls"
                             f"{' where ' + what if what else ''}"
                             f"{f'; this page starts after {after}' if after else ''}",
                     {"traceId": traceId, "totalCount": meta["totalCount"], "offset": after})
        ans.fact("columns: #spanId tid start duration depth call(args) = return")
        ans.section("calls", "calls", lines, recs, total=total_left, noun="calls", more=more,
                    empty="none match", essential=True)
        return ans.render()

    def _registers(self, trace_id, spans, windows):
        """(tid, ts, eventType, function) → registers, for the spans' calls and
        returns that lie inside a flight-recorder window (elsewhere the trace
        keeps no registers)."""
        out = {}
        if not spans or not windows:
            return out
        lo = min(s["startTimeNs"] for s in spans)
        hi = max(s["endTimeNs"] for s in spans)
        tids = sorted({s["threadId"] for s in spans})
        fns = sorted({s["functionName"] for s in spans if s["functionName"]})
        for w in windows:
            a, b = max(lo, w["startNs"]), min(hi, w["endNs"])
            if a >= b or not fns:
                continue
            r = self.q("events.get", {"traceId": trace_id, "limit": PAGE_MAX,
                                      "filters": {"timeStartNs": a, "timeEndNs": b, "threadIds": tids,
                                                  "functionNames": fns,
                                                  "eventTypes": ["functionCall", "functionReturn"]},
                                      "projection": {"functionName": True, "args": True}})
            for e in r["events"]:
                if e.get("args"):
                    out[(e["threadId"], e["timestampNs"], e["eventType"], e["functionName"])] = e["args"]
        return out

    # ---- call_tree ---------------------------------------------------------

    def call_tree(self, traceId, spanId=None, threadId=None, atNs=None, depth=None,
                  cursor=None, tokenBudget=None):
        budget = budget_of(tokenBudget)
        if spanId is None and (threadId is None or atNs is None):
            raise AnswerError("give spanId (from find_calls), or threadId and atNs "
                              "(ns after the trace start)")
        if spanId is not None and (threadId is not None or atNs is not None):
            raise AnswerError("spanId excludes threadId and atNs")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise AnswerError("depth: must be an integer >= 1 (levels shown below the root)")
        info = self._info(traceId)
        t0 = info["timeStartNs"] or 0
        params = {"traceId": traceId}
        if spanId is not None:
            params["spanId"] = spanId
            where = f"call #{spanId}"
        else:
            if isinstance(atNs, bool) or not isinstance(atNs, int) or atNs < 0:
                raise AnswerError("atNs: must be a non-negative integer (ns after the trace start)")
            params.update(threadId=threadId, timeStartNs=t0 + atNs)
            where = f"thread {threadId} from {rel(t0 + atNs, t0)} (frames open then come first)"
        if depth is not None:
            params["maxDepth"] = depth
        if cursor:
            params["cursor"] = cursor
        first = self.q("calltree.get", dict(params, limit=min(PAGE_MAX, budget // 6 + 1)))
        lines = first["lines"]
        base = min((ln["depth"] for ln in lines), default=0)

        def build(page, more_after):
            ans = Answer(budget, f"trace {traceId}: call tree of {where}",
                         {"traceId": traceId, "spanId": spanId, "threadId": threadId,
                          "atNs": atNs, "traceStartNs": t0})
            ans.fact("replay: time duration [tid] | call; callees indented inside "
                     "`name() {` ... `}`; args and return values inside flight-recorder windows")
            recs = [dict(ln, timestampNs=ln["timestampNs"] - t0) for ln in page]
            ans.section("lines", "calls", [format_line(ln, t0, base) for ln in page], recs,
                        noun="lines", more=more_after, open_ended=bool(more_after),
                        empty="no calls there", essential=True)
            return ans.render()

        more0 = first["metadata"].get("nextCursor")
        probe = build(lines, f"cursor={more0}" if more0 else None)
        shown = probe.structured["lines"]["shown"]
        if shown == len(lines) and not more0:
            return probe
        # the engine pages at event boundaries (one event can close or reopen
        # several frames): take the largest page whose lines all fit, with its
        # own cursor, so that paging on misses no line
        target, m = shown, shown
        while m >= 1:
            page = self.q("calltree.get", dict(params, limit=m))
            n = len(page["lines"])
            if n <= target:
                nxt = page["metadata"].get("nextCursor")
                r = build(page["lines"], f"cursor={nxt}" if nxt else None)
                k = r.structured["lines"]["shown"]
                if k == n:
                    return r
                target, m = k, min(m - 1, k)  # its real cursor took more room
            else:
                m = min(m - 1, m - (n - target))
        # not even the first event's lines fit: a cursor would skip them
        return build(lines, "raise tokenBudget to see the next lines")

    # ---- flight_window -----------------------------------------------------

    def flight_window(self, traceId, window=None, tokenBudget=None):
        budget = budget_of(tokenBudget)
        info = self._info(traceId)
        m = self._manifest(traceId)
        t0 = info["timeStartNs"] or 0
        ws = info["windows"]
        if not ws:
            raise AnswerError(f"trace {traceId} has no flight-recorder windows: record it with a "
                              "trigger (lanetrace run -t symbol=NAME | crash | time=S)")
        i = 0 if window is None else window
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(ws):
            raise AnswerError(f"window: must be 0..{len(ws) - 1} (the trace has {len(ws)})")
        w = ws[i]
        at = self._trigger_time(traceId, w, m)
        lo, hi = w["startNs"], w["endNs"]
        f = {"timeStartNs": lo, "timeEndNs": hi} if lo < hi else {}
        before = 0
        if lo < at:  # calls before the trigger: centre the page on it
            before = self.q("events.get", {"traceId": traceId, "limit": 0, "filters": {
                "timeStartNs": lo, "timeEndNs": at, "eventTypes": ["functionCall"]}}
                            )["metadata"]["totalCount"]
        offset = max(0, before - PAGE_MAX // 2)
        page = self.q("spans.list", {"traceId": traceId, "filters": f, "offset": offset,
                                     "limit": PAGE_MAX,
                                     "projection": {"threadId": True, "depth": True}})
        spans = page["spans"]
        regs = self._registers(traceId, spans, [w])
        lines, recs, order, prio = [], [], [], []
        for s in spans:
            a = regs.get((s["threadId"], s["startTimeNs"], "FunctionCall", s["functionName"]))
            r = regs.get((s["threadId"], s["endTimeNs"], "FunctionReturn", s["functionName"]))
            lines.append(f"{rel(s['startTimeNs'], t0)} tid {s['threadId']} {dur(s['durationNs'])} "
                         f"{'  ' * min(s['depth'], 16)}{call_text(s['functionName'], a, r)}")
            recs.append({"spanId": s["spanId"], "threadId": s["threadId"],
                         "function": s["functionName"], "startNs": s["startTimeNs"] - t0,
                         "durationNs": s["durationNs"], "depth": s["depth"],
                         "args": {k: a[k] for k in ARG_REGS if k in a} if a else None,
                         "returnValue": r.get("rax") if r else None})
            order.append(s["spanId"])
            # calls that contain the trigger first, then the nearest ones
            prio.append(0 if s["startTimeNs"] <= at <= s["endTimeNs"]
                        else min(abs(s["startTimeNs"] - at), abs(s["endTimeNs"] - at)))
        rank = sorted(range(len(spans)), key=lambda j: (prio[j], order[j]))
        total = page["metadata"]["totalCount"]
        ans = Answer(budget, f"trace {traceId}: window {i} of {len(ws)}, trigger "
                             f"{w.get('trigger')} at {rel(at, t0)}",
                     {"traceId": traceId, "window": i, "trigger": w.get("trigger"),
                      "startNs": lo - t0, "endNs": hi - t0, "triggerAtNs": at - t0,
                      "calls": total})
        ans.fact(f"window {rel(lo, t0)}..{rel(hi, t0)} ({dur(hi - lo)}), {total} completed calls; "
                 "nearest to the trigger shown, in time order")
        ans.fact("columns: start tid duration call(args) = return, indented by depth")
        ans.section("calls", "calls around the trigger", [lines[j] for j in rank],
                    [recs[j] for j in rank], total=total, noun="calls",
                    more=f"raise tokenBudget, or find_calls traceId={traceId} "
                         f"fromNs={lo - t0} toNs={hi - t0}",
                    order=[order[j] for j in rank], empty="no completed calls in the window")
        return ans.render()

    # ---- diff_traces -------------------------------------------------------

    def _diff(self, a, b):
        """trace.diff, remembered for the last few pairs: an agent asks again
        with other budgets, and a diff reads both traces whole."""
        key = tuple((p, ix.fingerprint(p)) for p in (self._resolve(a, "traceIdA"),
                                                     self._resolve(b, "traceIdB")))
        with self._diff_lock:
            hit = self._diffs.get(key)
        if hit is None:
            hit = self.q("trace.diff", {"traceIdA": a, "traceIdB": b})
            with self._diff_lock:
                self._diffs[key] = hit
                while len(self._diffs) > DIFF_MEMO:
                    self._diffs.pop(next(iter(self._diffs)))
        return hit

    def diff_traces(self, traceIdA, traceIdB, tokenBudget=None):
        budget = budget_of(tokenBudget)
        d = self._diff(traceIdA, traceIdB)
        a, b = d["traceA"], d["traceB"]
        f = d["functions"]
        ans = Answer(budget, f"diff A={traceIdA} B={traceIdB}: "
                             f"{'same call structure' if d['identical'] else 'call structure differs'}",
                     {"traceIdA": traceIdA, "traceIdB": traceIdB, "identical": d["identical"]})
        for label, t in (("A", a), ("B", b)):
            ans.fact(f"{label}: {t['calls']} calls, {t['functions']} functions, {t['threads']} threads")
        for key, title, rows in (("onlyInB", "functions only in B", f["onlyInB"]),
                                 ("onlyInA", "functions only in A", f["onlyInA"])):
            ans.section(key, title, [f"{r['functionName']}: {r['calls']} calls, "
                                     f"{dur(r['totalTimeNs'])}" for r in rows], rows,
                        noun="functions")
        div = [t for t in d["threads"] if t["divergence"]]
        ans.section("divergences", "call paths that diverge (threads matched by start order)",
                    [_divergence_line(t) for t in div], div, noun="threads",
                    empty="none: every matched thread makes the same calls")
        ans.section("callsDelta", "call-count changes (A -> B)",
                    [f"{r['functionName']}: {r['callsA']} -> {r['callsB']} ({r['callsDelta']:+d})"
                     for r in f["byCallsDelta"]], f["byCallsDelta"], noun="functions")
        ans.section("timeDelta", "total-time changes (A -> B)",
                    [f"{r['functionName']}: {dur(r['totalTimeNsA'])} -> {dur(r['totalTimeNsB'])}"
                     for r in f["byTotalTimeDelta"]], f["byTotalTimeDelta"], noun="functions")
        um = d["unmatchedThreads"]
        if um["a"] or um["b"]:
            ans.fact(f"threads only in A: {um['a'] or 'none'}; only in B: {um['b'] or 'none'}")
        return ans.render()


# ---- helpers ---------------------------------------------------------------------

def budget_of(value) -> int:
    try:
        return check_budget(value)
    except ValueError as exc:
        raise AnswerError(str(exc)) from None


def _called(rows, limit, info) -> int:
    """Functions with calls: all of them when functions.list returned fewer
    than asked, else at most the trace's function count."""
    return len(rows) if len(rows) < limit else max(len(rows), info["functionCount"])


def _rpc_message(exc: RpcError) -> str:
    if exc.code == -32000:
        return (f"unknown trace {exc.data!r}: no trace.json and events.bin there "
                "(list_traces shows the trace ids)")
    msg = str(exc.data) if exc.data is not None else str(exc)
    if msg.startswith("cursor:"):
        msg += " (pass a cursor exactly as the previous answer gave it, with the same filters)"
    return msg


def lost_records(m: dict) -> int:
    """Records lost, by the manifest: agent drops plus writer drops (a
    duplicate written once is not a loss)."""
    n = 0
    if isinstance(m.get("drops"), dict):
        n += sum(v for v in m["drops"].values() if isinstance(v, int))
    if isinstance(m.get("writerDrops"), dict):
        n += sum(v for k, v in m["writerDrops"].items() if k != "duplicate" and isinstance(v, int))
    return n


def _ending(m: dict) -> str:
    sig = m.get("signal")
    if isinstance(sig, int) and sig:
        return f"killed by signal {sig}"
    if m.get("detached"):
        return "detached, still running"
    if m.get("exitCode") is not None:
        return f"exit code {m['exitCode']}"
    return "no end recorded (still running, or the capture was cut)"


def abnormal(m: dict, info: dict) -> list:
    out = []
    sig = m.get("signal")
    if isinstance(sig, int) and sig:
        out.append(f"the program died of signal {sig}")
    for key, text in (("unwoundCount", "frames closed by unwinding (longjmp or exception)"),
                      ("seqGaps", "records missing by sequence number"),
                      ("windowsShortened", "flight-recorder windows lost pre-roll to the memory budget"),
                      ("unknownFunctions", "records with an undefined function id")):
        v = m.get(key)
        if isinstance(v, int) and v:
            out.append(f"{v} {text}")
    if isinstance(m.get("drops"), dict):
        for reason, v in sorted(m["drops"].items()):
            if isinstance(v, int) and v:
                out.append(f"{v} records dropped: {reason}")
    calls, spans = m.get("callCount"), info.get("spanCount")
    if isinstance(calls, int) and isinstance(spans, int) and calls > spans:
        out.append(f"{calls - spans} calls never returned (open at trace end or unwound)")
    if m.get("complete") is False:
        out.append("the trace is incomplete (no TraceEnd)")
    return out


def _fn_line(f: dict, full=False) -> str:
    src = f" {os.path.basename(f['sourceFile'])}:{f['sourceLine']}" if f.get("sourceFile") else ""
    if not full:
        return (f"{f['functionName']}: self {dur(f['selfTimeNs'])}, total {dur(f['totalTimeNs'])}, "
                f"{f['calls']} calls{src}")
    mod = f" [{f['module']}]" if f.get("module") else ""
    return (f"{f['functionName']}  {dur(f['selfTimeNs'])}  {dur(f['totalTimeNs'])}  {f['calls']}  "
            f"{dur(f['maxDurationNs'])}{mod}{src}")


def _divergence_line(t: dict) -> str:
    d = t["divergence"]
    sides = []
    for side in ("a", "b"):
        s = d[side]
        sides.append(f"{side.upper()}: {s['call']} then {', '.join(s['after']) or '-'}"
                     if s["call"] else f"{side.upper()}: (no more calls)")
    before = ", ".join(d["before"]) or "-"
    return (f"thread #{t['index'] + 1} (A tid {t['threadIdA']}, B tid {t['threadIdB']}) at call "
            f"{d['callIndex'] + 1} after {before}; " + "; ".join(sides))
