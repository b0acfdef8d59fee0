"""``lanetrace export``: write a trace in another tool's format."""
from __future__ import annotations

import sys

from lanetrace.cli import CliError
from lanetrace.cli.argtypes import non_negative_int
from lanetrace.export.formats import FORMATS



def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trace to Perfetto, Chrome JSON, folded stacks, JSON lines "
        "or Parquet",
        description="Stream a trace into another tool's format, in bounded memory. "
        "Calls still open when the trace ends are closed at trace end and flagged "
        "(openAtTraceEnd); selective-persistence windows are marked in every format.")
    p.add_argument("trace_id", metavar="TRACE",
                   help="trace directory, or a path relative to --trace-root "
                   "(e.g. 20261121-101500-ab12/pid_4242)")
    p.add_argument("--format", "-f", required=True, choices=FORMATS + ("parquet",),
                   help="perfetto: protobuf for ui.perfetto.dev / trace_processor; "
                   "chrome: Trace Event JSON; folded: flamegraph.pl/speedscope/inferno "
                   "stacks; jsonl: one JSON object per event; parquet: the SQL tables "
                   "(calls, events, functions, threads) as files in the directory -o")
    p.add_argument("-o", "--output", required=True,
                   help="output file ('-' for stdout), or directory for parquet; "
                   "written atomically")
    p.add_argument("--trace-root", default="traces", help="root of trace ids (default: ./traces)")
    p.add_argument("--time-start", type=non_negative_int("an integer number of ns"), metavar="NS",
                   help="export only from this CLOCK_MONOTONIC time (ns, inclusive); "
                   "slices crossing it are clipped and flagged clippedStart")
    p.add_argument("--time-end", type=non_negative_int("an integer number of ns"), metavar="NS",
                   help="export only up to this time (ns, inclusive); slices crossing it "
                   "are clipped and flagged clippedEnd")
    p.add_argument("--split-mb", type=float, metavar="MB",
                   help="chrome: start a new self-contained part file (NAME.partNNN.json) "
                   "each time a part exceeds MB megabytes")
    p.add_argument("--weight", choices=("time", "calls"), default="time",
                   help="folded: self time in ns (default) or number of calls")
    p.add_argument("--per-thread", action="store_true",
                   help="folded: put each thread's stacks under a root frame for the thread")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show a progress bar on stderr")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="never show a progress bar (default: only on a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lanetrace.export.run import ExportError, ExportOptions, export_trace
    from lanetrace.export.tracedir import TraceNotFound, resolve_trace
    try:
        trace_dir = resolve_trace(args.trace_id, args.trace_root)
    except TraceNotFound as exc:
        raise CliError(str(exc)) from None
    if args.format == "parquet":
        return _run_parquet(args, trace_dir)
    if args.format == "perfetto" and args.output == "-" and sys.stdout.isatty():
        raise CliError("refusing to write binary Perfetto data to a terminal; use -o FILE")
    options = ExportOptions(time_start=args.time_start, time_end=args.time_end,
                            split_mb=args.split_mb, weight=args.weight,
                            per_thread=args.per_thread, progress=args.progress)
    try:
        stats = export_trace(trace_dir, args.format, args.output, options)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    files = ", ".join(stats.files)
    notes = []
    if stats.open_at_end:
        notes.append(f"{stats.open_at_end} open at trace end, closed and flagged")
    if stats.unmatched_returns:
        notes.append(f"{stats.unmatched_returns} returns without a recorded call skipped")
    if stats.clamped_timestamps:
        notes.append(f"{stats.clamped_timestamps} timestamps earlier than their thread's "
                     "previous event raised to it")
    if stats.torn_tail_bytes:
        notes.append(f"a torn last frame of {stats.torn_tail_bytes} bytes cut (the writer "
                     "stopped mid-append)")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"wrote {files}: {stats.events} events, {stats.slices} slices, "
          f"{stats.threads} threads, {stats.bytes_written} bytes{extra}", file=sys.stderr)
    return 0


def _run_parquet(args, trace_dir) -> int:
    from lanetrace.export.parquet import ParquetExportError, export_parquet

    other = [flag for flag, v in (("--time-start", args.time_start), ("--time-end", args.time_end),
                                  ("--split-mb", args.split_mb), ("--per-thread", args.per_thread),
                                  ("--weight", args.weight != "time")) if v]
    if other:
        raise CliError(f"{', '.join(other)}: not applicable to the parquet format")
    if args.output == "-":
        raise CliError("parquet writes a directory of files: give -o DIR")
    try:
        r = export_parquet(trace_dir, args.output)
    except ParquetExportError as exc:
        raise CliError(str(exc)) from None
    rows = ", ".join(f"{k} {v}" for k, v in r["rows"].items())
    print(f"wrote {args.output}: {rows} rows, {r['bytesWritten']} bytes", file=sys.stderr)
    return 0
