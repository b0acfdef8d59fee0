"""ATF V4 files: ``events.bin`` framing, the ``trace.json`` manifest, and a
plain event iterator that resolves function names.

``events.bin`` is a sequence of (varint length, ``Event`` bytes). A writer
killed mid-append can leave a torn last frame; readers stop at the last whole
frame, and ``scan_frames`` reports where the valid prefix ends so the writer
can cut the tail on restart.

Every reader (``iter_events`` and the query index) checks what it reads with
the same functions here: ``read_manifest``, ``read_symbols``, ``torn_tail``
and ``check_event_count``. A torn tail is cut and counted; anything else that
does not read as ATF V4 raises TraceFormatError saying which file, where and
what, so a corrupt trace never reads as an empty or shorter one.
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
    frame in ``buf`` from ``start``; stop silently at the first frame that is
    not whole (``torn_tail`` tells a torn tail from corruption)."""
    pos = start
    end = len(buf)
    while pos < end:
        try:
            length, payload = decode_varint(buf, pos)
        except (IndexError, TraceFormatError):
            return
        if payload + length > end:
            return
        yield pos, payload, length
        pos = payload + length


# Above any event a writer emits (protobuf's own default limit for one
# message): a length prefix beyond it cannot be a frame cut short by a crash.
MAX_FRAME_BYTES = 64 << 20


def _length_problem(buf, pos: int) -> str | None:
    """Why the length prefix at ``pos`` (the frame there is not whole) cannot
    start a frame, judged from the prefix bytes present; None if it can."""
    length = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        if len(buf) - pos >= 10:
            return "the frame length prefix is longer than 10 bytes"
        length += 1 << shift  # cut short: at least this much
        if length <= MAX_FRAME_BYTES:
            return None
        return (f"the frame length prefix, cut short, says at least {length} bytes, "
                f"more than any event ({MAX_FRAME_BYTES >> 20} MiB)")
    if length <= MAX_FRAME_BYTES:
        return None
    return (f"the frame length prefix says {length} bytes, more than any event "
            f"({MAX_FRAME_BYTES >> 20} MiB)")


def pending_frame_problem(buf, pos: int, path: str, base: int, size: int) -> None:
    """Raise TraceFormatError if the partial frame at ``pos`` (file offset
    ``base + pos`` of ``size`` bytes) could never complete, so a streaming
    reader fails there instead of buffering the rest of the file in search of
    its end."""
    problem = _length_problem(buf, pos)
    if problem is not None:
        raise TraceFormatError(f"{path}: corrupt frame at offset {base + pos} of {size} bytes: "
                               f"{problem}")


def torn_tail(buf, end: int, whole_frames: int, path: str, base: int = 0) -> int:
    """Size of the torn tail ``buf[end:]``, the bytes after the last whole
    frame (``end`` is at file offset ``base + end``). They are a frame a writer
    killed mid-append left cut short only if whole frames precede them and
    their length prefix is possible; otherwise raise TraceFormatError."""
    left = len(buf) - end
    if left <= 0:
        return 0
    problem = _length_problem(buf, end)
    if problem is None and whole_frames == 0:
        problem = (f"the first frame needs more than the {left} bytes of the file: no whole "
                   f"frame precedes it, so this is not a write cut short")
    if problem is not None:
        raise TraceFormatError(f"{path}: corrupt frame at offset {base + end} of "
                               f"{base + len(buf)} bytes: {problem}")
    return left


def decode_frame(buf, payload: int, length: int, path: str) -> pb.Event:
    """The Event in ``buf[payload:payload + length]``; TraceFormatError
    naming the frame's offset if it is not one."""
    try:
        return pb.Event.FromString(bytes(buf[payload:payload + length]))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise TraceFormatError(f"{path}: corrupt event at offset "
                               f"{payload - len(encode_varint(length))}: {exc}") from None


