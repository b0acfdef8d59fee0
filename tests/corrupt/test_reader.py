"""The two read paths (atf.iter_events, which the exporters and diff stream,
and the query index, which the server and the trace views use) on corrupt
traces: an error that says which file, where and what; never an empty or
shorter trace. A torn tail is cut and counted."""
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanetrace.core import atf
from lanetrace.query import index as ix
from lanetrace.query.engine import Engine
from lanetrace.query.errors import INTERNAL_ERROR, RpcError

from corrupt import corruptions
from corrupt.corruptions import CASES, GOOD_EVENTS


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("corrupt"))
    patterns = {name: corruptions.make(base, name)[1] for name in CASES}
    corruptions.good_trace(os.path.join(base, "good"))
    corruptions.torn_tail(base)
    return base, patterns


@pytest.mark.parametrize("case", CASES)
def test_iter_events__corrupt_trace__then_format_error_naming_the_fault(root, case):
    base, patterns = root
    with pytest.raises(atf.TraceFormatError) as exc:
        list(atf.iter_events(os.path.join(base, case), atf.SymbolTable()))
    assert patterns[case].search(str(exc.value)), str(exc.value)


@pytest.mark.parametrize("scanner", ["native", "python"])
@pytest.mark.parametrize("case", CASES)
def test_trace_store__corrupt_trace__then_32603_failed_to_load(root, case, scanner, monkeypatch):
    if scanner == "native" and not ix.HAVE_NATIVE:
        pytest.skip("native scanner not built")
    monkeypatch.setattr(ix, "HAVE_NATIVE", scanner == "native")
    base, patterns = root
    eng = Engine(base, index_cache=tempfile.mkdtemp(prefix="qidx-"), subprocess_builds=False)
    with pytest.raises(RpcError) as exc:
        eng.call("trace.info", {"traceId": case})
    assert exc.value.code == INTERNAL_ERROR
    assert exc.value.data.startswith("failed to load trace: ")
    assert patterns[case].search(exc.value.data), exc.value.data
    assert base not in exc.value.data  # paths relative to the root


def test_iter_events__torn_tail__then_whole_frames_read_and_tail_counted(root):
    base, _ = root
    report = atf.ReadReport()
    events = list(atf.iter_events(os.path.join(base, "torn"), report=report))
    assert len(events) == report.events == GOOD_EVENTS
    assert report.torn_tail_bytes == len(corruptions.TORN_TAIL)


def test_iter_events__torn_tail_across_chunks__then_counted_once(root):
    base, _ = root
    report = atf.ReadReport()
    events = list(atf.iter_events(os.path.join(base, "torn"), report=report, chunk_size=7))
    assert len(events) == GOOD_EVENTS and report.torn_tail_bytes == len(corruptions.TORN_TAIL)


@pytest.mark.parametrize("scanner", ["native", "python"])
def test_trace_info__torn_tail__then_events_served_and_tail_counted(root, scanner, monkeypatch):
    if scanner == "native" and not ix.HAVE_NATIVE:
        pytest.skip("native scanner not built")
    monkeypatch.setattr(ix, "HAVE_NATIVE", scanner == "native")
    base, _ = root
    eng = Engine(base, index_cache=tempfile.mkdtemp(prefix="qidx-"), subprocess_builds=False)
    info = eng.call("trace.info", {"traceId": "torn"})
    assert info["eventCount"] == GOOD_EVENTS
    assert info["files"]["tornTailBytes"] == len(corruptions.TORN_TAIL)
    assert eng.call("trace.info", {"traceId": "good"})["files"]["tornTailBytes"] == 0


def test_iter_events__partial_frame_with_impossible_length__then_fails_before_reading_on(tmp_path):
    """A 4 GiB length prefix mid-stream fails at once, not after buffering
    the rest of the file looking for the frame's end."""
    d = corruptions.good_trace(str(tmp_path / "t"))
    with open(os.path.join(d, atf.EVENTS_FILE), "ab") as f:
        f.write(b"\xff\xff\xff\xff\x0f" + b"\x00" * (1 << 20))
    seen = []
    with pytest.raises(atf.TraceFormatError, match="says 4294967295 bytes"):
        for _ in atf.iter_events(d, progress=lambda done, total: seen.append(done),
                                 chunk_size=4096):
            pass
    assert max(seen, default=0) < 8192


# ---- fuzzing: whatever the bytes, an error or every counted event ----------

_GOOD = {}


def _good_image():
    if not _GOOD:
        d = tempfile.mkdtemp(prefix="good-")
        corruptions.good_trace(d)
        for name in (atf.EVENTS_FILE, atf.MANIFEST_FILE, atf.SYMBOLS_FILE):
            with open(os.path.join(d, name), "rb") as f:
                _GOOD[name] = f.read()
        shutil.rmtree(d)
    return _GOOD


@st.composite
def damaged(draw):
    data = bytearray(_good_image()[atf.EVENTS_FILE])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


def _read_both(events: bytes, manifest: bytes):
    """(events iter_events yields or its error, eventCount the index serves
    or its error) of one trace holding these files."""
    base = tempfile.mkdtemp(prefix="fuzz-")
    try:
        d = os.path.join(base, "t")
        os.makedirs(d)
        for name, data in ((atf.EVENTS_FILE, events), (atf.MANIFEST_FILE, manifest),
                           (atf.SYMBOLS_FILE, _good_image()[atf.SYMBOLS_FILE])):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        try:
            streamed = len(list(atf.iter_events(d, atf.SymbolTable())))
        except atf.TraceFormatError as exc:
            streamed = exc
        eng = Engine(base, subprocess_builds=False)
        try:
            served = eng.call("trace.info", {"traceId": "t"})["eventCount"]
            # what decodes events lazily (args, replay) meets the damage as -32603 too
            for method, params in (("events.get", {"projection": {"args": True}}),
                                   ("calltree.get", {"args": True})):
                try:
                    eng.call(method, {"traceId": "t", **params})
                except RpcError as exc:
                    assert exc.code == INTERNAL_ERROR, exc
        except RpcError as exc:
            assert exc.code == INTERNAL_ERROR and exc.data.startswith("failed to load trace: ")
            served = exc
        return streamed, served
    finally:
        shutil.rmtree(base)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_readers__damaged_events_bin__then_error_or_every_counted_event(events):
    streamed, served = _read_both(events, _good_image()[atf.MANIFEST_FILE])
    for got in (streamed, served):
        assert isinstance(got, Exception) or got >= GOOD_EVENTS, got


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=64), st.integers(1, 5))
def test_readers__random_bytes_with_a_manifest_counting_events__then_never_empty(events, count):
    manifest = b'{"formatVersion": "ATF V4", "eventCount": %d}' % count
    streamed, served = _read_both(events, manifest)
    for got in (streamed, served):
        assert isinstance(got, Exception) or got >= count, got


def test_readers__manifest_behind_events_bin__then_every_event_served(tmp_path):
    """A live trace: the writer appends, then rewrites trace.json, so a
    manifest that counts fewer events than events.bin holds is not damage."""
    base = str(tmp_path)
    d = corruptions.good_trace(os.path.join(base, "live"))
    corruptions.edit_manifest(d, eventCount=GOOD_EVENTS - 5, complete=False)
    assert len(list(atf.iter_events(d))) == GOOD_EVENTS
    eng = Engine(base, subprocess_builds=False)
    assert eng.call("trace.info", {"traceId": "live"})["eventCount"] == GOOD_EVENTS
