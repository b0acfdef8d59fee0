"""The Perfetto file checked at the wire level against the field numbers in
EXPORTS.md, so a wrong number in the vendored .proto cannot hide behind a
round trip through that same .proto."""
from .atf_builder import nested_trace
from .wire import fields, first

from lanetrace.export import export_trace


def test_perfetto_wire__nested_trace__then_field_numbers_match_exports_md(tmp_path):
    out = tmp_path / "run.pftrace"
    export_trace(nested_trace(tmp_path / "t"), "perfetto", str(out))
    top = fields(out.read_bytes())
    assert {n for n, _ in top} == {1}  # Trace.packet = 1
    packets = [fields(v) for _, v in top]
    names = {}
    threads = {}
    begins = ends = 0
    for i, p in enumerate(packets):
        assert first(p, 10) == 4242  # trusted_packet_sequence_id (the pid)
        assert first(p, 13) == (1 if i == 0 else 2)  # sequence_flags
        interned = first(p, 12)
        if interned:
            for n, v in fields(interned):
                if n == 2:  # event_names
                    e = fields(v)
                    names[first(e, 1)] = first(e, 2).decode()
        desc = first(p, 60)
        if desc:
            d = fields(desc)
            thread = first(d, 4)
            if thread:
                t = fields(thread)
                threads[first(d, 1)] = (first(t, 1), first(t, 2), first(t, 5).decode())
                assert first(d, 5) is not None  # parent_uuid
        event = first(p, 11)
        if event:
            assert first(p, 58) == 3  # timestamp_clock_id = CLOCK_MONOTONIC
            assert first(p, 8) is not None  # timestamp
            e = fields(event)
            kind = first(e, 9)
            assert first(e, 11) is not None  # track_uuid
            if kind == 1:
                begins += 1
                assert first(e, 10) in names  # name_iid interned before use
            elif kind == 2:
                ends += 1
    assert sorted((pid, tid) for pid, tid, _ in threads.values()) == [(4242, 101), (4242, 202)]
    assert set(names.values()) >= {"main", "parse", "lex", "eval", "worker"}
    assert begins == ends == 6
