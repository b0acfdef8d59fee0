"""Build ATF V4 trace directories for the query tests, with the protobuf runtime.

Three flavours:

* ``ours``: what the lanetrace writer produces: function ids interned by
  in-stream SymbolDefinition events, ``sequence``/``depth`` on calls and
  returns, a ``symbols.json`` sidecar, threads interleaved in chunks (so the
  file is NOT globally time-ordered), and our manifest fields.
* ``foreign``: only the seed fields: a symbol string in every call/return,
  no function ids, no sidecars, a minimal manifest.
* ``compact``: ``ours`` as the writer writes it now: flight-recorder detail
  inside its call/return, derivable fields left out (``compact_stream``).

Events are described with :class:`Ev`; :func:`random_program` makes random but
well-formed call trees for property tests.
"""
from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass, field

import orjson

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb


@dataclass
class Ev:
    kind: str  # start | end | call | ret | signal | empty
    ts: int
    tid: int = 0
    func: str = ""
    module: str = "libdemo.so"
    address: int = 0
    regs: dict = field(default_factory=dict)
    exec_path: str = "/usr/bin/demo"
    args: list = field(default_factory=list)
    signal: int = 0
    detail: bool = False  # ours: registers go to a flight-recorder detail copy
    unwound: bool = False  # a return synthesized for a frame left by longjmp/exception


def _address_of(name: str, module: str) -> int:
    return 0x400000 + (zlib.crc32(f"{module}!{name}".encode()) % 0x100000) * 16


def write_trace(trace_dir, events, flavour="ours", pid=4242, os_name="linux", arch="x86_64",
                manifest_extra=None, inline_symbols=False, chunk=3, manifest=True):
    """Write ``events`` (a list of :class:`Ev`, in per-thread order) as a trace
    directory; return the directory path."""
    assert flavour in ("ours", "foreign", "compact")
    os.makedirs(trace_dir, exist_ok=True)
    compact = flavour == "compact"
    ours = flavour in ("ours", "compact")
    ordered = _interleave(events, chunk) if ours else list(events)
    ids: dict[tuple[str, str], int] = {}
    seqs: dict[int, int] = {}
    depths: dict[int, list] = {}
    out = bytearray()
    details = []  # written last: the detail lane arrives after the index lane
    event_id = 0
    for ev in ordered:
        msg = pb.Event()
        event_id += 1
        msg.event_id = event_id
        msg.thread_id = ev.tid
        atf.set_timestamp_ns(msg, ev.ts)
        addr = ev.address or _address_of(ev.func, ev.module)
        if ev.kind == "start":
            msg.trace_start.executable_path = ev.exec_path
            msg.trace_start.args.extend(ev.args)
            msg.trace_start.operating_system = os_name
            msg.trace_start.cpu_architecture = arch
            if ours:
                msg.trace_start.pid = pid
        elif ev.kind == "end":
            msg.trace_end.exit_code = 0
        elif ev.kind == "signal":
            msg.signal_delivery.number = ev.signal or 11
            msg.signal_delivery.name = "SIGSEGV"
            msg.signal_delivery.registers.update(ev.regs)
        elif ev.kind in ("call", "ret"):
            body = msg.function_call if ev.kind == "call" else msg.function_return
            if ev.func:
                if ours:
                    key = (ev.func, ev.module)
                    if key not in ids:
                        ids[key] = len(ids) + 1
                        d = pb.Event()
                        event_id += 1
                        d.event_id = event_id
                        d.symbol_definition.function_id = ids[key]
                        d.symbol_definition.symbol = ev.func
                        d.symbol_definition.module = ev.module
                        d.symbol_definition.address = addr
                        out += atf.frame(d.SerializeToString())
                        msg.event_id = event_id = event_id + 1
                    body.function_id = ids[key]
                    if inline_symbols:
                        body.symbol = ev.func
                else:
                    body.symbol = ev.func
            body.address = addr
            if ev.kind == "ret" and ev.unwound:
                body.unwound = True
            regs = body.argument_registers if ev.kind == "call" else body.return_registers
            if not (ours and ev.detail):
                regs.update(ev.regs)
            if ours:
                seqs[ev.tid] = seqs.get(ev.tid, 0) + 1
                msg.sequence = seqs[ev.tid]
                stack = depths.setdefault(ev.tid, [])
                # depth 0 left out, as every event's depth was before compact events
                if ev.kind == "call":
                    if stack:
                        msg.depth = len(stack)
                    stack.append(ev.func)
                else:
                    # a return carries its call's depth (the writer's rule)
                    for j in range(len(stack) - 1, -1, -1):
                        if stack[j] == ev.func:
                            if j:
                                msg.depth = j
                            del stack[j:]
                            break
        out += atf.frame(msg.SerializeToString())
        if ours and ev.detail and ev.kind in ("call", "ret"):
            d = pb.Event()
            d.CopyFrom(msg)
            d.detail = True
            body = d.function_call if ev.kind == "call" else d.function_return
            (body.argument_registers if ev.kind == "call" else body.return_registers).update(ev.regs)
            details.append(d)
    for d in details:
        event_id += 1
        d.event_id = event_id
        out += atf.frame(d.SerializeToString())
    if compact:
        out = compact_stream(bytes(out), inline_symbols)
    with open(os.path.join(trace_dir, atf.EVENTS_FILE), "wb") as f:
        f.write(out)
    if manifest:
        times = [e.ts for e in events] or [0]
        if ours:
            m = {"formatVersion": atf.FORMAT_VERSION, "os": os_name, "arch": arch, "pid": pid,
                 "sessionId": "20261121-101500-ab12", "timeStartNs": min(times),
                 "timeEndNs": max(times), "eventCount": len(events),
                 "bytesWritten": len(out), "spanCount": None,
                 "drops": {"ring_full": 0}, "windows": [],
                 "executablePath": next((e.exec_path for e in events if e.kind == "start"), "")}
        else:
            m = {"version": "ATF V4", "pid": pid}
        if compact:
            m["eventEncoding"] = atf.COMPACT_ENCODING
        m.update(manifest_extra or {})
        with open(os.path.join(trace_dir, atf.MANIFEST_FILE), "wb") as f:
            f.write(orjson.dumps(m))
    if ours:
        table = [{"id": i, "name": n, "module": mod, "address": _address_of(n, mod)}
                 for (n, mod), i in ids.items()]
        with open(os.path.join(trace_dir, atf.SYMBOLS_FILE), "wb") as f:
            f.write(orjson.dumps({"functions": table}))
    return str(trace_dir)


