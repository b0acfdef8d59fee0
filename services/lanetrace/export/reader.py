"""Streaming read of ``events.bin``.

``lanetrace.atf.iter_events`` reads the whole file into memory; exports must
run in bounded memory on traces of any size, so this reader decodes frames
from a window of the file that is refilled in fixed-size chunks. Framing,
varints and symbol interning are atf's.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

from lanetrace import atf
from lanetrace import atf_v4_pb2 as pb

CHUNK = 256 * 1024
# Progress callbacks get (bytes consumed, total bytes) once per chunk.


def stream_events(trace_dir: str, symbols: atf.SymbolTable,
                  progress: Callable[[int, int], None] | None = None,
                  chunk_size: int = CHUNK) -> Iterator[pb.Event]:
    """Yield every ``Event`` in file order; symbol definitions go to
    ``symbols`` and are not yielded. A torn last frame ends the stream (as
    in atf.scan_frames); a frame that does not decode raises
    ``atf.TraceFormatError``."""
    path = os.path.join(trace_dir, atf.EVENTS_FILE)
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise atf.TraceFormatError(f"no {atf.EVENTS_FILE} in {trace_dir}") from None
    except OSError as exc:
        raise atf.TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
    parse = pb.Event.FromString
    decode_varint = atf.decode_varint
    with f:
        total = os.fstat(f.fileno()).st_size
        buf = b""
        base = 0  # file offset of buf[0]
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break  # whatever is left in buf is a torn tail
            buf += chunk
            pos = 0
            end = len(buf)
            while pos < end:
                try:
                    length, payload = decode_varint(buf, pos)
                except IndexError:
                    break
                if payload + length > end:
                    break
                try:
                    event = parse(buf[payload:payload + length])
                except Exception as exc:  # DecodeError and friends
                    raise atf.TraceFormatError(
                        f"{path}: corrupt event at offset {base + pos}: {exc}") from None
                pos = payload + length
                if event.WhichOneof("payload") == "symbol_definition":
                    symbols.add_definition(event.symbol_definition)
                    continue
                yield event
            buf = buf[pos:]
            base += pos
            if progress is not None:
                progress(base, total)
