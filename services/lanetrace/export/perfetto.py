"""Perfetto protobuf writer: a ``Trace`` of ``TracePacket``s with TrackEvent
slices, one track per thread under one process track, for ui.perfetto.dev
and trace_processor.

Layout follows EXPORTS.md: one packet sequence per target; its first packet
clears the incremental state and every later one needs it; function names,
modules (as categories), annotation names and source locations are interned,
so the file grows with the number of events, not with the length of names.
Timestamps are CLOCK_MONOTONIC (clock id 3; or the manifest's "clock"),
declared the primary trace clock by a leading ClockSnapshot.
"""
from __future__ import annotations

from lanetrace.core.atf import encode_varint
from lanetrace.export import perfetto_trace_subset_pb2 as ppb
from lanetrace.export.frames import Frame, Sink
from lanetrace.export.output import AtomicOutput
from lanetrace.export.tracedir import TraceMeta, Window

CLOCK_MONOTONIC = 3
# trace.json "clock" -> Perfetto builtin clock id. Our writer records
# CLOCK_MONOTONIC; the others are there for foreign ATF V4 writers.
CLOCK_IDS = {"monotonic": 3, "boottime": 6, "realtime": 1, "monotonic_raw": 5}
SEQ_INCREMENTAL_STATE_CLEARED = ppb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
SEQ_NEEDS_INCREMENTAL_STATE = ppb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
BEGIN = ppb.TrackEvent.TYPE_SLICE_BEGIN
END = ppb.TrackEvent.TYPE_SLICE_END
INSTANT = ppb.TrackEvent.TYPE_INSTANT
TRACE_PACKET_TAG = b"\x0a"  # Trace.packet = 1, length-delimited

# Track uuids are global to a trace; deriving them from pid/tid keeps them
# unique when exports of several processes are loaded together.
_PROCESS_KIND, _THREAD_KIND, _WINDOW_KIND = 1, 2, 3


def sequence_id(pid: int) -> int:
    # Interning is scoped to a packet sequence; a pid-derived id keeps the
    # exports of several targets of a session apart when they are concatenated
    # into one file (a Perfetto trace is just a stream of packets).
    return (pid & 0xFFFFFFFF) or 1


def process_uuid(pid: int) -> int:
    return (_PROCESS_KIND << 60) | (pid & 0xFFFFFFFF)


def thread_uuid(pid: int, tid: int) -> int:
    return (_THREAD_KIND << 60) | ((pid & 0x3FFFFFF) << 32) | (tid & 0xFFFFFFFF)


def window_uuid(pid: int, lane: int) -> int:
    return (_WINDOW_KIND << 60) | ((pid & 0xFFFFFFFF) << 16) | lane


def thread_label(tid: int, name: str) -> str:
    return f"{name} (tid {tid})" if name else f"tid {tid}"