def compact_stream(data: bytes, inline_symbols: bool = False) -> bytes:
    """The same trace as the writer writes it today (docs/format.md, "Compact
    calls and returns"): detail twins merged into their call/return, and
    what a reader can derive left out."""
    frames = []
    for _, pos, length in atf.scan_frames(data):
        frames.append(pb.Event.FromString(data[pos:pos + length]))
    twins = {(e.thread_id, e.sequence): e for e in frames if e.detail}
    out = bytearray()
    prev: dict[int, tuple] = {}  # tid -> (seq, ts, depth, kind)
    for ev in frames:
        which = ev.WhichOneof("payload")
        if ev.detail:
            continue
        if which not in ("function_call", "function_return"):
            out += atf.frame(ev.SerializeToString())
            continue
        is_call = which == "function_call"
        body = ev.function_call if is_call else ev.function_return
        twin = twins.get((ev.thread_id, ev.sequence))
        if twin is not None:
            tb = twin.function_call if is_call else twin.function_return
            if is_call:
                body.argument_registers.update(tb.argument_registers)
                body.stack_shallow_copy = tb.stack_shallow_copy
            else:
                body.return_registers.update(tb.return_registers)
        seq, ts, depth = ev.sequence, atf.timestamp_ns(ev), ev.depth
        last_seq, last_ts, last_depth, last_kind = prev.get(ev.thread_id, (0, 0, 0, 0))
        if not inline_symbols:
            ev.ClearField("event_id")
            body.ClearField("address")
            if last_kind and ts >= last_ts:
                ev.ClearField("timestamp")
                ev.time_delta_ns = ts - last_ts
        if last_seq and seq == last_seq + 1:
            ev.ClearField("sequence")
            if atf.derived_depth(last_kind, last_depth, is_call) == depth:
                ev.ClearField("depth")
            else:
                ev.depth = depth
        prev[ev.thread_id] = (seq, ts, depth, 1 if is_call else 2)
        out += atf.frame(ev.SerializeToString())
    return bytes(out)


