"""The C encoder (native/src/encode.c) against the official protobuf runtime,
and the schema's base wire numbers (the design card's table)."""
import numpy as np
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanetrace._native import ffi, lib
from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb

from .harness import RECORD

U64 = (1 << 64) - 1


class Encoder:
    def __init__(self, inline: bool):
        self.enc = ffi.gc(lib.lt_encoder_new(int(inline)), lib.lt_encoder_free)

    def define(self, fid: int, name: str, address: int) -> None:
        raw = name.encode()
        assert lib.lt_encoder_set_function(self.enc, fid, address, raw, len(raw)) == 0

    def encode(self, rows):
        arr = np.array([(ts, seq, tid, fid, kind, depth, 0)
                        for ts, seq, tid, fid, kind, depth in rows], dtype=RECORD)
        data = arr.tobytes()
        cap = lib.lt_encode_bound(self.enc, len(rows))
        out = ffi.new("uint8_t[]", max(cap, 1))
        res = ffi.new("lt_batch_result *")
        n = lib.lt_encode_index(self.enc, ffi.from_buffer(data), len(rows), out, cap, res)
        assert n >= 0
        return bytes(ffi.buffer(out, n)), res

    def stats(self):
        s = ffi.new("lt_encode_stats *")
        lib.lt_encoder_stats(self.enc, s)
        return {k: getattr(s, k) for k in dir(s)}


def reference(rows, functions, inline, first_id, max_seq):
    """The same records encoded with the protobuf runtime, by the rules of
    docs/format.md ("Compact calls and returns"); the dedup rule is the
    writer's contract: a (tid, seq) at or below the thread's max is late if it
    was never seen (written, the gap closes) or else a duplicate; seq 0 and
    unknown kinds are invalid."""
    out, eid, dups, gaps, invalid, unknown, late = [], first_id, 0, 0, 0, 0, 0
    missing = max_seq.setdefault("missing", set())
    prev = max_seq.setdefault("prev", {})  # tid -> (seq, ts, depth, kind)
    for ts, seq, tid, fid, kind, depth in rows:
        if kind not in (1, 2, 3) or seq == 0:
            invalid += 1
            continue
        if seq <= max_seq.get(tid, 0):
            if (tid, seq) not in missing:
                dups += 1
                continue
            missing.discard((tid, seq))
            late += 1
        else:
            gaps += seq - max_seq.get(tid, 0) - 1
            missing.update((tid, s) for s in range(max_seq.get(tid, 0) + 1, seq))
            max_seq[tid] = seq
        last_seq, last_ts, last_depth, last_kind = prev.get(tid, (0, 0, 0, 0))
        is_call = kind == 1
        ev = pb.Event(thread_id=tid - (1 << 32) if tid >= 1 << 31 else tid)
        if inline:
            ev.event_id = eid
        eid += 1
        if inline or not last_kind or ts < last_ts:
            ev.timestamp.SetInParent()
            atf.set_timestamp_ns(ev, ts)
        elif ts > last_ts:
            ev.time_delta_ns = ts - last_ts
        p = ev.function_call if is_call else ev.function_return
        p.SetInParent()
        p.function_id = fid
        if fid in functions:
            name, address = functions[fid]
            if inline:
                p.address = address
                p.symbol = name
        else:
            unknown += 1
        if kind == 3:
            p.unwound = True
        if not last_seq or seq != last_seq + 1:
            ev.sequence = seq
            if depth:
                ev.depth = depth
        elif atf.derived_depth(last_kind, last_depth, is_call) != depth:
            ev.depth = depth
        prev[tid] = (seq, ts, depth, 1 if is_call else 2)
        out.append(atf.frame(ev.SerializeToString()))
    return b"".join(out), dict(duplicates=dups, gaps=gaps, invalid=invalid, unknown=unknown,
                               late=late)


record_st = st.tuples(
    st.one_of(st.integers(0, 3_000_000_000), st.integers(0, U64)),   # ts_ns
    st.integers(0, 12),                                               # seq: dups, gaps, 0
    st.sampled_from([1, 2, 77, 2**31 - 1, 2**31, 2**32 - 1]),         # tid, incl. negative int32
    st.integers(0, 6),                                                # func_id, 5 and 6 unknown
    st.integers(0, 4),                                                # kind, 0 and 4 invalid
    st.one_of(st.just(0), st.integers(0, 65535)),                     # depth
)
functions_st = st.dictionaries(
    st.integers(1, 4),
    st.tuples(st.text(min_size=0, max_size=40), st.integers(0, U64)),
    max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(record_st, max_size=30), min_size=1, max_size=4),
       functions=functions_st, inline=st.booleans())
