"""A hot loop against a deliberately tiny ring budget, end to end: with
--no-drop every call is in the trace; by default the excess is dropped and
counted exactly (recorded + dropped == what the program did)."""
import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import Trace, load_expectation, single_trace_dir

pytestmark = pytest.mark.frida

CALLS = 60_000
# 2 rings of 4 KiB (128 records each) per thread and no shared pool: a loop
# that calls hot_fn back to back fills them in microseconds, far faster than
# any drainer returns them.
TINY_RINGS = ["--ring-kb", "4", "--rings-per-lane", "2", "--ring-budget-mb", "0"]


def _run_hot(tmp_path, *options):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), *TINY_RINGS, *options, "-i", "hot!hot_fn", "--",
                          example("hot"), str(CALLS)],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    return Trace(single_trace_dir(str(out))), load_expectation(str(expect_path))


def _recorded(trace):
    return sum(n for (_, name), n in trace.entries.items() if name == "hot_fn") + \
        sum(n for (_, name), n in trace.returns.items() if name == "hot_fn")


def test_run__no_drop_with_tiny_ring_budget__then_every_call_recorded_and_nothing_dropped(tmp_path):
    trace, expect = _run_hot(tmp_path, "--no-drop", "--block-timeout-ms", "30000")
    made = {t["tid"]: t["calls"]["hot_fn"] for t in expect["threads"] if "hot_fn" in t["calls"]}
    assert made == {tid: CALLS for tid in made} and len(made) == 1
    assert {k: n for k, n in trace.entries.items() if k[1] == "hot_fn"} == \
        {(tid, "hot_fn"): CALLS for tid in made}
    assert _recorded(trace) == 2 * CALLS
    assert sum(trace.manifest["drops"].values()) == 0
    assert trace.problems_with_order() == []
    pool = trace.manifest["registryModes"]["ringPool"]
    assert pool["noDrop"] is True and pool["blockedWaits"] > 0  # it really had to wait


def test_run__default_policy_with_tiny_ring_budget__then_drops_counted_exactly(tmp_path):
    trace, _ = _run_hot(tmp_path)
    drops = trace.manifest["drops"]
    assert drops.get("pool_exhausted", 0) > 0 and drops.get("blocked_timeout", 0) == 0
    assert _recorded(trace) + sum(drops.values()) == 2 * CALLS


def test_ctl_attach__no_drop_on_a_daemon_with_tiny_rings__then_that_target_loses_nothing(tmp_path):
    from supervise.daemonkit import Daemon

    daemon = Daemon(tmp_path / "traces", extra=TINY_RINGS)
    try:
        daemon.start()
        expect_path = tmp_path / "expect.json"
        pid = daemon.spawn([example("hot"), str(CALLS)], expect_path,
                           ["--no-drop", "--block-timeout-ms", "30000", "-i", "hot!hot_fn"])
        entry = daemon.wait_ended(pid)
        assert entry["exitCode"] == 0 and not entry["error"], entry
        trace = Trace(daemon.trace_dir(pid))
        assert _recorded(trace) == 2 * CALLS
        assert sum(trace.manifest["drops"].values()) == 0
        assert trace.manifest["registryModes"]["ringPool"]["noDrop"] is True
    finally:
        daemon.cleanup()