class PerfettoSink(Sink):
    def __init__(self, out: AtomicOutput):
        self.out = out
        self.pid = 0
        self.clock_id = CLOCK_MONOTONIC
        self.sequence_id = 1
        self._first = True
        self._tracks: dict[int, int] = {}
        self._names: dict[str, int] = {}
        self._categories: dict[str, int] = {}
        self._annotation_names: dict[str, int] = {}
        self._locations: dict[tuple, int] = {}

    # -- packet plumbing -----------------------------------------------------
    def _packet(self) -> ppb.TracePacket:
        p = ppb.TracePacket()
        p.trusted_packet_sequence_id = self.sequence_id
        if self._first:
            p.sequence_flags = SEQ_INCREMENTAL_STATE_CLEARED
            p.first_packet_on_sequence = True
            self._first = False
        else:
            p.sequence_flags = SEQ_NEEDS_INCREMENTAL_STATE
        return p

    def _emit(self, p: ppb.TracePacket) -> None:
        data = p.SerializeToString()
        self.out.write(TRACE_PACKET_TAG + encode_varint(len(data)) + data)

    def _event_packet(self, ts: int, kind: int, track: int) -> tuple[ppb.TracePacket, ppb.TrackEvent]:
        p = self._packet()
        p.timestamp = ts
        p.timestamp_clock_id = self.clock_id
        te = p.track_event
        te.type = kind
        te.track_uuid = track
        return p, te

    def _name_iid(self, p: ppb.TracePacket, name: str) -> int:
        iid = self._names.get(name)
        if iid is None:
            iid = self._names[name] = len(self._names) + 1
            e = p.interned_data.event_names.add()
            e.iid, e.name = iid, name
        return iid

    def _category_iid(self, p: ppb.TracePacket, name: str) -> int:
        iid = self._categories.get(name)
        if iid is None:
            iid = self._categories[name] = len(self._categories) + 1
            e = p.interned_data.event_categories.add()
            e.iid, e.name = iid, name
        return iid

    def _annotation_iid(self, p: ppb.TracePacket, name: str) -> int:
        iid = self._annotation_names.get(name)
        if iid is None:
            iid = self._annotation_names[name] = len(self._annotation_names) + 1
            e = p.interned_data.debug_annotation_names.add()
            e.iid, e.name = iid, name
        return iid

    def _annotate(self, p: ppb.TracePacket, te: ppb.TrackEvent, name: str, value) -> None:
        a = te.debug_annotations.add()
        a.name_iid = self._annotation_iid(p, name)
        if isinstance(value, bool):
            a.bool_value = value
        elif isinstance(value, int):
            if value >= 0:
                a.uint_value = value
            else:
                a.int_value = value
        else:
            a.string_value = str(value)

    def _location_iid(self, p: ppb.TracePacket, func) -> int:
        key = (func.source_file, func.source_line, func.name)
        iid = self._locations.get(key)
        if iid is None:
            iid = self._locations[key] = len(self._locations) + 1
            loc = p.interned_data.source_locations.add()
            loc.iid = iid
            loc.file_name = func.source_file
            loc.function_name = func.name
            if func.source_line:
                loc.line_number = func.source_line
        return iid

    def _descriptor(self, uuid: int) -> tuple[ppb.TracePacket, ppb.TrackDescriptor]:
        p = self._packet()
        d = p.track_descriptor
        d.uuid = uuid
        return p, d

    # -- Sink ------------------------------------------------------------------
    def process(self, meta: TraceMeta) -> None:
        self.pid = meta.pid
        self.sequence_id = sequence_id(meta.pid)
        self.clock_id = CLOCK_IDS.get(meta.clock, CLOCK_MONOTONIC)
        p = self._packet()
        snap = p.clock_snapshot
        snap.primary_trace_clock = self.clock_id
        clock = snap.clocks.add()
        clock.clock_id = self.clock_id
        clock.timestamp = 0
        self._emit(p)
        p, d = self._descriptor(process_uuid(self.pid))
        d.process.pid = self.pid
        d.process.process_name = meta.process_name
        d.process.cmdline.extend(meta.cmdline)
        self._emit(p)

    def windows(self, windows: list[Window]) -> None:
        # Overlapping windows would misnest on one track: give each a lane
        # (track) whose previous window has ended.
        lane_ends: list[int] = []
        for w in windows:
            lane = next((i for i, end in enumerate(lane_ends) if end <= w.start_ns), None)
            if lane is None:
                lane = len(lane_ends)
                lane_ends.append(w.end_ns)
                p, d = self._descriptor(window_uuid(self.pid, lane))
                d.parent_uuid = process_uuid(self.pid)
                d.name = "persistence windows" if lane == 0 else f"persistence windows {lane + 1}"
                self._emit(p)
            lane_ends[lane] = w.end_ns
            track = window_uuid(self.pid, lane)
            p, te = self._event_packet(w.start_ns, BEGIN, track)
            te.name_iid = self._name_iid(p, f"window: {w.trigger}" if w.trigger else "window")
            self._annotate(p, te, "trigger", w.trigger)
            self._annotate(p, te, "startNs", w.start_ns)
            self._annotate(p, te, "endNs", w.end_ns)
            self._emit(p)
            p, te = self._event_packet(w.end_ns, END, track)
            self._emit(p)

    def thread(self, tid: int, name: str) -> None:
        uuid = self._tracks[tid] = thread_uuid(self.pid, tid)
        p, d = self._descriptor(uuid)
        d.parent_uuid = process_uuid(self.pid)
        d.thread.pid = self.pid
        d.thread.tid = tid
        d.thread.thread_name = thread_label(tid, name)
        self._emit(p)

    def begin(self, tid: int, ts: int, frame: Frame) -> None:
        func = frame.func
        p, te = self._event_packet(ts, BEGIN, self._tracks[tid])
        te.name_iid = self._name_iid(p, func.name)
        if func.module:
            te.category_iids.append(self._category_iid(p, func.module))
        if func.source_file:
            te.source_location_iid = self._location_iid(p, func)
        if frame.shown != frame.start:
            self._annotate(p, te, "clippedStart", True)
        if frame.args:
            for reg, value in frame.args.items():
                self._annotate(p, te, f"arg.{reg}", value)
        self._emit(p)

    def end(self, tid: int, ts: int, frame: Frame, ret, flag) -> None:
        p, te = self._event_packet(ts, END, self._tracks[tid])
        if ret:
            for reg, value in ret.items():
                self._annotate(p, te, f"ret.{reg}", value)
        if flag:
            self._annotate(p, te, flag, True)
        self._emit(p)

    def instant(self, tid: int, ts: int, name: str, args: dict) -> None:
        p, te = self._event_packet(ts, INSTANT, self._tracks[tid])
        te.name_iid = self._name_iid(p, name)
        for key, value in args.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    self._annotate(p, te, f"{key}.{k}", v)
            else:
                self._annotate(p, te, key, value)
        self._emit(p)
