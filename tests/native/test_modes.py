"""Registry modes and fallback in real processes: DUAL_WRITE,
per-shard fallback set from outside and by the agent itself, and the
agent's own GLOBAL_ONLY -> DUAL_WRITE -> PER_THREAD_ONLY machine."""
import collections
import os
import time

import numpy as np
import pytest

from lanetrace.core.shm import parse_records
from native.harness import ENTRY, RETURN, Traced, check_stream

pytestmark = pytest.mark.frida

CHECK_EVENTS = 1024  # LT_CHECK_EVENTS: a thread re-reads mode/fallback at least this often


def names_of(t):
    return {fid: fn["name"] for fid, fn in t.functions.items()}


def dedup(data):
    """Records unique by (tid, seq) and how many times each pair arrived."""
    recs = parse_records(data)
    seen = collections.Counter(zip(recs["tid"].tolist(), recs["seq"].tolist()))
    _, first = np.unique(np.stack([recs["tid"].astype(np.uint64), recs["seq"]]), axis=1, return_index=True)
    return recs[np.sort(first)].tobytes(), seen


class Phased:
    """target ... phases FD under the agent: each phase() runs CALLS work()
    calls on the main thread (8 * CALLS events) and waits until it is done."""

    def __init__(self, session_id, target_bin, calls, **kw):
        self.r1, self.w1 = os.pipe()
        self.r2, self.w2 = os.pipe()
        self.calls = calls
        # pools hold several whole phases: a drainer that lags behind a phase
        # must not turn this into a backpressure test
        self.t = Traced(session_id, [target_bin, str(self.r1), "0", str(calls), "phases", str(self.r2)],
                        attach=True, pass_fds=(self.r1, self.r2), slots=4, ring_bytes=1 << 18,
                        rings_per_lane=16, global_records=1 << 17,
                        selection={"include": ["work", "leaf"]}, **kw)
        os.close(self.r1)
        os.close(self.r2)
        os.write(self.w1, b"x")
        self._wait_line("phases ready")

    def _wait_line(self, text):
        while True:
            line = self.t.proc.stdout.readline()
            assert line, f"target ended before printing {text!r}"
            if text in line:
                return

    def phase(self):
        os.write(self.w2, b"x")
        self._wait_line("phase done")

    def global_records(self):
        return self.t.seg.counters()["global_records"]

    def finish(self):
        os.close(self.w2)
        self.w2 = None
        rc, out = self.t.wait_exit()
        assert rc == 0, out
        return self.t.finish()

    def close(self):
        os.close(self.w1)
        if self.w2 is not None:
            os.close(self.w2)
        self.t.close()


def test_dual_write_mode__then_every_record_arrives_twice_and_dedups_to_the_exact_stream(session_id, target_bin):
    threads, calls = 2, 300
    t = Traced(session_id, [target_bin, "-1", str(threads), str(calls)], mode="DUAL_WRITE",
               global_records=1 << 16, selection={"include": ["worker_main", "work", "leaf", "fib"]})
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "failures 0" in out
        unique, seen = dedup(t.finish())
        assert set(seen.values()) == {2}  # the global lane and the thread's own lane
        counts, problems = check_stream(unique, names_of(t))
        assert problems == []
        assert counts[(t.pid, "fib")] == {ENTRY: 177, RETURN: 177}
        workers = {tid for tid, _ in counts} - {t.pid}
        assert len(workers) == threads
        for tid in workers:
            assert counts[(tid, "leaf")] == {ENTRY: 3 * calls, RETURN: 3 * calls}
        c = t.seg.counters()
        assert c["global_records"] == len(seen) and c["rings_submitted"] >= 0
        assert sum(t.seg.drops().values()) == 0
    finally:
        t.close()


def test_shard_fallback__set_mid_stream_then_cleared__then_global_lane_meanwhile_and_seqs_contiguous(
        session_id, target_bin):
    calls = 2000  # 16000 events per phase
    p = Phased(session_id, target_bin, calls)
    try:
        seg = p.t.seg
        p.phase()
        g0 = p.global_records()
        assert g0 == 0  # per-thread lanes
        for k in range(seg.config["shards"]):
            seg.set_shard_fallback(k, True)
        p.phase()
        g1 = p.global_records()
        assert g1 - g0 >= 8 * calls - CHECK_EVENTS
        for k in range(seg.config["shards"]):
            seg.set_shard_fallback(k, False)
        p.phase()
        g2 = p.global_records()
        assert g2 - g1 <= CHECK_EVENTS  # back on the thread's own lane
        data = p.finish()
        unique, seen = dedup(data)
        assert set(seen.values()) == {1}
        counts, problems = check_stream(unique, names_of(p.t))
        assert problems == [], (seg.drops_by_thread(), seg.counters())
        assert counts[(p.t.pid, "work")] == {ENTRY: 3 * calls, RETURN: 3 * calls}
        c = seg.counters()
        assert c["fallback_events"] == 2 and c["fallback_clears"] == 2 and c["agent_fallbacks"] == 0
        assert sum(seg.drops().values()) == 0
    finally:
        p.close()


