"""The MCP server: the tools of docs/mcp.md over stdio, on the official SDK.

Each tool answers with compact text sized to its ``tokenBudget`` and the
same records as ``structuredContent``. Bad input is a tool error (the call
returns ``isError`` with the reason), never a crash of the server.
"""
import functools
import os
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from lanetrace import __version__
from lanetrace.mcp import capture
from lanetrace.mcp.answers import AnswerError, Answers, budget_of

CAPTURE_TOOLS = ("run_trace", "attach_trace")

INSTRUCTIONS = """\
lanetrace records every call and return of a program's functions, per thread.
Start with list_traces, then trace_summary; drill down with hot_functions,
find_calls (page with its cursor), call_tree (replay text), flight_window (arguments and
return values around a trigger) and diff_traces (failing run vs passing run).
Every answer fits tokenBudget (default 2000, 200..20000) and says what it left
out and how to get it. Times are relative to the trace start: +1.25s, and the
fromNs/toNs/atNs parameters count nanoseconds from that start."""

TraceId = Annotated[str, Field(description="trace id: the trace directory relative to the trace "
                                           "root, as list_traces shows it")]
Budget = Annotated[int | None, Field(description="answer size limit in tokens, 200..20000 "
                                                 "(default 2000)")]
Ns = Annotated[int | None, Field(description="nanoseconds after the trace start")]


class _Server(MCPServer):
    """Hides the capture tools from tools/list unless capture is allowed; a
    call to one still gets a clear tool error rather than 'unknown tool'."""

    def __init__(self, *args, hidden=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._hidden = set(hidden)

    async def list_tools(self):
        return [t for t in await super().list_tools() if t.name not in self._hidden]


def _result(rendered) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=rendered.text)],
                          structured_content=rendered.structured)


