"""Reading a captured trace back and comparing it with what the program
reports it did (the examples' LANETRACE_EXPECT files)."""
from __future__ import annotations

import glob
import json
import os
from collections import Counter, defaultdict

from lanetrace.core import atf
from lanetrace.core import atf_v4_pb2 as pb


class Trace:
    def __init__(self, trace_dir: str):
        self.dir = trace_dir
        self.manifest = atf.read_manifest(trace_dir)
        self.symbols = atf.SymbolTable()
        self.entries = Counter()   # (tid, name) -> count
        self.returns = Counter()
        self.by_thread = defaultdict(list)  # tid -> [(seq, ts, kind, name, depth)]
        self.other = []
        for event in atf.iter_events(trace_dir, self.symbols):
            kind = event.WhichOneof("payload")
            if kind in ("function_call", "function_return"):
                name, _ = self.symbols.name_of(event)
                (self.entries if kind == "function_call" else self.returns)[(event.thread_id, name)] += 1
                self.by_thread[event.thread_id].append(
                    (event.sequence, atf.timestamp_ns(event), kind, name, event.depth))
            else:
                self.other.append(event)
        for events in self.by_thread.values():
            events.sort()  # sequence order (see problems_with_order)

    def problems_with_order(self) -> list[str]:
        """Per thread, in sequence order: sequence numbers contiguous (no
        loss, no duplicate) and timestamps monotonic. Sequence order, not file
        order: records that reach the writer late through another lane (the
        GLOBAL_ONLY start, fallback) are appended when they arrive, and the
        format tells readers to sort by (thread_id, sequence)."""
        problems = []
        for tid, events in self.by_thread.items():
            seqs = [e[0] for e in events]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                problems.append(f"tid {tid}: sequence numbers not contiguous")
            ts = [e[1] for e in events]
            if any(b < a for a, b in zip(ts, ts[1:])):
                problems.append(f"tid {tid}: timestamps go backwards")
        return problems


def single_trace_dir(trace_root: str) -> str:
    dirs = glob.glob(os.path.join(trace_root, "*", "pid_*"))
    assert len(dirs) == 1, f"expected one trace under {trace_root}, found {dirs}"
    return dirs[0]


def load_expectation(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def count_mismatches(trace: Trace, expect: dict) -> list[str]:
    """For every thread and function the program reports: ENTRY == RETURN ==
    the real number of calls; and no traced call the program did not make."""
    problems = []
    expected = {}
    for thread in expect["threads"]:
        for name, n in thread["calls"].items():
            expected[(thread["tid"], name)] = n
    for key, n in expected.items():
        if trace.entries[key] != n or trace.returns[key] != n:
            problems.append(f"tid {key[0]} {key[1]}: program made {n} calls, trace has "
                            f"{trace.entries[key]} entries / {trace.returns[key]} returns")
    known = set(expect["functions"])
    for key, n in trace.entries.items():
        if key[1] in known and key not in expected:
            problems.append(f"tid {key[0]} {key[1]}: {n} entries the program did not make")
    return problems


def leftover_segments(session_id: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if session_id in n]


def session_id_of(trace_dir: str) -> str:
    return os.path.basename(os.path.dirname(trace_dir))
