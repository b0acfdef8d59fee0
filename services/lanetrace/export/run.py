"""``export_trace``: one streaming pass over a trace into one output format."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lanetrace.core import atf
from lanetrace.export.chrome import ChromeSink
from lanetrace.export.formats import FORMATS
from lanetrace.export.folded import WEIGHTS, FoldedSink
from lanetrace.export.frames import SliceTracker
from lanetrace.export.jsonl import JsonlSink
from lanetrace.export.output import AtomicOutput, OutputError, Progress
from lanetrace.export.perfetto import PerfettoSink
from lanetrace.export.reader import stream_events
from lanetrace.export.tracedir import read_meta



class ExportError(Exception):
    """Bad options, an unreadable trace or an unwritable output."""


@dataclass
class ExportOptions:
    time_start: int | None = None   # ns, inclusive
    time_end: int | None = None     # ns, inclusive
    split_mb: float | None = None   # chrome only
    weight: str = "time"            # folded only: "time" | "calls"
    per_thread: bool = False        # folded only: a root frame per thread
    progress: bool | None = None    # None: when stderr is a TTY

    def validate(self, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
        for name in ("time_start", "time_end"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ExportError(f"{name.replace('_', '-')} must be a non-negative integer (ns)")
        if self.time_start is not None and self.time_end is not None \
                and self.time_start >= self.time_end:
            raise ExportError("time-start must be before time-end")
        if self.split_mb is not None:
            if fmt != "chrome":
                raise ExportError("split-mb applies to the chrome format only")
            if not (self.split_mb > 0 and math.isfinite(self.split_mb)):
                raise ExportError("split-mb must be a positive number")
        if self.weight not in WEIGHTS:
            raise ExportError(f"unknown weight {self.weight!r} (choose from {', '.join(WEIGHTS)})")
        if fmt != "folded" and (self.weight != "time" or self.per_thread):
            raise ExportError("weight and per-thread apply to the folded format only")


@dataclass
class ExportStats:
    format: str
    files: list[str] = field(default_factory=list)
    bytes_written: int = 0
    events: int = 0
    slices: int = 0
    threads: int = 0
    open_at_end: int = 0
    unmatched_returns: int = 0
    clamped_timestamps: int = 0
    windows: int = 0
    torn_tail_bytes: int = 0  # a last frame cut short by a writer killed mid-append

    def to_dict(self) -> dict:
        return {"format": self.format, "files": self.files, "bytesWritten": self.bytes_written,
                "events": self.events, "slices": self.slices, "threads": self.threads,
                "openAtTraceEnd": self.open_at_end, "unmatchedReturns": self.unmatched_returns,
                "clampedTimestamps": self.clamped_timestamps, "windows": self.windows,
                "tornTailBytes": self.torn_tail_bytes}


def export_trace(trace_dir: str, fmt: str, out_path: str,
                 options: ExportOptions | None = None) -> ExportStats:
    """Export the trace in ``trace_dir`` as ``fmt`` to ``out_path`` ("-" for
    stdout). Raises ExportError; nothing is left at ``out_path`` on failure."""
    options = options or ExportOptions()
    options.validate(fmt)
    try:
        meta = read_meta(trace_dir)
    except atf.TraceFormatError as exc:
        raise ExportError(str(exc)) from None
    outputs = []
    try:
        if fmt == "chrome":
            split = int(options.split_mb * 1024 * 1024) if options.split_mb else None
            if split and out_path == "-":
                raise ExportError("split-mb needs an output file, not stdout")
            sink = ChromeSink(out_path, split)
            outputs = sink.outputs  # grows as parts are opened
        else:
            out = AtomicOutput(out_path)
            outputs = [out]
            if fmt == "perfetto":
                sink = PerfettoSink(out)
            elif fmt == "folded":
                sink = FoldedSink(out, options.weight, options.per_thread)
            else:
                sink = JsonlSink(out)
        symbols = atf.SymbolTable.with_sidecar(trace_dir)
        tracker = SliceTracker(sink, meta, symbols, options.time_start, options.time_end)
        progress = Progress(f"exporting {fmt}", enabled=options.progress)
        read = atf.ReadReport()
        try:
            tracker.feed(stream_events(trace_dir, symbols, progress, report=read))
            tracker.finish()
        finally:
            progress.close()
        for out in outputs:
            out.commit()
    except (OutputError, atf.TraceFormatError) as exc:
        for out in outputs:
            out.abort()
        raise ExportError(str(exc)) from None
    except BaseException:  # incl. KeyboardInterrupt: never leave temp files behind
        for out in outputs:
            out.abort()
        raise
    s = tracker.stats
    return ExportStats(format=fmt, files=[o.path for o in outputs],
                       bytes_written=sum(o.bytes_written for o in outputs),
                       events=s.events, slices=s.slices, threads=s.threads,
                       open_at_end=s.open_at_end, unmatched_returns=s.unmatched_returns,
                       clamped_timestamps=s.clamped_timestamps, windows=len(meta.windows),
                       torn_tail_bytes=read.torn_tail_bytes)
