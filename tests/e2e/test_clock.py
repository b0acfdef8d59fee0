"""Timestamps in a trace are CLOCK_MONOTONIC ns, whichever clock the agent
stamped the records with (the TSC where it is invariant, clock_gettime
otherwise or with LANETRACE_CLOCK=monotonic): they fall inside the run as
this process sees it, and the hooked loop spans what the program itself
measured on CLOCK_MONOTONIC."""
import time

import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import Trace, load_expectation, single_trace_dir
from lanetrace._native import lib

pytestmark = pytest.mark.frida

CALLS = 20_000  # 40,000 records: fit the default ring pool, no drops
# rdtsc is not ordered with the program's own clock reads: a few ns either way
ORDER_SLACK_NS = 2_000


@pytest.mark.parametrize("choice", ["auto", "monotonic"])
def test_run__hot_loop__then_timestamps_are_clock_monotonic_ns_inside_the_programs_own_loop_time(
        tmp_path, choice):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    before = time.monotonic_ns()
    proc = run_lanetrace(["run", "-o", str(out), "-i", "hot!hot_fn", "--", example("hot"), str(CALLS)],
                         env={"LANETRACE_EXPECT": str(expect_path), "LANETRACE_CLOCK": choice})
    after = time.monotonic_ns()
    assert proc.returncode == 0, proc.stderr
    trace = Trace(single_trace_dir(str(out)))
    tsc = choice == "auto" and lib.lt_tsc_invariant()
    assert trace.manifest["registryModes"]["recordClock"] == ("tsc" if tsc else "monotonic")
    assert trace.problems_with_order() == []
    events = [e for evs in trace.by_thread.values() for e in evs if e[3] == "hot_fn"]
    assert len(events) == 2 * CALLS
    stamps = [e[1] for e in events]
    assert before <= min(stamps) and max(stamps) <= after
    loop_ns = load_expectation(str(expect_path))["loop_ns"]
    span = max(stamps) - min(stamps)
    # inside the program's own two clock reads around the loop (a rate off by
    # a fraction of a percent would stretch it past them), and most of it: the
    # thread's first event sets up its state before its stamp
    assert loop_ns // 4 <= span <= loop_ns + ORDER_SLACK_NS, (span, loop_ns)
