"""Exports stream: memory does not grow with the number of events."""
import os
import subprocess
import sys
import tracemalloc

import pytest

from .atf_builder import TraceBuilder

from lanetrace.export import ExportOptions, export_trace


def build(path, events):
    """Two threads, 50 functions, a register payload every 100th call."""
    b = TraceBuilder(path)
    b.start(1)
    ts, i = 10, 0
    while b.count < events:
        for tid in (1, 2):
            name = f"fn{i % 50}"
            b.call(tid, ts, "outer")
            b.call(tid, ts + 1, name, args={"rdi": i} if i % 100 == 0 else None)
            b.ret(tid, ts + 4, name)
            b.ret(tid, ts + 5, "outer")
            ts += 6
            i += 1
    # One call never returns: the open-frame path is exercised at the end too.
    b.call(1, ts, "never_returns")
    b.end(ts + 10)
    return b.close()


def peak_bytes(trace_dir, fmt, out):
    tracemalloc.start()
    try:
        export_trace(trace_dir, fmt, str(out), ExportOptions(progress=False))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["chrome", "folded", "jsonl", "perfetto"])
def test_export_memory__five_times_more_events__then_peak_does_not_grow(tmp_path, fmt):
    small = build(tmp_path / "small", 12_000)
    large = build(tmp_path / "large", 60_000)
    peak_small = peak_bytes(small, fmt, tmp_path / "small.out")
    peak_large = peak_bytes(large, fmt, tmp_path / "large.out")
    extra_input = (os.path.getsize(os.path.join(large, "events.bin"))
                   - os.path.getsize(os.path.join(small, "events.bin")))
    # Holding the events, or even the raw file, would grow the peak by at
    # least the extra input (1.3 MB); streaming grows it by next to nothing.
    assert peak_large - peak_small < min(256 * 1024, extra_input // 5), (peak_small, peak_large)


CHILD = """
import resource, sys
from lanetrace.export import ExportOptions, export_trace
export_trace(sys.argv[1], sys.argv[3], sys.argv[2], ExportOptions(progress=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def child_max_rss_kb(trace_dir, out, fmt):
    result = subprocess.run([sys.executable, "-c", CHILD, str(trace_dir), str(out), fmt],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.slow
def test_export_memory__million_event_trace__then_rss_stays_near_baseline(tmp_path):
    tiny = build(tmp_path / "tiny", 1_000)
    big = build(tmp_path / "big", 1_000_000)
    big_file = os.path.getsize(os.path.join(big, "events.bin"))
    baseline = child_max_rss_kb(tiny, tmp_path / "tiny.pftrace", "perfetto")
    rss = child_max_rss_kb(big, tmp_path / "big.pftrace", "perfetto")
    assert os.path.getsize(tmp_path / "big.pftrace") > big_file // 2  # it really exported
    # Far below the 28 MB events file, let alone decoded events.
    assert (rss - baseline) * 1024 < big_file // 3, (baseline, rss, big_file)