def check_event_count(manifest: dict, decoded: int, trace_dir: str) -> None:
    """The manifest counts events the writer had written when it wrote the
    manifest, and the writer only appends: fewer events in events.bin means
    recorded events are gone (a manifest read before events.bin is ahead of it
    only if events were lost)."""
    want = manifest.get("eventCount")
    if isinstance(want, int) and not isinstance(want, bool) and decoded < want:
        raise TraceFormatError(
            f"{os.path.join(trace_dir, EVENTS_FILE)}: holds {decoded} events but "
            f"{MANIFEST_FILE} counts {want}: events.bin lost events or does not belong to it")


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
    """The manifest, a JSON object of this format version (a manifest
    without ``formatVersion`` is taken as ATF V4, as foreign writers omit it)."""
    path = os.path.join(trace_dir, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            manifest = orjson.loads(f.read())
    except FileNotFoundError:
        raise TraceFormatError(f"no {MANIFEST_FILE} in {trace_dir}") from None
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(manifest, dict):
        raise TraceFormatError(f"{path}: not a JSON object")
    version = manifest.get("formatVersion", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise TraceFormatError(f"{path}: formatVersion is {version!r}, not {FORMAT_VERSION!r}")
    return manifest


def read_symbols(trace_dir: str) -> list | None:
    """The rows of ``symbols.json`` (None when the trace has none). A sidecar
    that exists but does not read as the writer's table is an error: its
    names would silently be missing from every answer."""
    path = os.path.join(trace_dir, SYMBOLS_FILE)
    try:
        with open(path, "rb") as f:
            doc = orjson.loads(f.read())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
    rows = doc.get("functions") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise TraceFormatError(f"{path}: no list of functions")
    return rows


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
        for i, r in enumerate(read_symbols(trace_dir) or []):
            if isinstance(r, dict) and isinstance(r.get("id"), int):
                try:
                    table.by_id[r["id"]] = Symbol(
                        r["id"], str(r.get("name", "")), str(r.get("module", "")),
                        int(r.get("address") or 0), int(r.get("size") or 0),
                        str(r.get("sourceFile", "")), int(r.get("sourceLine") or 0))
                except (TypeError, ValueError) as exc:
                    raise TraceFormatError(
                        f"{os.path.join(trace_dir, SYMBOLS_FILE)}: functions[{i}]: {exc}") from None
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


@dataclass
class ReadReport:
    """What a finished read counted: the events it yielded (detail copies
    aside) and the torn tail it cut."""

    events: int = 0
    torn_tail_bytes: int = 0


def iter_events(trace_dir: str, symbols: SymbolTable | None = None,
                include_detail: bool = False,
                progress: Callable[[int, int], None] | None = None,
                chunk_size: int = READ_CHUNK,
                report: ReadReport | None = None) -> Iterator[pb.Event]:
    """Decode every ``Event`` of a trace in file order, reading the file in
    fixed-size chunks so memory stays bounded on traces of any size.

    Symbol definitions are fed to ``symbols`` (if given) and not yielded.
    What compact calls and returns leave out is filled in (``Derivation``).
    Older traces' flight-recorder twins (``Event.detail``) repeat a call
    already in the stream, so they are skipped unless ``include_detail``. A
    torn last frame ends the stream and is counted in ``report``; corruption
    (see ``torn_tail``, ``check_event_count``) raises TraceFormatError, after
    the events before it were yielded. ``progress(bytes_consumed, total)`` is
    called once per chunk."""
    path = os.path.join(trace_dir, EVENTS_FILE)
    # read before events.bin, which is then at least as long as it says
    manifest = read_manifest(trace_dir) if os.path.exists(
        os.path.join(trace_dir, MANIFEST_FILE)) else {}
    read_symbols(trace_dir)  # a broken sidecar fails every reader alike
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise TraceFormatError(f"no {EVENTS_FILE} in {trace_dir}") from None
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
    parse = pb.Event.FromString
    events = 0
    derive = Derivation().apply
    with f:
        total = os.fstat(f.fileno()).st_size
        buf = b""
        base = 0  # file offset of buf[0]
        while True:
            try:
                chunk = f.read(chunk_size)
            except OSError as exc:
                raise TraceFormatError(f"cannot read {path}: {exc.strerror}") from None
            if not chunk:
                break
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
                if event.detail:
                    if include_detail:
                        yield event
                    continue
                events += 1
                yield event
            pending_frame_problem(buf, pos, path, base, total)
            buf = buf[pos:]
            base += pos
            if progress is not None:
                progress(base, total)
    # buf starts after the last whole frame: there were some if it is not at 0
    torn = torn_tail(buf, 0, 1 if base else 0, path, base)
    check_event_count(manifest, events, trace_dir)
    if report is not None:
        report.events, report.torn_tail_bytes = events, torn


def event_type(event: pb.Event) -> str:
    """PascalCase event type as the query API reports it."""
    return PAYLOAD_EVENT_TYPES.get(event.WhichOneof("payload") or "", "Unknown")
