"""Flight recorder in real processes: detail records from both
hook paths, trigger marks, backpressure with exact per-thread accounting."""
import collections
import struct

import pytest

from lanetrace.core.shm import DETAIL_DROP_REASONS, parse_detail, parse_records
from native.harness import ENTRY, RETURN, Traced, check_stream

pytestmark = pytest.mark.frida


def names_of(t):
    return {fid: fn["name"] for fid, fn in t.functions.items()}


def ids_of(t):
    return {fn["name"]: fid for fid, fn in t.functions.items()}


def test_detail_lane__add_and_tiny_called__then_args_return_values_and_stack_copy_recorded(
        session_id, target_bin):
    n = 50
    t = Traced(session_id, [target_bin, "-1", "0", "0", "add", str(n)], detail=64,
               selection={"include": ["main", "add", "tiny"]})
    try:
        assert t.install["attached"] == 1  # tiny(): the Interceptor fallback path
        t.resume()
        _, out = t.wait_exit()
        assert f"result add {sum(1000 + 2 * i for i in range(n))}" in out and "failures 0" in out
        index = t.finish()
        detail = parse_detail(t.drainers.detail_bytes())
        ids = ids_of(t)
        counts, problems = check_stream(index, names_of(t))
        assert problems == []
        # one detail record per ENTRY/RETURN, same (tid, seq, kind, func)
        recs = parse_records(index)
        want = sorted((int(r["tid"]), int(r["seq"]), int(r["kind"]), int(r["func_id"])) for r in recs)
        assert sorted((d["tid"], d["seq"], d["kind"], d["functionId"]) for d in detail) == want
        by_seq = {(int(r["tid"]), int(r["seq"])): int(r["ts_ns"]) for r in recs}
        assert all(by_seq[(d["tid"], d["seq"])] == d["tsNs"] for d in detail)
        main = t.functions[ids["main"]]
        main_lo = int(main["address"], 16)
        adds = [d for d in detail if d["functionId"] == ids["add"]]
        entries = sorted((d for d in adds if d["kind"] == ENTRY), key=lambda d: d["seq"])
        returns = sorted((d for d in adds if d["kind"] == RETURN), key=lambda d: d["seq"])
        assert len(entries) == len(returns) == n
        for i, (e, r) in enumerate(zip(entries, returns)):
            assert len(e["regs"]) == 7 and len(r["regs"]) == 2
            assert e["regs"][0] & 0xffffffff == i and e["regs"][1] & 0xffffffff == 1000 + i
            assert r["regs"][0] & 0xffffffff == 1000 + 2 * i
            rsp = e["regs"][6]
            assert rsp % 16 == 8  # at a function's first instruction
            assert len(e["stack"]) == 64 and r["stack"] == b""
            ret_addr = struct.unpack_from("<Q", e["stack"])[0]
            assert main_lo < ret_addr < main_lo + main["size"]  # add() returns into main
        tiny = [d for d in detail if d["functionId"] == ids["tiny"]]
        assert [d["kind"] for d in sorted(tiny, key=lambda d: d["seq"])] == [ENTRY, RETURN]
        tiny_ret = [d for d in tiny if d["kind"] == RETURN][0]
        assert tiny_ret["regs"][0] & 0xffffffff == 7
        tiny_entry = [d for d in tiny if d["kind"] == ENTRY][0]
        assert len(tiny_entry["stack"]) == 64 and tiny_entry["regs"][6] % 16 == 8
        assert sum(t.seg.drops().values()) == 0
    finally:
        t.close()


def test_detail_lane__off__then_no_detail_records(session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "1", "200", "add", "20"],
               selection={"include": ["add", "work", "leaf", "tiny"]})
    try:
        t.resume()
        _, out = t.wait_exit()
        index = t.finish()
        assert "failures 0" in out
        assert t.drainers.detail_bytes() == b""
        assert len(index) // 32 == 2 * (20 + 1 + 200 * 4 + 2)  # add, tiny, work+leaf, catcher/inner leafs
        c = t.seg.counters()
        assert c["detail_records"] == 0
    finally:
        t.close()


