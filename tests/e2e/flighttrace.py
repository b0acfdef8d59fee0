"""Reading a flight-recorder trace back: calls and returns, and those that
carry the flight recorder's detail, by (thread, sequence), with the names the
in-stream symbol table gives."""
from __future__ import annotations

from lanetrace.core import atf


class FlightTrace:
    def __init__(self, trace_dir: str):
        self.dir = trace_dir
        self.manifest = atf.read_manifest(trace_dir)
        self.symbols = atf.SymbolTable()
        self.index = {}    # (tid, seq) -> (kind, name, ts)
        self.detail = {}   # (tid, seq) -> Event that carries detail
        self.signals = []
        for ev in atf.iter_events(trace_dir, self.symbols, include_detail=True):
            kind = ev.WhichOneof("payload")
            if kind == "signal_delivery":
                self.signals.append(ev)
            if kind not in ("function_call", "function_return"):
                continue
            key = (ev.thread_id, ev.sequence)
            assert not ev.detail, f"{key}: a second event for one call"
            assert key not in self.index, f"{key} written twice"
            self.index[key] = (kind, self.symbols.name_of(ev)[0], atf.timestamp_ns(ev))
            if atf.carries_detail(ev):
                self.detail[key] = ev

    def detail_name(self, ev) -> str:
        return self.symbols.name_of(ev)[0]

    def windows(self) -> list[tuple[int, int]]:
        return [(w["startNs"], w["endNs"]) for w in self.manifest["windows"]]

    def in_window(self, ts: int) -> bool:
        return any(s <= ts <= e for s, e in self.windows())

    def detail_drops(self) -> int:
        return sum(v for k, v in self.manifest["drops"].items() if k.startswith("detail_"))
