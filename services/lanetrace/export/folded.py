"""Folded stacks (``frame;frame;frame count``) for flamegraph.pl, inferno
and speedscope.

Each distinct stack is interned as a node of a prefix tree, so memory grows
with the number of distinct stacks, never with the number of events. Weights:
``time`` (default) is each frame's self time in ns, so the lines ending in a
function sum to that function's total self time; ``calls`` counts calls, so
they sum to its call count. Persistence windows are written as leading
``#`` comment lines that end in ``]``, which every folded reader skips as a
line without a trailing count.
"""
from __future__ import annotations

import orjson

from lanetrace.export.frames import Frame, Sink
from lanetrace.export.output import AtomicOutput
from lanetrace.export.perfetto import thread_label
from lanetrace.export.tracedir import Window

WEIGHTS = ("time", "calls")


def frame_name(name: str) -> str:
    # ';' separates frames and a newline ends the record.
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ") or "?"


class FoldedSink(Sink):
    def __init__(self, out: AtomicOutput, weight: str = "time", per_thread: bool = False):
        if weight not in WEIGHTS:
            raise ValueError(f"unknown weight {weight!r} (choose from {', '.join(WEIGHTS)})")
        self.out = out
        self.by_time = weight == "time"
        self.per_thread = per_thread
        self._children: dict[tuple[int, str], int] = {}
        self._parent: list[int] = [-1]  # node 0 is the root
        self._name: list[str] = [""]
        self._weight: dict[int, int] = {}
        self._thread_root: dict[int, int] = {}

    def _node(self, parent: int, name: str) -> int:
        key = (parent, name)
        node = self._children.get(key)
        if node is None:
            node = self._children[key] = len(self._name)
            self._parent.append(parent)
            self._name.append(name)
        return node

    def windows(self, windows: list[Window]) -> None:
        for w in windows:
            self.out.write(b"# lanetrace persistence window [startNs=%d endNs=%d trigger=%s]\n"
                           % (w.start_ns, w.end_ns, orjson.dumps(w.trigger)))

    def thread(self, tid: int, name: str) -> None:
        self._thread_root[tid] = (self._node(0, frame_name(thread_label(tid, name)))
                                  if self.per_thread else 0)

    def begin(self, tid: int, ts: int, frame: Frame) -> None:
        parent = frame.parent
        base = parent.node if parent is not None and parent.shown is not None else self._thread_root[tid]
        frame.node = self._node(base, frame_name(frame.func.name))

    def end(self, tid: int, ts: int, frame: Frame, ret, flag) -> None:
        w = (ts - frame.shown - frame.child) if self.by_time else 1
        if w:
            self._weight[frame.node] = self._weight.get(frame.node, 0) + w

    def finish(self, end_ts: int) -> None:
        parent, names = self._parent, self._name
        lines = []
        for node, w in self._weight.items():
            path = []
            while node > 0:
                path.append(names[node])
                node = parent[node]
            path.reverse()
            lines.append(f"{';'.join(path)} {w}\n")
        lines.sort()  # stable output: diffable and easy to test
        for line in lines:
            self.out.write(line.encode())
