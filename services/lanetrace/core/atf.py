"""ATF V4 files: ``events.bin`` framing, the ``trace.json`` manifest, and a
plain event iterator that resolves function names.

``events.bin`` is a sequence of (varint length, ``Event`` bytes). A writer
killed mid-append can leave a torn last frame; readers stop at the last whole
frame, and ``scan_frames`` reports where the valid prefix ends so the writer
can cut the tail on restart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import orjson

from lanetrace.core import atf_v4_pb2 as pb

EVENTS_FILE = "events.bin"
MANIFEST_FILE = "trace.json"
SYMBOLS_FILE = "symbols.json"
FORMAT_VERSION = "ATF V4"
# trace.json "eventEncoding" of traces with compact calls and returns
COMPACT_ENCODING = "compact"

PAYLOAD_EVENT_TYPES = {
    "trace_start": "TraceStart",
    "trace_end": "TraceEnd",
    "function_call": "FunctionCall",
    "function_return": "FunctionReturn",
    "signal_delivery": "SignalDelivery",
}


class TraceFormatError(Exception):
    """A trace directory or file that cannot be read as ATF V4."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf, pos: int) -> tuple[int, int]:
    """Return (value, new_pos); raise IndexError on a truncated varint."""
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TraceFormatError(f"varint longer than 10 bytes at offset {pos}")


def frame(message_bytes: bytes) -> bytes:
    return encode_varint(len(message_bytes)) + message_bytes