def test_encoder__random_records__then_bytes_equal_protobuf_runtime(batches, functions, inline):
    enc = Encoder(inline)
    for fid, (name, address) in functions.items():
        enc.define(fid, name, address)
    max_seq, next_id = {}, 1
    derive, written = atf.Derivation(), []
    for rows in batches:
        got, res = enc.encode(rows)
        want, counts = reference(rows, functions, inline, next_id, max_seq)
        assert got == want
        for ev in _frames(got):  # a reader derives every field left out
            derive.apply(ev)
            written.append((atf.timestamp_ns(ev), ev.sequence, ev.depth, ev.event_id))
        assert (res.duplicates, res.gaps, res.invalid_records, res.unknown_function,
                res.late) == (counts["duplicates"], counts["gaps"], counts["invalid"],
                              counts["unknown"], counts["late"])
        next_id += res.events
    assert enc.stats()["next_event_id"] == next_id
    assert [w[3] for w in written] == list(range(1, next_id))
    accepted, seen, top = [], set(), {}
    for rows in batches:
        for ts, seq, tid, fid, kind, depth in rows:
            if kind in (1, 2, 3) and seq and (tid, seq) not in seen:
                seen.add((tid, seq))
                accepted.append((ts, seq, depth))
    # (the late/duplicate split with forgotten holes is checked elsewhere)
    assert [w[:3] for w in written] == accepted[:len(written)]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(record_st, min_size=1, max_size=60), functions=functions_st,
       cut=st.integers(0, 10_000))
def test_encoder_scan__file_written_then_cut__then_state_rebuilt_up_to_last_whole_frame(
        rows, functions, cut):
    enc = Encoder(False)
    head = []
    first = lib.lt_encoder_take_event_ids(enc.enc, 1 + len(functions))
    start = pb.Event(event_id=first)
    start.trace_start.pid = 1
    head.append(atf.frame(start.SerializeToString()))
    for i, (fid, (name, address)) in enumerate(sorted(functions.items())):
        d = pb.Event(event_id=first + 1 + i)
        d.symbol_definition.function_id = fid
        d.symbol_definition.symbol = name
        d.symbol_definition.address = address
        head.append(atf.frame(d.SerializeToString()))
        enc.define(fid, name, address)
    body, _ = enc.encode(rows)
    image = b"".join(head) + body

    fresh = Encoder(False)
    valid = ffi.new("size_t *")
    assert lib.lt_encoder_scan(fresh.enc, image, len(image), valid) == 0
    assert valid[0] == len(image)
    want, got = enc.stats(), fresh.stats()
    for k in ("duplicates", "invalid_records", "late"):  # not recorded in the file
        want.pop(k), got.pop(k)
    assert got == want
    offsets = ffi.new("const uint64_t **")
    assert lib.lt_encoder_other_frames(fresh.enc, offsets) == 1 + len(functions)

    torn = image[:cut % (len(image) + 1)]
    expected = 0
    for _, pos, length in atf.scan_frames(torn):
        expected = pos + length
    again = Encoder(False)
    assert lib.lt_encoder_scan(again.enc, torn, len(torn), valid) == 0
    assert valid[0] == expected


def test_encoder_scan__garbage_frame__then_refused_at_its_offset():
    good = atf.frame(pb.Event(event_id=1).SerializeToString())
    bad = atf.frame(b"\x0f\x01")  # field 1 with wire type 7: not protobuf
    enc = Encoder(False)
    valid = ffi.new("size_t *")
    image = good + bad + good
    assert lib.lt_encoder_scan(enc.enc, image, len(image), valid) == -1
    assert valid[0] == len(good)


def test_encoder__output_buffer_too_small__then_refused_and_state_unchanged():
    enc = Encoder(False)
    arr = np.zeros(4, RECORD)
    arr["seq"], arr["kind"], arr["tid"] = [1, 2, 3, 4], 1, 5
    cap = lib.lt_encode_bound(enc.enc, 4) - 1
    out = ffi.new("uint8_t[]", cap)
    data = arr.tobytes()
    assert lib.lt_encode_index(enc.enc, ffi.from_buffer(data), 4, out, cap, ffi.NULL) == -1
    s = enc.stats()
    assert (s["next_event_id"], s["events"], s["threads"]) == (1, 0, 0)


def _field(msg, name):
    return msg.DESCRIPTOR.fields_by_name[name]


