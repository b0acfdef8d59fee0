"""bench/throughput.py --quick: the table has every workload and variant, and
its figures agree with each other (never with a timing)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "throughput.py")
WORKLOADS = ("hot", "hot2", "sqlite", "workers")
VARIANTS = ("untraced", "lanetrace", "lanetrace-nodrop", "uftrace-P", "uftrace-pg", "frida-attach")
HOT_ITERS = 200_000  # --quick

pytestmark = pytest.mark.frida


@pytest.fixture(scope="module")
def quick():
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--json"], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table, _, payload = proc.stdout.partition("\n{")
    return table, json.loads("{" + payload), proc.stderr


def rows_of(result, variant):
    return {r["workload"]: r for r in result["rows"] if r["variant"] == variant}


def test_throughput_table__quick__then_one_row_per_workload_and_variant_and_the_drain_lines(quick):
    table, result, _ = quick
    assert [(r["workload"], r["variant"]) for r in result["rows"]] == \
        [(w, v) for w in WORKLOADS for v in VARIANTS]
    lines = table.splitlines()
    header = next(ln for ln in lines if ln.startswith("workload"))
    for column in ("+ns/call", "+cpu ns", "drops %", "B/event", "M ev/s", "wall s", "x untr", "x uft-P"):
        assert column in header
    for w in WORKLOADS:
        for v in VARIANTS:
            assert any(ln.split()[:2] == [w, v] for ln in lines), (w, v)
    assert sum("drainers + writer" in ln for ln in lines) == 2
    assert all(r["available"] for r in rows_of(result, "untraced").values())
    assert all(r["available"] for r in rows_of(result, "lanetrace").values()), \
        [r.get("reason") for r in rows_of(result, "lanetrace").values()]
    # by design, not by accident of this machine
    assert "uftrace" in rows_of(result, "uftrace-P")["sqlite"]["reason"]
    assert "-pg" in rows_of(result, "uftrace-pg")["workers"]["reason"]


def test_throughput_table__lanetrace_rows__then_recorded_plus_dropped_is_two_events_per_call(quick):
    _, result, _ = quick
    untraced = rows_of(result, "untraced")
    assert untraced["hot"]["calls"] == HOT_ITERS
    assert untraced["hot2"]["calls"] == 2 * HOT_ITERS
    for variant in ("lanetrace", "lanetrace-nodrop"):
        for w, row in rows_of(result, variant).items():
            if not row["available"]:
                assert variant == "lanetrace-nodrop" and "--no-drop" in row["reason"]
                continue
            for rnd in row["perRound"]:
                assert rnd["recorded"] + rnd["dropped"] == 2 * rnd["calls"], (variant, w, rnd)
            if w != "sqlite":  # sqlite3 has no count of its own
                assert row["calls"] == untraced[w]["calls"], (variant, w)
            assert row["dropsPct"] == pytest.approx(100 * row["dropped"] / (2 * row["calls"]))
            assert row["eventsPerSec"] == pytest.approx(row["recorded"] / (row["runMs"] / 1e3))
            assert 4 <= row["bytesPerEvent"] <= 200, (variant, w)


def test_throughput_table__peer_rows__then_their_counts_and_ratios_agree(quick):
    _, result, _ = quick
    for variant in ("uftrace-P", "uftrace-pg"):
        for w, row in rows_of(result, variant).items():
            if not row["available"]:
                continue
            assert row["recorded"] + row["dropped"] == 2 * row["calls"], (variant, w)
            assert row["bytesPerEvent"] >= 16, (variant, w)  # uftrace's record is 16 bytes
    for w, row in rows_of(result, "frida-attach").items():
        if row["available"]:
            assert row["recorded"] is None and row["bytesPerEvent"] is None  # records nothing
    for row in result["rows"]:
        if row["available"] and row["variant"] != "untraced" and row["nsPerCallAdded"] is not None:
            base = next(r for r in result["rows"]
                        if r["workload"] == row["workload"] and r["variant"] == "untraced")
            assert row["xUntraced"] == pytest.approx(row["runMs"] / base["runMs"])
            assert row["nsPerCallAdded"] == pytest.approx(
                (row["runMs"] - base["runMs"]) * 1e6 / row["calls"])
            uft = rows_of(result, "uftrace-P")[row["workload"]]
            if uft["available"] and uft["nsPerCallAdded"]:
                assert row["xUftraceP"] == pytest.approx(row["nsPerCallAdded"] / uft["nsPerCallAdded"])


def test_throughput_table__drain_rate__then_every_written_event_is_recorded_or_dropped(quick):
    _, result, _ = quick
    drain = result["drain"]
    assert set(drain["maxZeroDropPerSec"]) == {"off", "on"} and not drain["errors"]
    assert {r["detail"] for r in drain["runs"]} == {False, True}
    for r in drain["runs"]:
        assert r["events"] > 0
        assert r["recorded"] + r["drops"] == r["events"], r
        assert r["zeroDrop"] == (r["drops"] == 0)
    for key, best in drain["maxZeroDropPerSec"].items():
        ok = [r["offeredPerSec"] for r in drain["runs"] if r["detail"] == (key == "on") and r["zeroDrop"]]
        assert best == max(ok, default=0.0)
