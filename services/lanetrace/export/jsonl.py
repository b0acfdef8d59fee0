"""JSON lines: one object per event, in file order (per thread in order;
threads interleave as recorded). Field names follow the query API
(``timestampNs``, ``threadId``, PascalCase ``eventType``, ...). Persistence
windows come first as ``{"eventType": "PersistenceWindow", ...}`` lines."""
from __future__ import annotations

import orjson

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb
from lanetrace.export.frames import FuncInfo, Sink
from lanetrace.export.output import AtomicOutput
from lanetrace.export.tracedir import Window


class JsonlSink(Sink):
    wants_events = True

    def __init__(self, out: AtomicOutput):
        self.out = out

    def windows(self, windows: list[Window]) -> None:
        for w in windows:
            self.out.write(orjson.dumps({"eventType": "PersistenceWindow", "startNs": w.start_ns,
                                         "endNs": w.end_ns, "trigger": w.trigger}) + b"\n")

    def event(self, ev: pb.Event, kind: str, ts: int, func: FuncInfo | None, depth: int) -> None:
        obj = {"timestampNs": ts, "threadId": ev.thread_id,
               "eventType": atf.PAYLOAD_EVENT_TYPES.get(kind or "", "Unknown")}
        if func is not None:
            obj["functionName"] = func.name
            obj["module"] = func.module
            if func.address:
                obj["address"] = func.address
            if func.source_file:
                obj["sourceFile"] = func.source_file
                obj["sourceLine"] = func.source_line
            obj["depth"] = depth
            if kind == "function_call":
                regs = ev.function_call.argument_registers
            else:
                regs = ev.function_return.return_registers
                if ev.function_return.unwound:
                    obj["unwound"] = True
            if len(regs):
                obj["args"] = dict(regs)
        elif kind == "signal_delivery":
            sd = ev.signal_delivery
            obj["signal"] = {"number": sd.number, "name": sd.name}
            if len(sd.registers):
                obj["args"] = dict(sd.registers)
        elif kind == "trace_start":
            st = ev.trace_start
            obj["executablePath"] = st.executable_path
            obj["argv"] = list(st.args)
        elif kind == "trace_end":
            obj["exitCode"] = ev.trace_end.exit_code
            if ev.trace_end.signal:
                obj["signal"] = ev.trace_end.signal
        if ev.sequence:
            obj["sequence"] = ev.sequence
        self.out.write(orjson.dumps(obj) + b"\n")