def build_server(trace_root: str, allow_capture: bool = False) -> MCPServer:
    root = os.path.realpath(trace_root)
    answers = Answers(root)
    server = _Server("lanetrace", instructions=INSTRUCTIONS, version=__version__,
                     log_level="WARNING", hidden=() if allow_capture else CAPTURE_TOOLS)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def tool(fn=None, *, annotations=read_only, note=""):
        def register(fn):
            @functools.wraps(fn)
            def call(**kwargs):
                try:
                    return _result(fn(**kwargs))
                except (AnswerError, capture.CaptureError) as exc:
                    raise ToolError(str(exc)) from None
            server.add_tool(call, name=fn.__name__, description=(fn.__doc__ or "") + note,
                            annotations=annotations, structured_output=False)
            return fn
        return register(fn) if fn else register

    @tool
    def list_traces(tokenBudget: Budget = None):
        """The traces under the trace root, newest first: id, program, pid,
        events, duration, records lost."""
        return answers.list_traces(tokenBudget)

    @tool
    def trace_summary(traceId: TraceId, tokenBudget: Budget = None):
        """What to read first about a trace: program and how it ended, duration,
        threads, event and drop counts, anything abnormal (signal, unwound
        frames, lost records), the hottest functions by self time, and the
        flight-recorder windows with what triggered them."""
        return answers.trace_summary(traceId, tokenBudget)

    @tool
    def hot_functions(traceId: TraceId,
                      orderBy: Annotated[str | None, Field(
                          description="selfTimeNs (default), totalTimeNs or calls")] = None,
                      limit: Annotated[int | None, Field(
                          description="at most this many functions (default 100)")] = None,
                      tokenBudget: Budget = None):
        """Per-function calls, self and total time, longest call, module and
        source file:line, highest first."""
        return answers.hot_functions(traceId, orderBy, limit, tokenBudget)

    @tool
    def find_calls(traceId: TraceId,
                   function: Annotated[str | None, Field(description="exact function name")] = None,
                   threadId: Annotated[int | None, Field(description="thread id (tid)")] = None,
                   fromNs: Ns = None, toNs: Ns = None,
                   minDurationNs: Annotated[int | None, Field(
                       description="only calls at least this long (ns)")] = None,
                   cursor: Annotated[str | None, Field(
                       description="the cursor a previous answer gave, with the same filters")] = None,
                   tokenBudget: Budget = None):
        """Matching calls in time order (span id, thread, start, duration, depth),
        with argument registers and return value where the flight recorder kept
        them. Calls inside [fromNs, toNs] only. Page on with the cursor the
        answer gives."""
        return answers.find_calls(traceId, function, threadId, fromNs, toNs, minDurationNs,
                                  cursor, tokenBudget)

    @tool
    def call_tree(traceId: TraceId,
                  spanId: Annotated[int | None, Field(
                      description="a call's span id (the #N of find_calls): its subtree")] = None,
                  threadId: Annotated[int | None, Field(
                      description="with atNs: that thread's calls from that time on")] = None,
                  atNs: Ns = None,
                  depth: Annotated[int | None, Field(
                      description="levels shown; deeper calls fold into their caller's line")] = None,
                  cursor: Annotated[str | None, Field(
                      description="the cursor a previous call_tree answer gave")] = None,
                  tokenBudget: Budget = None):
        """The call tree at a point, as replay text (like uftrace replay): one
        line per call with its duration and thread, callees indented under
        `name() {` ... `}`, arguments and return values inside flight-recorder
        windows. Give spanId, or threadId and atNs."""
        return answers.call_tree(traceId, spanId, threadId, atNs, depth, cursor, tokenBudget)

    @tool
    def flight_window(traceId: TraceId,
                      window: Annotated[int | None, Field(
                          description="window number, 0 first (default 0)")] = None,
                      tokenBudget: Budget = None):
        """The calls inside a flight-recorder window, with their argument
        registers and return values: those nearest the trigger first, shown in
        time order and indented by depth."""
        return answers.flight_window(traceId, window, tokenBudget)

    @tool
    def diff_traces(traceIdA: Annotated[str, Field(description="trace id of one run (e.g. failing)")],
                    traceIdB: Annotated[str, Field(description="trace id of the other run")],
                    tokenBudget: Budget = None):
        """What differs between two runs: functions only one of them calls,
        where each thread's call sequence first diverges, and the largest
        call-count and time changes."""
        return answers.diff_traces(traceIdA, traceIdB, tokenBudget)

    capture_note = "" if allow_capture else "\n(disabled: the server runs without --allow-capture)"
    capturing = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)

    def _require_capture(name):
        if not allow_capture:
            raise AnswerError(f"{name} is disabled: this server is read-only; start it with "
                              "`lanetrace mcp --trace-root DIR --allow-capture` to let it run "
                              "and attach to programs")

    def _captured(summary, command, tokenBudget):
        targets = summary.get("targets") or []
        if not targets:
            raise AnswerError(f"{command} recorded no trace (exit status {summary['status']})")
        t = targets[0]
        trace_id = os.path.relpath(t["traceDir"], root)
        lead = [f"captured: lanetrace {command}; exit status {summary['status']}"
                + (f"; error: {t['error']}" if t.get("error") else "")]
        out = summary.get("stdout", "").strip().splitlines()
        if out:
            lead.append(f"program output (last {min(3, len(out))} of {len(out)} lines): "
                        + " | ".join(line[:160] for line in out[-3:]))
        if len(targets) > 1:
            lead.append("other traces of this session: " + ", ".join(
                os.path.relpath(x["traceDir"], root) for x in targets[1:]))
        return answers.trace_summary(trace_id, tokenBudget, lead=lead)

    @tool(annotations=capturing, note=capture_note)
    def run_trace(argv: Annotated[list[str], Field(description="program and arguments")],
                  include: Annotated[list[str] | None, Field(
                      description="[MODULE!]FUNCTION globs to hook (default: the executable's functions)")] = None,
                  exclude: Annotated[list[str] | None, Field(
                      description="[MODULE!]FUNCTION globs not to hook")] = None,
                  triggers: Annotated[list[str] | None, Field(
                      description="flight-recorder triggers: symbol=NAME, crash, time=S")] = None,
                  durationSec: Annotated[float | None, Field(
                      description="stop the program after this many seconds")] = None,
                  tokenBudget: Budget = None):
        """Run a program under lanetrace (`lanetrace run`), then answer with its
        exit status and its trace_summary."""
        _require_capture("run_trace")
        budget = budget_of(tokenBudget)
        args = capture.run_args(root, argv, include, exclude, triggers, durationSec)
        timeout = (durationSec + 120) if durationSec else capture.RUN_TIMEOUT_SEC
        return _captured(capture.capture(args, timeout), "run", budget)

    @tool(annotations=capturing, note=capture_note)
    def attach_trace(pid: Annotated[int, Field(description="process id")],
                     durationSec: Annotated[float, Field(description="how long to trace, seconds")],
                     include: Annotated[list[str] | None, Field(
                         description="[MODULE!]FUNCTION globs to hook")] = None,
                     tokenBudget: Budget = None):
        """Attach to a running process for durationSec (`lanetrace attach`),
        detach leaving it running, then answer with its trace_summary."""
        _require_capture("attach_trace")
        budget = budget_of(tokenBudget)
        args = capture.attach_args(root, pid, include, durationSec)
        return _captured(capture.capture(args, durationSec + 120), "attach", budget)

    server.answers = answers
    return server


def serve(trace_root: str, allow_capture: bool = False) -> None:
    server = build_server(trace_root, allow_capture)
    try:
        server.run("stdio")
    finally:
        server.answers.close()