def _wait_heartbeats(seg, pred):
    while not pred(seg.heartbeats(), time.monotonic_ns()):
        time.sleep(0.01)


def test_agent_fallback__drainer_heartbeats_go_stale_then_fresh__then_agent_falls_back_and_returns_by_itself(
        session_id, target_bin):
    calls = 2000
    stale_ms = 300
    p = Phased(session_id, target_bin, calls, heartbeat=True)
    try:
        seg = p.t.seg
        seg.mode_policy(stale_ms=stale_ms)
        _wait_heartbeats(seg, lambda hbs, now: all(hbs))
        p.phase()
        assert seg.shard_fallback_sources() == ["off", "off"]
        g0 = p.global_records()
        p.t.drainers.silent.update({0, 1})  # drainers keep draining but stop beating
        _wait_heartbeats(seg, lambda hbs, now: all(now - hb > stale_ms * 1e6 * 1.2 for hb in hbs))
        p.phase()
        assert seg.shard_fallback_sources() == ["agent", "agent"]
        g1 = p.global_records()
        assert g1 - g0 >= 8 * calls - CHECK_EVENTS
        since = time.monotonic_ns()
        p.t.drainers.silent.clear()
        _wait_heartbeats(seg, lambda hbs, now: all(hb > since for hb in hbs))
        p.phase()
        assert seg.shard_fallback_sources() == ["off", "off"]
        assert p.global_records() - g1 <= CHECK_EVENTS
        data = p.finish()
        unique, seen = dedup(data)
        assert set(seen.values()) == {1}
        counts, problems = check_stream(unique, names_of(p.t))
        assert problems == [], (seg.drops_by_thread(), seg.counters())
        assert counts[(p.t.pid, "work")] == {ENTRY: 3 * calls, RETURN: 3 * calls}
        c = seg.counters()
        assert c["agent_fallbacks"] == 2 and c["fallback_events"] == 2 and c["fallback_clears"] == 2
        assert sum(seg.drops().values()) == 0
    finally:
        p.close()


def test_mode_machine__drainers_beating_before_the_first_record__then_straight_to_per_thread_without_loss(
        session_id, target_bin):
    calls = 500
    p = Phased(session_id, target_bin, calls, heartbeat=True, mode=None)
    try:
        seg = p.t.seg
        assert seg.mode_policy()["auto"] is True
        p.phase()
        assert seg.mode == "PER_THREAD_ONLY"
        data = p.finish()
        unique, seen = dedup(data)
        counts, problems = check_stream(unique, names_of(p.t))
        assert problems == []
        assert counts[(p.t.pid, "work")] == {ENTRY: calls, RETURN: calls}
        c = seg.counters()
        assert (c["mode_transitions"], c["global_records"]) == (1, 0)
        assert set(seen.values()) == {1} and sum(seg.drops().values()) == 0
    finally:
        p.close()


def test_mode_machine__records_before_the_drainers_beat__then_global_dual_per_thread_without_loss(
        session_id, target_bin):
    calls = 500
    p = Phased(session_id, target_bin, calls, heartbeat=True, silent_shards=(0, 1), mode=None)
    try:
        seg = p.t.seg
        p.phase()
        assert seg.mode == "GLOBAL_ONLY" and p.global_records() > 0
        p.t.drainers.silent.clear()
        phases = 1
        while seg.mode != "PER_THREAD_ONLY":
            assert phases < 200, f"mode machine stuck in {seg.mode}"
            p.phase()
            phases += 1
        p.phase()  # one more, all on per-thread lanes
        data = p.finish()
        unique, seen = dedup(data)
        counts, problems = check_stream(unique, names_of(p.t))
        assert problems == []  # contiguous from seq 1: nothing lost before the drainers were up
        assert counts[(p.t.pid, "work")] == {ENTRY: (phases + 1) * calls, RETURN: (phases + 1) * calls}
        c = seg.counters()
        assert c["mode_transitions"] == 2  # GLOBAL_ONLY -> DUAL_WRITE -> PER_THREAD_ONLY
        assert max(seen.values()) <= 2
        assert sum(seg.drops().values()) == 0
    finally:
        p.close()
