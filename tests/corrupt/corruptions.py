"""Corrupt traces, each made from a good one (query.tracegen's simple trace:
15 events, a TraceStart first) by one kind of damage, with the words the
error must contain wherever a reader meets it."""
from __future__ import annotations

import os
import re
import shutil

import orjson

from lanetrace.core import atf

from query import tracegen

GOOD_EVENTS = 15


def good_trace(trace_dir: str) -> str:
    return tracegen.write_trace(trace_dir, tracegen.simple_events(), flavour="ours")


def frame_offsets(trace_dir: str) -> list[int]:
    data = _read(trace_dir, atf.EVENTS_FILE)
    return [off for off, _, _ in atf.scan_frames(data)]


def _read(trace_dir, name) -> bytes:
    with open(os.path.join(trace_dir, name), "rb") as f:
        return f.read()


def _write(trace_dir, name, data: bytes) -> None:
    with open(os.path.join(trace_dir, name), "wb") as f:
        f.write(data)


def edit_manifest(trace_dir, **changes) -> None:
    m = orjson.loads(_read(trace_dir, atf.MANIFEST_FILE))
    m.update(changes)
    _write(trace_dir, atf.MANIFEST_FILE, orjson.dumps(m))


def impossible_length(d):
    """The issue's case: the first length prefix says 4 GiB in a 13-byte file."""
    _write(d, atf.EVENTS_FILE, b"\xff\xff\xff\xff\x0f" + b"\x08\x01\x10\x02\x18\x03\x20\x04")
    edit_manifest(d, eventCount=3)
    return r"offset 0 of 13 bytes: the frame length prefix says 4294967295 bytes"


def garbage_frame_in_the_middle(d):
    """A whole frame that is not an Event (field 1, wire type 7), then more events."""
    offsets = frame_offsets(d)
    data = _read(d, atf.EVENTS_FILE)
    at = offsets[4]
    _write(d, atf.EVENTS_FILE, data[:at] + atf.frame(b"\x0f\x01") + data[at:])
    return rf"corrupt event at offset {at}\b"


def events_lost(d):
    """events.bin cut at a frame boundary: fewer events than the manifest counts."""
    offsets = frame_offsets(d)
    data = _read(d, atf.EVENTS_FILE)
    _write(d, atf.EVENTS_FILE, data[:offsets[-3]])
    return r"holds 12 events but trace\.json counts 15"


def wrong_version(d):
    edit_manifest(d, formatVersion="ATF V3")
    return r"formatVersion is 'ATF V3', not 'ATF V4'"


def manifest_not_an_object(d):
    _write(d, atf.MANIFEST_FILE, b"[1, 2]")
    return r"trace\.json: not a JSON object"


def events_missing(d):
    os.unlink(os.path.join(d, atf.EVENTS_FILE))
    return r"no events\.bin|events\.bin is missing"


def symbols_unreadable(d):
    _write(d, atf.SYMBOLS_FILE, b'{"functions": [{"id": 1, "na')
    return r"symbols\.json is not valid JSON"


def overlong_length_prefix(d):
    """After whole frames, a length prefix of more than 10 bytes."""
    with open(os.path.join(d, atf.EVENTS_FILE), "ab") as f:
        f.write(b"\x80" * 12)
    return r"length prefix is longer than 10 bytes"


def lone_torn_frame(d):
    """A file that is only the start of one frame: nothing was ever whole."""
    _write(d, atf.EVENTS_FILE, b"\x40\x08\x01")
    edit_manifest(d, eventCount=0)
    return r"no whole frame precedes it"


CASES = {f.__name__: f for f in (
    impossible_length, garbage_frame_in_the_middle, events_lost, wrong_version,
    manifest_not_an_object, events_missing, symbols_unreadable, overlong_length_prefix,
    lone_torn_frame)}


def make(root: str, name: str) -> tuple[str, re.Pattern]:
    """A trace directory ``root/name`` damaged as ``CASES[name]`` does, and
    the pattern its error must match."""
    d = os.path.join(root, name)
    shutil.rmtree(d, ignore_errors=True)
    good_trace(d)
    return d, re.compile(CASES[name](d))


TORN_TAIL = b"\x40\x08\x01"  # claims 64 bytes, has 2: a writer killed mid-append


def torn_tail(root: str, name: str = "torn") -> str:
    d = os.path.join(root, name)
    good_trace(d)
    with open(os.path.join(d, atf.EVENTS_FILE), "ab") as f:
        f.write(TORN_TAIL)
    return d
