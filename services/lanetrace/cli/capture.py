"""``lanetrace run`` and ``lanetrace attach``: capture a trace.

Everything a user can get wrong is checked before any process starts, so a
mistake costs nothing and gets one specific message.

supervisord and the injector are started before anything heavy is imported here: ZeroMQ (the
status line), protobuf (the manifest) and the XML-RPC client load while the
services start, not before."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time

import orjson

from lanetrace.cli import CliError, flightopts, human
from lanetrace.cli.argtypes import int_range, positive_float
from lanetrace.cli.maintenance import remove_session_segments
from lanetrace.core.deferred import preload
from lanetrace.core.ringpolicy import DEFAULT_BLOCK_TIMEOUT_MS, DEFAULT_RING_BUDGET_MB
from lanetrace.core.rundir import RunDir, default_run_dir, new_session_id
from lanetrace.core.selection import Selection, SelectionError
from lanetrace.core.stdio import StdioServer
from lanetrace.supervise.session import (InjectorProcess, SessionConfig, SessionError, Supervisor,
                                        remove_run_dir)

CLI_START_NS = time.monotonic_ns()  # the origin of session.json "timings"


def register(sub) -> None:
    run = sub.add_parser("run", help="spawn a program and trace it",
                         description="Spawn PROGRAM under the tracer and exit with its exit status.")
    _add_capture_options(run)
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]",
                     help="the program to run, after --")
    run.set_defaults(func=cmd_run)

    attach = sub.add_parser("attach", help="attach to running processes and trace them",
                            description="Attach to one or more running processes; stop with "
                            "--duration or Ctrl-C, which detaches and leaves them running.")
    _add_capture_options(attach)
    attach.add_argument("pids", nargs="+", metavar="PID", help="process ids to attach to")
    attach.set_defaults(func=cmd_attach)


def _add_capture_options(p: argparse.ArgumentParser) -> None:
    sel = p.add_argument_group("hook selection (default: every function with a symbol "
                               "in the main executable)")
    sel.add_argument("-i", "--include", action="append", default=[], metavar="[MODULE!]FUNCTION",
                     help="hook functions matching this glob (repeatable)")
    sel.add_argument("-x", "--exclude", action="append", default=[], metavar="[MODULE!]FUNCTION",
                     help="do not hook functions matching this glob (repeatable)")
    sel.add_argument("-I", "--include-module", action="append", default=[], metavar="MODULE",
                     help="hook every function of modules matching this glob (repeatable)")
    sel.add_argument("-X", "--exclude-module", action="append", default=[], metavar="MODULE",
                     help="hook nothing in modules matching this glob (repeatable)")
    p.add_argument("-o", "--output", default="traces", metavar="DIR",
                   help="trace root directory (default: ./traces)")
    p.add_argument("--duration", type=positive_float, metavar="SECONDS",
                   help="stop after this long: detach from attached targets, end spawned ones")
    add_pipeline_options(p)
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stderr instead of text (stdout is the "
                        "traced program's alone); no progress lines")
    p.add_argument("--json-out", metavar="FILE",
                   help="also write the summary as JSON to FILE")
    p.add_argument("--follow-children", action="store_true",
                   help="also trace the processes the target forks and execs, each in its "
                        "own pid_<pid> trace (session.json records the process tree)")
    flightopts.add_flight_options(p)


def _selection(args) -> Selection:
    sel = Selection(args.include, args.exclude, args.include_module, args.exclude_module)
    try:
        return sel.validate()
    except SelectionError as exc:
        raise CliError(str(exc)) from None


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Sizing of the capture pipeline, shared by run/attach and daemon start."""
    p.add_argument("--drainers", type=int_range(1, 16), default=2, metavar="N",
                   help="drainer processes, one per registry shard (default 2)")
    p.add_argument("--slots", type=int_range(1, 4096), default=64, metavar="N",
                   help="thread slots per target: threads alive at once (default 64)")
    # 256 KiB rings x 8 = 2 MiB per busy thread: a burst of ~64k records (a few
    # ms of a hot thread) fits before the first drained ring comes back.
    # Shared memory is touched lazily, so idle slots cost nothing.
    p.add_argument("--ring-kb", type=int_range(4, 65536), default=256, metavar="KB",
                   help="size of one ring in KiB (default 256)")
    p.add_argument("--rings-per-lane", type=int_range(2, 64), default=8, metavar="N",
                   help="rings in each thread's pool (default 8)")
    # A thread whose own rings all wait for the drainer borrows from a shared
    # reserve of the target; untouched pages cost nothing (tmpfs), so the
    # default can hold ~30 M events (about a second of the hottest thread)
    # that the drainers have not caught up with yet.
    p.add_argument("--ring-budget-mb", type=int_range(0, 65536), default=DEFAULT_RING_BUDGET_MB,
                   metavar="MB",
                   help="shared memory per target that busy threads may borrow extra rings "
                        f"from when their own are full (default {DEFAULT_RING_BUDGET_MB}; 0 = none)")
    p.add_argument("--no-drop", action="store_true",
                   help="when a thread finds no free ring, it waits for one (the program runs "
                        "slower, the trace is complete) instead of dropping the event; after "
                        "--block-timeout-ms it drops and counts blocked_timeout")
    p.add_argument("--block-timeout-ms", type=positive_float, default=DEFAULT_BLOCK_TIMEOUT_MS,
                   metavar="MS",
                   help=f"with --no-drop, the longest a thread waits for a ring "
                        f"(default {DEFAULT_BLOCK_TIMEOUT_MS:g})")
    p.add_argument("--inline-symbols", action="store_true",
                   help="write every base ATF V4 field into each call and return (event id, "
                        "timestamp, symbol, address) for readers that know only those; "
                        "about 25 more bytes per event plus the name")


