"""Reads a Perfetto trace back the way trace_processor does, for the tests:
sequence flags gate interned data, interned names resolve per sequence,
events are sorted by timestamp (stably) and an END closes the innermost open
slice of its track. Any violation raises AssertionError."""
from __future__ import annotations

from dataclasses import dataclass, field

from lanetrace.export import perfetto_trace_subset_pb2 as ppb


@dataclass
class Slice:
    track: int
    name: str
    ts: int
    dur: int = -1
    depth: int = 0
    category: str = ""
    args: dict = field(default_factory=dict)
    source: tuple | None = None


@dataclass
class Model:
    packets: list
    tracks: dict            # uuid -> TrackDescriptor
    slices: list            # closed and unclosed slices
    instants: list

    def thread_track(self, tid: int) -> int:
        found = [u for u, d in self.tracks.items() if d.HasField("thread") and d.thread.tid == tid]
        assert len(found) == 1, f"expected one track for tid {tid}, got {found}"
        return found[0]

    def slices_on(self, uuid: int) -> list:
        return sorted((s for s in self.slices if s.track == uuid), key=lambda s: (s.ts, s.depth))


def load(path) -> Model:
    with open(path, "rb") as f:
        trace = ppb.Trace.FromString(f.read())
    packets = list(trace.packet)
    assert packets, "empty trace"
    state_valid: dict[int, bool] = {}
    names: dict[int, dict] = {}
    cats: dict[int, dict] = {}
    ann: dict[int, dict] = {}
    locs: dict[int, dict] = {}
    tracks = {}
    events = []  # (ts, order, packet-level resolved event)
    for order, p in enumerate(packets):
        seq = p.trusted_packet_sequence_id
        assert seq, "every packet carries a sequence id"
        if p.sequence_flags & ppb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            state_valid[seq] = True
            names[seq], cats[seq], ann[seq], locs[seq] = {}, {}, {}, {}
        if p.sequence_flags & ppb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE:
            assert state_valid.get(seq), f"packet {order} needs incremental state before it was cleared"
        if p.HasField("interned_data"):
            assert state_valid.get(seq), f"packet {order} interns data on an invalid sequence"
            for e in p.interned_data.event_names:
                assert e.iid not in names[seq], "iid reused"
                names[seq][e.iid] = e.name
            for e in p.interned_data.event_categories:
                cats[seq][e.iid] = e.name
            for e in p.interned_data.debug_annotation_names:
                ann[seq][e.iid] = e.name
            for e in p.interned_data.source_locations:
                locs[seq][e.iid] = (e.file_name, e.line_number, e.function_name)
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            assert d.uuid not in tracks, f"track {d.uuid} declared twice"
            if d.HasField("parent_uuid"):
                assert d.parent_uuid in tracks, "parent track declared before child"
            tracks[d.uuid] = d
        if p.HasField("track_event"):
            te = p.track_event
            assert p.timestamp_clock_id == 3, "timestamps are CLOCK_MONOTONIC"
            assert te.track_uuid in tracks, f"event on undeclared track {te.track_uuid}"
            name = None
            if te.HasField("name_iid"):
                assert te.name_iid in names[seq], f"name_iid {te.name_iid} not interned yet"
                name = names[seq][te.name_iid]
            elif te.HasField("name"):
                name = te.name
            args = {}
            for a in te.debug_annotations:
                key = ann[seq][a.name_iid] if a.HasField("name_iid") else a.name
                args[key] = getattr(a, a.WhichOneof("value"))
            category = ",".join(cats[seq][i] for i in te.category_iids)
            source = locs[seq][te.source_location_iid] if te.HasField("source_location_iid") else None
            events.append((p.timestamp, order, te.type, te.track_uuid, name, args, category, source))
    events.sort(key=lambda e: (e[0], e[1]))
    open_by_track: dict[int, list] = {}
    slices, instants = [], []
    for ts, _, kind, track, name, args, category, source in events:
        stack = open_by_track.setdefault(track, [])
        if kind == ppb.TrackEvent.TYPE_SLICE_BEGIN:
            s = Slice(track, name, ts, depth=len(stack), category=category, args=dict(args),
                      source=source)
            stack.append(s)
            slices.append(s)
        elif kind == ppb.TrackEvent.TYPE_SLICE_END:
            assert stack, f"misplaced END at {ts} on track {track}"
            s = stack.pop()
            s.dur = ts - s.ts
            s.args.update(args)  # END args merge into the slice
        elif kind == ppb.TrackEvent.TYPE_INSTANT:
            instants.append(Slice(track, name, ts, 0, len(stack), category, dict(args)))
    return Model(packets, tracks, slices, instants)