def test_triggers__set_on_add_and_tiny__then_marks_only_for_their_entries(session_id, target_bin):
    n = 30
    t = Traced(session_id, [target_bin, "-1", "1", "100", "add", str(n)],
               selection={"include": ["main", "add", "tiny", "work", "leaf"]}, triggers={"add", "tiny"})
    try:
        assert t.triggers["set"] == 2 and t.triggers["unknown"] == []
        t.resume()
        _, out = t.wait_exit()
        index = parse_records(t.finish())
        ids = ids_of(t)
        marks = t.seg.marks()
        assert all(m["kind"] == "symbol" and m["tid"] == t.pid for m in marks)
        got = collections.Counter(m["functionId"] for m in marks)
        assert got == {ids["add"]: n, ids["tiny"]: 1}
        entry_ts = {int(r["ts_ns"]) for r in index if r["kind"] == ENTRY and r["func_id"] == ids["add"]}
        assert {m["tsNs"] for m in marks if m["functionId"] == ids["add"]} == entry_ts
        assert t.seg.counters()["marks"] == n + 1
    finally:
        t.close()


def test_backpressure__starved_drainer_tiny_pools_4_hot_threads__then_recorded_plus_dropped_exact_per_thread_and_lane(
        session_id, target_bin):
    threads, calls = 4, 5000
    per_worker = 2 * (1 + 4 * calls)  # worker_main + work + 3 leaf per call
    t = Traced(session_id, [target_bin, "-1", str(threads), str(calls)], detail=32,
               selection={"include": ["worker_main", "work", "leaf"]}, slots=8, shards=2,
               ring_bytes=1024, rings_per_lane=2, detail_ring_bytes=4096, detail_rings_per_lane=2)
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "failures 0" in out
        index = parse_records(t.finish())
        detail = parse_detail(t.drainers.detail_bytes())
        drops = collections.Counter()
        for row in t.seg.drops_by_thread():
            drops[(row["tid"], row["lane"])] += row["count"]
        got = collections.defaultdict(list)
        for r in index:
            got[int(r["tid"])].append(int(r["seq"]))
        dgot = collections.defaultdict(list)
        for d in detail:
            dgot[d["tid"]].append(d["seq"])
        tids = set(got) | set(dgot) | {tid for tid, _ in drops}
        assert len(tids - {t.pid}) == threads
        for tid in tids:
            # main: leaf() after the longjmp tests (2 calls); workers: per_worker
            produced = 4 if tid == t.pid else per_worker
            s = sorted(got[tid])
            assert len(set(s)) == len(s)
            assert len(s) + drops[(tid, "index")] == produced
            # gaps in the index seqs are exactly the index drops of this thread
            assert set(s) <= set(range(1, produced + 1))
            ds = dgot[tid]
            assert len(set(ds)) == len(ds) and set(ds) <= set(range(1, produced + 1))
            assert len(ds) + drops[(tid, "detail")] == produced
        total = t.seg.drops()
        assert sum(total[r] for r in DETAIL_DROP_REASONS) == sum(v for (_, l), v in drops.items() if l == "detail")
        assert total["pool_exhausted"] == sum(v for (_, l), v in drops.items() if l == "index")
        assert total["pool_exhausted"] > 0 and total["detail_overwritten"] > 0  # it really was starved
    finally:
        t.close()


def test_triggers__replaced_mid_run_then_cleared__then_marks_follow_the_current_set(session_id, target_bin):
    from native.test_modes import Phased
    calls = 100
    p = Phased(session_id, target_bin, calls)
    try:
        ids = ids_of(p.t)
        r = p.t.api.set_triggers({"functionIds": [ids["work"], 99999]})
        assert r["set"] == 1 and r["unknown"] == [99999]
        p.phase()
        assert [m["functionId"] for m in p.t.seg.marks()] == [ids["work"]] * calls
        p.t.api.set_triggers({"functionIds": [ids["leaf"]]})  # replaces work
        p.phase()
        p.t.api.set_triggers({"functionIds": []})
        p.phase()
        got = collections.Counter(m["functionId"] for m in p.t.seg.marks())
        assert got == {ids["work"]: calls, ids["leaf"]: 3 * calls}
        assert p.t.seg.drops()["marks_overflow"] == 0
        with pytest.raises(Exception, match="functionIds"):
            p.t.api.set_triggers({"functionIds": ["work"]})
        p.finish()
    finally:
        p.close()