def _interleave(events, chunk):
    """Per-thread order kept; threads take turns in runs of ``chunk`` events,
    as drainer batches do, so the file is not globally time-ordered."""
    if chunk <= 0:
        return list(events)
    per: dict[int, list] = {}
    order = []
    for ev in events:
        if ev.tid not in per:
            per[ev.tid] = []
            order.append(ev.tid)
        per[ev.tid].append(ev)
    # threads with a lower id go later, so the file order is not time order
    order.sort(reverse=True)
    out = []
    pos = {t: 0 for t in order}
    while any(pos[t] < len(per[t]) for t in order):
        for t in order:
            out.extend(per[t][pos[t]:pos[t] + chunk])
            pos[t] += chunk
    return out


FUNCS = [("main", "demo"), ("parse", "libdemo.so"), ("lex", "libdemo.so"),
         ("emit", "libdemo.so"), ("alloc", "libc.so.6"), ("free", "libc.so.6")]


def random_program(rng: random.Random, threads=3, steps=60, funcs=FUNCS, drop_rate=0.0,
                   start_ns=1_000_000, max_gap=50, with_start_end=True, detail_rate=0.0):
    """Random per-thread call trees as a list of :class:`Ev`. With
    ``drop_rate`` some returns are lost and some orphan returns appear, as a
    lossy capture would produce. Timestamps may repeat (gap 0)."""
    events = []
    if with_start_end:
        events.append(Ev("start", start_ns, 0, args=["demo", "-x"]))
    t_end = start_ns
    for tid in range(4243, 4243 + threads):
        ts = start_ns + rng.randint(0, max_gap)
        stack = []
        for _ in range(steps):
            ts += rng.randint(0, max_gap)
            r = rng.random()
            if stack and (r < 0.45 or len(stack) > 6):
                name, mod = stack.pop()
                if rng.random() < drop_rate:
                    continue
                events.append(Ev("ret", ts, tid, name, mod, regs={"rax": rng.randint(0, 9)},
                                 detail=rng.random() < detail_rate))
            elif r < 0.5 and drop_rate:
                name, mod = rng.choice(funcs)
                events.append(Ev("ret", ts, tid, name, mod))  # orphan
            else:
                name, mod = rng.choice(funcs)
                stack.append((name, mod))
                events.append(Ev("call", ts, tid, name, mod, regs={"rdi": rng.randint(0, 99)},
                                 detail=rng.random() < detail_rate))
        t_end = max(t_end, ts)
    if with_start_end:
        events.append(Ev("end", t_end + 1, 0))
    return events


def simple_events():
    """A small fixed trace: two threads, nested calls, known spans.

    thread 4243: main[100,900] > parse[200,500] > lex[250,300]; emit[600,700]
    thread 4244: parse[150,450] > alloc[160,170]; a signal at 400
    """
    return [
        Ev("start", 50, 0, args=["demo", "in.txt"]),
        Ev("call", 100, 4243, "main", "demo", regs={"rdi": 1}),
        Ev("call", 200, 4243, "parse", "libdemo.so", regs={"rdi": 7}),
        Ev("call", 250, 4243, "lex", "libdemo.so"),
        Ev("ret", 300, 4243, "lex", "libdemo.so", regs={"rax": 3}),
        Ev("ret", 500, 4243, "parse", "libdemo.so", regs={"rax": 0}),
        Ev("call", 600, 4243, "emit", "libdemo.so"),
        Ev("ret", 700, 4243, "emit", "libdemo.so"),
        Ev("ret", 900, 4243, "main", "demo"),
        Ev("call", 150, 4244, "parse", "libdemo.so"),
        Ev("call", 160, 4244, "alloc", "libc.so.6"),
        Ev("ret", 170, 4244, "alloc", "libc.so.6"),
        Ev("signal", 400, 4244, regs={"rip": 0x401000}),
        Ev("ret", 450, 4244, "parse", "libdemo.so"),
        Ev("end", 1000, 0),
    ]
