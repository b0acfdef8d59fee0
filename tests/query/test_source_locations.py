"""functions.list reports DWARF file:line carried by SymbolDefinition events."""
import os

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.query.engine import Engine

from .tracegen import Ev, write_trace


def _add_source_lines(trace_dir, lines):
    path = os.path.join(trace_dir, atf.EVENTS_FILE)
    data = open(path, "rb").read()
    out = bytearray()
    for _, payload, length in atf.scan_frames(data):
        ev = pb.Event.FromString(data[payload:payload + length])
        if ev.WhichOneof("payload") == "symbol_definition":
            src = lines.get(ev.symbol_definition.symbol)
            if src:
                ev.symbol_definition.source_file, ev.symbol_definition.source_line = src
        out += atf.frame(ev.SerializeToString())
    open(path, "wb").write(bytes(out))


def test_functions_list__symbol_definitions_with_source__then_file_and_line_reported(tmp_path):
    trace_dir = str(tmp_path / "s" / "pid_1")
    events = [Ev("start", 0), Ev("call", 10, 7, "parse"), Ev("call", 20, 7, "helper"),
              Ev("ret", 30, 7, "helper"), Ev("ret", 40, 7, "parse"), Ev("end", 50)]
    write_trace(trace_dir, events)
    _add_source_lines(trace_dir, {"parse": ("/src/app/parse.c", 42)})
    rows = Engine(str(tmp_path), subprocess_builds=False).call(
        "functions.list", {"traceId": "s/pid_1", "orderBy": "calls", "limit": 10})["functions"]
    by_name = {r["functionName"]: r for r in rows}
    assert by_name["parse"]["sourceFile"] == "/src/app/parse.c"
    assert by_name["parse"]["sourceLine"] == 42
    assert "sourceFile" not in by_name["helper"]  # no DWARF: names only