def ring_policy_spec(args) -> dict:
    """The spec keys of the ring budget and drop policy options."""
    return {"ringBudgetBytes": args.ring_budget_mb << 20, "noDrop": args.no_drop,
            "blockTimeoutMs": args.block_timeout_ms}


def resolve_program(program: list[str]) -> list[str]:
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        raise CliError("no program given: lanetrace run [OPTIONS] -- PROGRAM [ARGS...]")
    path = _find_executable(program[0])
    return resolve_script([path, *program[1:]])


def _find_executable(name: str, via: str = "") -> str:
    if "/" in name:
        path = os.path.abspath(name)
        if not os.path.exists(path):
            raise CliError(f"program not found: {name}{via}")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise CliError(f"program is not executable: {name}{via}")
        return path
    path = shutil.which(name)
    if path is None:
        raise CliError(f"program not found: {name} (not in PATH){via}")
    return path


MAX_INTERPRETER_DEPTH = 4  # as the kernel's binfmt_script allows


def resolve_script(argv: list[str]) -> list[str]:
    """A script (``#!``) is traced as its interpreter, started the way the
    kernel would start it: ``INTERPRETER [ARG] SCRIPT ARGS...``, with
    ``#!/usr/bin/env NAME`` looked up in PATH. Frida spawns only native
    executables, and the interpreter is the program that runs."""
    script = argv[0]
    for _ in range(MAX_INTERPRETER_DEPTH):
        line = _shebang(argv[0])
        if line is None:
            if argv[0] != script:
                print(f"lanetrace: {script} is a script: tracing its interpreter {argv[0]}",
                      file=sys.stderr)
            return argv
        parts = line.split(None, 1)
        if not parts:
            raise CliError(f"{argv[0]} starts with '#!' but names no interpreter; "
                           f"run its interpreter yourself: lanetrace run -- INTERPRETER {argv[0]}")
        interpreter, arg = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        via = f" (the interpreter of the script {argv[0]})"
        if os.path.basename(interpreter) == "env" and arg:
            words = arg.split()
            if words[0] == "-S":
                words = words[1:]
            if not words or words[0].startswith("-") or "=" in words[0]:
                raise CliError(f"{argv[0]} starts with '#!{line}', which lanetrace cannot "
                               f"resolve; run the interpreter yourself: "
                               f"lanetrace run -- INTERPRETER {argv[0]}")
            argv = [_find_executable(words[0], via), *words[1:], *argv]
        else:
            argv = [_find_executable(interpreter, via), *([arg] if arg else []), *argv]
    raise CliError(f"{script}: more than {MAX_INTERPRETER_DEPTH} levels of '#!' interpreters")