def scan_frames(buf, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """Yield (frame_offset, payload_offset, payload_length) for every whole
    frame in ``buf`` from ``start``; stop silently at a torn tail."""
    pos = start
    end = len(buf)
    while pos < end:
        try:
            length, payload = decode_varint(buf, pos)
        except IndexError:
            return
        if payload + length > end:
            return
        yield pos, payload, length
        pos = payload + length


def valid_prefix_length(path: str) -> int:
    """Length of the longest prefix of ``path`` made of whole frames."""
    with open(path, "rb") as f:
        data = f.read()
    last = 0
    for _, payload, length in scan_frames(data):
        last = payload + length
    return last


def timestamp_ns(event: pb.Event) -> int:
    return event.timestamp.seconds * 1_000_000_000 + event.timestamp.nanos


def set_timestamp_ns(event: pb.Event, ns: int) -> None:
    event.timestamp.seconds, event.timestamp.nanos = divmod(ns, 1_000_000_000)


def read_manifest(trace_dir: str) -> dict:
    path = os.path.join(trace_dir, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except FileNotFoundError:
        raise TraceFormatError(f"no {MANIFEST_FILE} in {trace_dir}") from None
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON: {exc}") from None


def write_json_atomic(path: str, obj) -> None:
    """Replace ``path`` atomically: temp file, fsync, rename, fsync dir."""
    tmp = f"{path}.tmp.{os.getpid()}"
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class Symbol:
    function_id: int
    name: str
    module: str = ""
    address: int = 0
    size: int = 0
    source_file: str = ""
    source_line: int = 0


@dataclass
class SymbolTable:
    """Function ids → symbols, from in-stream definitions (and symbols.json)."""

    by_id: dict[int, Symbol] = field(default_factory=dict)

    def add_definition(self, d: pb.SymbolDefinition) -> None:
        source_file, source_line = d.source_file, d.source_line
        known = self.by_id.get(d.function_id)
        if not source_file and known is not None and known.name == d.symbol:
            # a definition without a location does not erase one known
            # (source locations are published after the hooks go live)
            source_file, source_line = known.source_file, known.source_line
        self.by_id[d.function_id] = Symbol(d.function_id, d.symbol, d.module, d.address,
                                           d.size, source_file, source_line)

    @classmethod
    def with_sidecar(cls, trace_dir: str) -> "SymbolTable":
        """A table primed from the trace's symbols.json, the writer's final
        view (with source locations that reached it after the first calls);
        in-stream definitions read later still apply."""
        table = cls()
        try:
            with open(os.path.join(trace_dir, SYMBOLS_FILE), "rb") as f:
                rows = orjson.loads(f.read())
        except (OSError, ValueError):
            return table
        if isinstance(rows, dict):
            rows = rows.get("functions")
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and isinstance(r.get("id"), int):
                table.by_id[r["id"]] = Symbol(r["id"], str(r.get("name", "")), str(r.get("module", "")),
                                              int(r.get("address") or 0), int(r.get("size") or 0),
                                              str(r.get("sourceFile", "")), int(r.get("sourceLine") or 0))
        return table

    def name_of(self, event: pb.Event) -> tuple[str, str]:
        """(function name, module) of a call/return; ("", "") if unknown."""
        which = event.WhichOneof("payload")
        if which == "function_call":
            p = event.function_call
        elif which == "function_return":
            p = event.function_return
        else:
            return "", ""
        if p.symbol:
            sym = self.by_id.get(p.function_id) if p.function_id else None
            return p.symbol, sym.module if sym else ""
        sym = self.by_id.get(p.function_id)
        if sym is None:
            return "", ""
        return sym.name, sym.module


class Derivation:
    """Fills in what a compact call or return leaves out, from the events
    before it in file order (docs/format.md, "Compact calls and returns"):
    event_id, timestamp, sequence and depth. Feed it every event of a file,
    in order; events that carry these fields (older traces, other writers)
    pass unchanged."""

    __slots__ = ("last_id", "threads")

    def __init__(self):
        self.last_id = 0
        self.threads: dict[int, list[int]] = {}  # tid -> [seq, ts, depth, kind 1 call/2 return]

    def apply(self, ev: pb.Event) -> None:
        if ev.event_id:
            self.last_id = ev.event_id
        else:
            self.last_id += 1
            ev.event_id = self.last_id
        which = ev.WhichOneof("payload")
        if ev.detail or (which != "function_call" and which != "function_return"):
            return
        is_call = which == "function_call"
        st = self.threads.get(ev.thread_id)
        if st is None:
            st = self.threads[ev.thread_id] = [0, 0, 0, 0]
        if ev.HasField("timestamp"):
            ts = timestamp_ns(ev)
        else:
            ts = st[1] + ev.time_delta_ns
            set_timestamp_ns(ev, ts)
        st[1] = ts
        seq = ev.sequence
        if not seq:
            if not st[0]:
                return  # a writer that numbers nothing: nothing to derive
            seq = ev.sequence = st[0] + 1
            if not ev.HasField("depth"):
                ev.depth = max(0, derived_depth(st[3], st[2], is_call))
        st[0], st[2], st[3] = seq, ev.depth, 1 if is_call else 2


def derived_depth(last_kind: int, last_depth: int, is_call: bool) -> int:
    """Depth of a thread's next call/return implied by its previous one
    (kind 1 call, 2 return, 0 none); -1 when nothing is implied."""
    if last_kind == 1:
        return last_depth + 1 if is_call else last_depth
    if last_kind == 2:
        return last_depth if is_call else last_depth - 1
    return -1


def carries_detail(ev: pb.Event) -> bool:
    """The call/return holds the flight recorder's registers (and stack)."""
    which = ev.WhichOneof("payload")
    if which == "function_call":
        return bool(ev.function_call.argument_registers) or bool(ev.function_call.stack_shallow_copy)
    if which == "function_return":
        return bool(ev.function_return.return_registers)
    return False


READ_CHUNK = 256 * 1024


def iter_events(trace_dir: str, symbols: SymbolTable | None = None,
                include_detail: bool = False,
                progress: Callable[[int, int], None] | None = None,
                chunk_size: int = READ_CHUNK) -> Iterator[pb.Event]:
    """Decode every ``Event`` of a trace in file order, reading the file in
    fixed-size chunks so memory stays bounded on traces of any size.

    Symbol definitions are fed to ``symbols`` (if given) and not yielded.
    What compact calls and returns leave out is filled in (``Derivation``).
    Older traces' flight-recorder twins (``Event.detail``) repeat a call
    already in the stream, so they are skipped unless ``include_detail``. A torn last
    frame ends the stream (see ``scan_frames``); a frame that does not decode
    raises TraceFormatError. ``progress(bytes_consumed, total)`` is called
    once per chunk."""
    path = os.path.join(trace_dir, EVENTS_FILE)
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise TraceFormatError(f"no {EVENTS_FILE} in {trace_dir}") from None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
    parse = pb.Event.FromString
    derive = Derivation().apply
    with f:
        total = os.fstat(f.fileno()).st_size
        buf = b""
        base = 0  # file offset of buf[0]
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                return  # whatever is left in buf is a torn tail
            buf += chunk
            pos = 0
            for _, payload, length in scan_frames(buf):
                try:
                    event = parse(buf[payload:payload + length])
                except Exception as exc:  # protobuf raises DecodeError and friends
                    raise TraceFormatError(
                        f"{path}: corrupt event at offset {base + pos}: {exc}") from None
                pos = payload + length
                derive(event)
                if event.WhichOneof("payload") == "symbol_definition":
                    if symbols is not None:
                        symbols.add_definition(event.symbol_definition)
                    continue
                if event.detail and not include_detail:
                    continue
                yield event
            buf = buf[pos:]
            base += pos
            if progress is not None:
                progress(base, total)


def event_type(event: pb.Event) -> str:
    """PascalCase event type as the query API reports it."""
    return PAYLOAD_EVENT_TYPES.get(event.WhichOneof("payload") or "", "Unknown")