def test_schema__event_wire_numbers__then_the_base_format_numbers():
    ev = pb.Event
    expect = {
        (ev, "event_id"): (1, FD.TYPE_UINT64), (ev, "thread_id"): (2, FD.TYPE_INT32),
        (ev, "timestamp"): (3, FD.TYPE_MESSAGE), (ev, "trace_start"): (10, FD.TYPE_MESSAGE),
        (ev, "trace_end"): (11, FD.TYPE_MESSAGE), (ev, "function_call"): (12, FD.TYPE_MESSAGE),
        (ev, "function_return"): (13, FD.TYPE_MESSAGE),
        (ev, "signal_delivery"): (14, FD.TYPE_MESSAGE),
        (pb.TraceStart, "executable_path"): (1, FD.TYPE_STRING),
        (pb.TraceStart, "args"): (2, FD.TYPE_STRING),
        (pb.TraceStart, "operating_system"): (3, FD.TYPE_STRING),
        (pb.TraceStart, "cpu_architecture"): (4, FD.TYPE_STRING),
        (pb.TraceEnd, "exit_code"): (1, FD.TYPE_INT32),
        (pb.FunctionCall, "symbol"): (1, FD.TYPE_STRING),
        (pb.FunctionCall, "address"): (2, FD.TYPE_UINT64),
        (pb.FunctionCall, "argument_registers"): (3, FD.TYPE_MESSAGE),
        (pb.FunctionCall, "stack_shallow_copy"): (4, FD.TYPE_BYTES),
        (pb.FunctionReturn, "symbol"): (1, FD.TYPE_STRING),
        (pb.FunctionReturn, "address"): (2, FD.TYPE_UINT64),
        (pb.FunctionReturn, "return_registers"): (3, FD.TYPE_MESSAGE),
        (pb.SignalDelivery, "number"): (1, FD.TYPE_INT32),
        (pb.SignalDelivery, "name"): (2, FD.TYPE_STRING),
        (pb.SignalDelivery, "registers"): (3, FD.TYPE_MESSAGE),
    }
    got = {k: (_field(k[0], k[1]).number, _field(k[0], k[1]).type) for k in expect}
    assert got == expect
    assert _field(pb.TraceStart, "args").is_repeated
    assert _field(ev, "timestamp").message_type.full_name == "google.protobuf.Timestamp"
    for msg, name in ((pb.FunctionCall, "argument_registers"),
                      (pb.FunctionReturn, "return_registers"), (pb.SignalDelivery, "registers")):
        entry = _field(msg, name).message_type
        assert entry.GetOptions().map_entry
        assert (entry.fields_by_name["key"].type, entry.fields_by_name["value"].type) == (
            FD.TYPE_STRING, FD.TYPE_UINT64)
    oneof = ev.DESCRIPTOR.oneofs_by_name["payload"]
    assert {f.name for f in oneof.fields} >= {"trace_start", "trace_end", "function_call",
                                              "function_return", "signal_delivery"}
    # our additions stay clear of the seed's numbers
    assert all(_field(ev, n).number >= 15 for n in ("symbol_definition", "sequence", "depth"))
    assert all(_field(m, "function_id").number >= 15 for m in (pb.FunctionCall,
                                                               pb.FunctionReturn))


def test_encoder__late_record_inside_gap__then_written_as_late_not_duplicate():
    enc = Encoder(False)
    rows = [(10, 1, 5, 1, 1, 0), (20, 5, 5, 1, 2, 0)]  # seq 2..4 still missing
    enc.encode(rows)
    out, res = enc.encode([(15, 3, 5, 1, 1, 0), (16, 3, 5, 1, 1, 0), (17, 5, 5, 1, 1, 0)])
    assert (res.events, res.late, res.duplicates) == (1, 1, 2)
    assert [e.sequence for e in _frames(out)] == [3]
    s = enc.stats()
    assert (s["gaps"], s["late"], s["duplicates"]) == (2, 1, 2)


def test_encoder__more_gaps_than_remembered__then_oldest_late_counts_as_duplicate():
    enc = Encoder(False)
    n = lib.LT_ENCODE_MAX_HOLES + 2
    enc.encode([(i, 2 * i, 9, 1, 1, 0) for i in range(1, n + 1)])  # holes at 1, 3, 5, ...
    _, res = enc.encode([(0, 1, 9, 1, 1, 0), (0, 3, 9, 1, 1, 0), (0, 5, 9, 1, 1, 0),
                         (0, 2 * n - 1, 9, 1, 1, 0)])
    # n holes, MAX remembered: seq 1 and 3 were forgotten
    assert (res.late, res.duplicates) == (2, 2)


def _frames(data: bytes) -> list:
    out = []
    for _, pos, length in atf.scan_frames(data):
        ev = pb.Event()
        ev.ParseFromString(data[pos:pos + length])
        out.append(ev)
    return out