def _shebang(path: str) -> str | None:
    """The interpreter line of a script, or None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        raise CliError(f"cannot read program {path}: {exc.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()


def check_pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise CliError(f"not a process id: {text!r}") from None
    if pid <= 0:
        raise CliError(f"not a process id: {text!r}")
    if pid == os.getpid():
        raise CliError(f"pid {pid} is lanetrace itself")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CliError(f"no such process: {pid}") from None
    except PermissionError:
        raise CliError(f"not permitted to trace pid {pid}: it belongs to another user "
                       "(run lanetrace as that user or as root)") from None
    return pid


def prepare_output(root: str, session_id: str) -> str:
    root = os.path.abspath(root)
    session_dir = os.path.join(root, session_id)
    try:
        os.makedirs(session_dir, exist_ok=False)
    except OSError as exc:
        raise CliError(f"cannot write traces to {root}: {exc.strerror}") from None
    if not os.access(session_dir, os.W_OK):
        raise CliError(f"cannot write traces to {root}: not writable")
    return root


def cmd_run(args) -> int:
    argv = resolve_program(args.program)
    spec = {"spawn": {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}}
    return capture(args, spec)


def cmd_attach(args) -> int:
    pids = []
    for text in args.pids:
        pid = check_pid(text)
        if pid in pids:
            raise CliError(f"pid {pid} given twice")
        pids.append(pid)
    return capture(args, {"attach": pids})


def check_json_out(path: str | None) -> None:
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"cannot write the summary to {path}: it is a directory")
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise CliError(f"cannot write the summary to {path}: "
                       f"{directory} is not a writable directory")


def capture(args, target_spec: dict) -> int:
    selection = _selection(args)
    check_json_out(args.json_out)
    flight = flightopts.flight_spec(args)
    session_id = new_session_id()
    trace_root = prepare_output(args.output, session_id)
    session_dir = os.path.join(trace_root, session_id)
    run_dir = RunDir(default_run_dir(session_id)).create()
    spec = {
        "sessionId": session_id, "traceRoot": trace_root, "drainers": args.drainers,
        "selection": selection.to_agent(), "duration": args.duration, "slots": args.slots,
        "ringBytes": args.ring_kb * 1024, "ringsPerLane": args.rings_per_lane,
        **ring_policy_spec(args), "flight": flight, "followChildren": args.follow_children, **target_spec,
    }
    stdio = None
    if "spawn" in target_spec:
        # the target writes to the caller's own stdout/stderr (lanetrace.core.stdio)
        stdio = StdioServer(run_dir.file("stdio.sock"))
        spec["stdioSocket"] = stdio.path
    spec_path = run_dir.file("spec.json")
    with open(spec_path, "wb") as f:
        f.write(orjson.dumps(spec))
    # supervisord runs the services; the injector is started next to it
    # (lanetrace.supervise.session), so no injector program in its config
    cfg = SessionConfig(run_dir=run_dir, session_id=session_id, trace_root=trace_root,
                        drainers=args.drainers, inline_symbols=args.inline_symbols)
    supervisor = Supervisor(cfg)
    injector = InjectorProcess(run_dir, session_id, spec_path)
    started = time.time()
    timings = {"cliStart": CLI_START_NS}
    interrupted = []

    def on_interrupt(signum, frame):
        # First Ctrl-C: stop tracing in order; the trace is still finalized.
        if not interrupted:
            print("\nlanetrace: stopping (finishing the trace; Ctrl-C again to abort)",
                  file=sys.stderr)
            injector.stop()
            interrupted.append(signum)
        else:
            raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, on_interrupt)
    old_term = signal.signal(signal.SIGTERM, on_interrupt)
    result = None
    failed = True
    status = None
    try:
        injector.start()
        supervisor.start()
        timings["supervisordUp"] = time.monotonic_ns()
        if flightopts.describe(flight):
            print(flightopts.describe(flight), file=sys.stderr)
        if not args.json:
            from lanetrace.cli.status import StatusLine
            status = StatusLine(run_dir.broker_sub)
        # result.json is the injector's last act (written whole, then renamed):
        # the services stop while it tears Frida down
        result_path = run_dir.file("result.json")
        injector.wait(on_tick=status.tick if status else None,
                      finished=lambda: os.path.exists(result_path))
        timings["injectorExited"] = time.monotonic_ns()
        preload("lanetrace.core.atf")  # for the summary, while the services stop
        if os.path.exists(result_path):
            with open(result_path, "rb") as f:
                result = orjson.loads(f.read())
        failed = not result or bool(result.get("error"))
    except SessionError as exc:
        raise CliError(str(exc), status=1) from None
    finally:
        if status is not None:
            status.close()
        if stdio is not None:
            stdio.close()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        injector.stop()
        supervisor.shutdown()
        injector.reap()
        remove_run_dir(run_dir, keep_logs_in=session_dir if failed else None)
        remove_session_segments(session_id)
        timings["servicesStopped"] = time.monotonic_ns()
    if result is None:
        raise CliError(f"the injector ended without a result; logs are in {session_dir}/logs",
                       status=1)
    result.setdefault("timings", {}).update(timings)
    write_session_file(session_dir, spec, result, started)
    if result.get("error"):
        raise CliError(result["error"], status=1)
    summary = summarize(result)
    if args.json_out:
        write_json_summary(args.json_out, summary)
    print_summary(summary, as_json=args.json)
    return exit_status(result, target_spec)


def write_session_file(session_dir: str, spec: dict, result: dict, started: float) -> None:
    from lanetrace.core import atf
    session = {
        "sessionId": spec["sessionId"], "startedAt": started, "endedAt": time.time(),
        "options": {k: spec[k] for k in ("selection", "duration", "drainers", "slots",
                                         "ringBytes", "ringsPerLane")},
        "targets": result.get("targets", []), "error": result.get("error", ""),
        "timings": result.get("timings", {}),
        "processTree": [{"pid": t["pid"], "parentPid": t.get("parentPid")}
                        for t in result.get("targets", [])],
    }
    atf.write_json_atomic(os.path.join(session_dir, "session.json"), session)


def summarize(result: dict) -> dict:
    from lanetrace.core import atf
    targets = []
    for t in result["targets"]:
        entry = {"pid": t["pid"], "program": " ".join(t["argv"]) or "?", "traceDir": t["traceDir"],
                 "exitCode": t["exitCode"], "signal": t["signal"], "detached": t["detached"],
                 "endReason": t.get("endReason", ""),
                 "error": t.get("error", "")}
        try:
            manifest = atf.read_manifest(t["traceDir"])
        except atf.TraceFormatError as exc:
            entry["error"] = entry["error"] or str(exc)
            manifest = {}
        entry["events"] = manifest.get("eventCount", 0)
        entry["threads"] = manifest.get("threadCount", 0)
        t0, t1 = manifest.get("timeStartNs"), manifest.get("timeEndNs")
        entry["durationNs"] = t1 - t0 if isinstance(t0, int) and isinstance(t1, int) else None
        entry["drops"] = {k: v for k, v in (manifest.get("drops") or {}).items() if v}
        entry["dropsByThread"] = manifest.get("dropsByThread") or []
        entry["flight"] = flightopts.summary_lines(manifest)
        entry["topFunctions"] = (manifest.get("topFunctions") or [])[:10]
        entry["hooks"] = manifest.get("hooks") or t.get("hooks") or {}
        targets.append(entry)
    return {"sessionId": result["sessionId"], "traceRoot": result["traceRoot"], "targets": targets}


def write_json_summary(path: str, summary: dict) -> None:
    try:
        with open(path, "wb") as f:
            f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:  # the trace is written; only the copy is missing
        print(f"lanetrace: cannot write the summary to {path}: {exc.strerror}", file=sys.stderr)


def print_summary(summary: dict, as_json: bool) -> None:
    out = sys.stderr  # stdout belongs to the traced program's output
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode(), file=out)
        return
    print(f"\nlanetrace session {summary['sessionId']}", file=out)
    for t in summary["targets"]:
        if t["detached"]:
            how = "detached, still running"
        elif t.get("endReason") == "process-replaced":
            ended = ("its end was not observed" if t["exitCode"] is None and not t["signal"]
                     else f"then killed by {_signame(t['signal'])}" if t["signal"]
                     else f"then exit code {t['exitCode']}")
            how = ("replaced its program with exec; the new program ran untraced "
                   f"(--follow-children traces it), {ended}")
        elif t["signal"]:
            how = f"killed by {_signame(t['signal'])}"
        else:
            how = f"exit code {t['exitCode']}"
        drops = ", ".join(f"{k}={v}" for k, v in sorted(t["drops"].items())) or "none"
        print(f"  pid {t['pid']} ({t['program']}): {how}", file=out)
        span = f" over {human.duration(t['durationNs'])}" if t.get("durationNs") is not None else ""
        print(f"    events recorded: {t['events']} on {t['threads']} threads{span}; drops: {drops}",
              file=out)
        for d in t.get("dropsByThread", [])[:10]:
            print(f"      dropped on tid {d.get('tid')} ({d.get('lane')} lane, "
                  f"{d.get('reason')}): {d.get('count')}", file=out)
        for line in t.get("flight", []):
            print(line, file=out)
        if t.get("hooks"):
            print(f"    {hooks_line(t['hooks'])}", file=out)
        print(f"    trace: {t['traceDir']}", file=out)
        if t["error"]:
            print(f"    problem: {t['error']}", file=out)
        if t["topFunctions"]:
            print("    most-called functions:", file=out)
            for fn in t["topFunctions"]:
                print(f"      {fn['calls']:>10}  {fn['name']}  ({fn.get('module', '')})", file=out)


def hooks_line(hooks: dict) -> str:
    """'hooks: 1329 fast, 39 fallback (unrelocatable 39), 2 skipped (...)':
    every selected function is in one of the three, with the reasons."""
    def by_reason(counts: dict) -> str:
        return f" ({', '.join(f'{r} {n}' for r, n in counts.items())})" if counts else ""
    return (f"hooks: {hooks.get('fast', 0)} fast, {hooks.get('fallback', 0)} fallback"
            f"{by_reason(hooks.get('fallbackByReason') or {})}, {hooks.get('skipped', 0)} skipped"
            f"{by_reason(hooks.get('skippedByReason') or {})}; the list is in trace.json")


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def exit_status(result: dict, target_spec: dict) -> int:
    """``run`` exits like its target (128+N for a signal, as a shell does)."""
    if "spawn" not in target_spec or not result["targets"]:
        return 0
    t = result["targets"][0]
    if t["signal"]:
        return 128 + int(t["signal"])
    return int(t["exitCode"] or 0)
