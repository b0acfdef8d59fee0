"""Streaming read of ``events.bin`` for the exporters: ``atf.iter_events``
reads in fixed-size chunks, so exports run in bounded memory on traces of
any size, and raises atf.TraceFormatError on a corrupt trace (a torn tail is
cut and counted in ``report``). Kept as the exporters' single entry point to
the reader."""
from __future__ import annotations

from typing import Callable, Iterator

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb


def stream_events(trace_dir: str, symbols: atf.SymbolTable,
                  progress: Callable[[int, int], None] | None = None,
                  chunk_size: int = atf.READ_CHUNK,
                  report: atf.ReadReport | None = None) -> Iterator[pb.Event]:
    return atf.iter_events(trace_dir, symbols, progress=progress, chunk_size=chunk_size,
                           report=report)
