"""The native agent in real processes: Frida spawn/attach, replaceFast
trampolines + CModule fallback, records read back from the shared memory."""
import collections
import dataclasses
import os

import pytest

from lanetrace.core.shm import parse_records
from lanetrace.injector import hooksafety
from native.harness import ENTRY, RETURN, UNWOUND, Traced, check_stream

pytestmark = pytest.mark.frida

HAS_AVX = " avx " in open("/proc/cpuinfo").read().replace("\n", " ")


def names_of(t):
    return {fid: fn["name"] for fid, fn in t.functions.items()}


def per_thread(counts, tid):
    return {name: dict(c) for (t, name), c in counts.items() if t == tid}


def test_agent__spawned_program_with_threads_recursion_floats_longjmp__then_exact_records(
        session_id, target_bin):
    threads, calls = 4, 2000
    t = Traced(session_id, [target_bin, "-1", str(threads), str(calls)])
    try:
        assert t.init["ignoredThreads"] >= 1  # Frida's own (cloaked) threads
        planned = {f["name"] for f in t.plan["functions"]}
        assert {"main", "fib", "leaf", "work", "worker_main", "fmix", "tiny", "tail_caller"} <= planned
        skipped = {s["name"]: s["reason"] for s in t.plan["skipped"]}
        assert "built-in exclude" in skipped[os.path.basename(target_bin) + "!_start"]
        assert t.install["failed"] == []
        assert t.install["attached"] >= 1  # tiny(): the Interceptor fallback path (forced by the harness)
        ids = sorted(t.functions)
        assert ids == list(range(1, len(ids) + 1))
        t.resume()
        _, out = t.wait_exit()
        data = t.finish()
        assert "failures 0" in out, out  # float/x87/AVX/struct args and returns intact
        assert "result fib 55" in out and "result tail 42" in out and "result catcher 1" in out
        counts, problems = check_stream(data, names_of(t))
        assert problems == []
        tids = {tid for tid, _ in counts}
        assert len(tids) == threads + 1
        main = per_thread(counts, t.pid)
        assert main["main"] == {ENTRY: 1, RETURN: 1}
        assert main["fib"] == {ENTRY: 177, RETURN: 177}
        for f in ("fmix", "fret", "ldret", "bigret", "tiny", "catcher"):
            assert main[f] == {ENTRY: 1, RETURN: 1}, f
        if HAS_AVX:
            assert main["vadd"] == {ENTRY: 1, RETURN: 1}
        assert main["tail_caller"] == {ENTRY: 3, RETURN: 3}
        assert main["tail_target"] == {ENTRY: 3, RETURN: 3}
        assert main["leaf"] == {ENTRY: 2, RETURN: 2}
        # longjmp: catcher <- thrower x3 and main <- inner2 <- thrower2
        assert main["thrower"] == {ENTRY: 3, UNWOUND: 3}
        assert main["thrower2"] == {ENTRY: 1, UNWOUND: 1}
        assert main["inner2"] == {ENTRY: 1, UNWOUND: 1}
        for tid in tids - {t.pid}:
            w = per_thread(counts, tid)
            assert w == {"worker_main": {ENTRY: 1, RETURN: 1}, "work": {ENTRY: calls, RETURN: calls},
                         "leaf": {ENTRY: 3 * calls, RETURN: 3 * calls}}
        recs = parse_records(data)
        by_name = {v: k for k, v in names_of(t).items()}
        tail = recs[(recs["func_id"] == by_name["tail_target"]) & (recs["kind"] == ENTRY)]
        assert set(tail["depth"].tolist()) == {2}  # main > tail_caller > tail_target
        fib = recs[recs["func_id"] == by_name["fib"]]
        assert int(fib["depth"].max()) == 10
        assert sum(t.seg.drops().values()) == 0
        c = t.seg.counters()
        assert c["threads_registered"] == threads + 1 and c["unwound_frames"] == 5
    finally:
        t.close()


def test_agent__recursion_deeper_than_shadow_stack__then_depth_overflow_counted_without_unmatched_entry(
        session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "0", "0", "deep", "3000"],
               selection={"include": ["deep", "main"]})
    try:
        assert sorted(f["name"] for f in t.plan["functions"]) == ["deep", "main"]
        t.resume()
        _, out = t.wait_exit()
        data = t.finish()
        assert "result deep 3000" in out and "failures 0" in out
        recs = parse_records(data)
        limit = t.api.stats()["shadowStackFrames"] if not t.detached.is_set() else 2048
        dropped = t.seg.drops()["depth_overflow"]
        # main at depth 0 and deep() at depths 1..limit-1 fit; the rest are counted
        assert dropped == 3001 - (limit - 1)
        assert len(recs) == 2 * (1 + limit - 1)
        seqs = sorted(recs["seq"].tolist())
        assert seqs[-1] - len(seqs) == dropped  # gaps == drops
        counts, problems = check_stream(data, names_of(t))
        assert [p for p in problems if "not contiguous" not in p] == []
        assert counts[(t.pid, "deep")] == {ENTRY: limit - 1, RETURN: limit - 1}
    finally:
        t.close()


def test_agent__selection_globs__then_frida_trace_semantics(session_id, target_bin, plugin_lib):
    t = Traced(session_id, [target_bin, "-1", "0", "0"],
               selection={"include": ["fi[b]", "fm?x", "fret", "target!tail_*", "libc.so.6!getpid"],
                          "exclude": ["fret", "*!tail_target"],
                          "excludeModules": ["libm*"]})
    try:
        got = sorted((f["module"], f["name"]) for f in t.plan["functions"])
        assert got == [("libc.so.6", "getpid"), ("target", "fib"), ("target", "fmix"),
                       ("target", "tail_caller")]
        reasons = {s["name"]: s["reason"] for s in t.plan["skipped"]}
        assert reasons["target!fret"] == "excluded by -x fret"
        assert reasons["target!tail_target"] == "excluded by -x *!tail_target"
        assert all(f["address"].startswith("0x") and f["modulePath"] for f in t.plan["functions"])
        with pytest.raises(Exception, match="invalid pattern"):
            t.api.plan({"include": ["!x"]})
    finally:
        t.device.kill(t.pid)
        t.close()


def test_agent__detach_while_hooked_frame_is_live__then_frame_returns_through_passthrough_and_program_finishes(
        session_id, target_bin):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    t = Traced(session_id, [target_bin, str(r1), "2", "50", "hold", str(r2)], attach=True,
               pass_fds=(r1, r2), selection={"include": ["main", "holder", "fib", "fmix", "work", "leaf"]})
    try:
        os.close(r1)
        os.close(r2)
        assert t.install["failed"] == []
        os.write(w1, b"x")
        line = ""
        while "holding" not in line:
            line = t.proc.stdout.readline()
            assert line, "target ended before holding"
        t.drainers.wait_for_function({v: k for k, v in names_of(t).items()}["holder"])
        assert t.api.detach()["reverted"] == len(t.plan["functions"])
        assert t.seg.agent_state == 2
        os.write(w2, b"x")  # holder() returns into lt_exit_tramp after the detach
        rc, out = t.wait_exit()
        assert rc == 0, out
        assert "failures 0" in out and "result after-detach fib 144" in out
        data = t.finish()
        counts, problems = check_stream(data, names_of(t))
        # recorded up to the detach (main was entered before the attach):
        # holder stays open, nothing after
        assert problems == [f"tid {t.pid}: 1 frames never closed: ['holder']"]
        assert counts[(t.pid, "fmix")] == {ENTRY: 1, RETURN: 1}
        assert counts[(t.pid, "holder")] == {ENTRY: 1}
        assert (t.pid, "fib") not in counts and not any(n == "work" for _, n in counts)
    finally:
        os.close(w1)
        os.close(w2)
        t.close()


def test_agent__2000_short_lived_threads_at_most_8_alive__then_every_thread_recorded_exactly(
        session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "0", "0", "churn", "2000", "8"],
               selection={"include": ["short_thread", "leaf"]}, slots=16, shards=2)
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "failures 0" in out
        data = t.finish()
        counts, problems = check_stream(data, names_of(t))
        assert problems == []
        main = per_thread(counts, t.pid)
        assert main == {"leaf": {ENTRY: 2, RETURN: 2}}
        workers = collections.Counter()
        for (tid, name), c in counts.items():
            if tid != t.pid:
                workers[(name, c[ENTRY], c[RETURN])] += 1
        assert counts.threads == 2001
        # a tid reused by the kernel sums two threads: still 1 call per thread
        assert sum(n * e for (name, e, r), n in workers.items() if name == "short_thread") == 2000
        assert sum(n * e for (name, e, r), n in workers.items() if name == "leaf") == 2000
        assert all(e == r for (_, e, r) in workers)
        assert sum(t.seg.drops().values()) == 0
        c = t.seg.counters()
        assert c["threads_registered"] == 2001 and c["threads_retired"] == 2000
        assert c["slots_in_use"] == 1  # main never runs its key destructor
    finally:
        t.close()


def test_agent__library_dlopened_after_install__then_announced_acked_and_hooked_before_dlopen_returns(
        session_id, target_bin, plugin_lib):
    t = Traced(session_id, [target_bin, "-1", "0", "0", "dlopen", plugin_lib],
               selection={"include": ["main", "libltplugin.so!plugin_*"]})
    try:
        first_ids = set(t.functions)
        assert [f["name"] for f in t.plan["functions"]] == ["main"]
        t.resume()
        _, out = t.wait_exit()
        assert "result plugin 100" in out and "failures 0" in out
        data = t.finish()
        announced = [m["payload"] for m in t.messages
                     if m.get("type") == "send" and m["payload"].get("type") == "functions"]
        assert len(announced) == 1
        fns = announced[0]["functions"]
        assert sorted(f["name"] for f in fns) == ["plugin_call", "plugin_helper"]
        assert all(f["module"] == "libltplugin.so" and f["modulePath"] == plugin_lib for f in fns)
        assert {f["id"] for f in fns} == {max(first_ids) + 1, max(first_ids) + 2}
        assert not any(m.get("type") == "error" for m in t.messages), t.messages
        counts, problems = check_stream(data, names_of(t))
        assert problems == []
        main = per_thread(counts, t.pid)
        assert main == {"main": {ENTRY: 1, RETURN: 1}, "plugin_call": {ENTRY: 10, RETURN: 10},
                        "plugin_helper": {ENTRY: 10, RETURN: 10}}
        recs = parse_records(data)
        helper = {v: k for k, v in names_of(t).items()}["plugin_helper"]
        assert set(recs[recs["func_id"] == helper]["depth"].tolist()) == {2}
    finally:
        t.close()


def test_agent__attach_to_running_process_with_existing_threads__then_their_calls_recorded(
        session_id, target_bin):
    threads, calls = 3, 500
    r1, w1 = os.pipe()
    t = None
    try:
        # threads are created and parked before the agent arrives
        proc_argv = [target_bin, str(r1), str(threads), str(calls), "prestart"]
        t = Traced(session_id, proc_argv, attach=True, pass_fds=(r1,),
                   selection={"include": ["work", "leaf", "fib"]}, _wait_line="started")
        os.close(r1)
        r1 = None
        assert t.init["visibleThreads"] == threads + 1
        os.write(w1, b"x")
        rc, out = t.wait_exit()
        assert rc == 0, out
        data = t.finish()
        counts, problems = check_stream(data, names_of(t))
        assert problems == []
        workers = {tid for tid, _ in counts if tid != t.pid}
        assert len(workers) == threads
        for tid in workers:
            assert per_thread(counts, tid) == {"work": {ENTRY: calls, RETURN: calls},
                                               "leaf": {ENTRY: 3 * calls, RETURN: 3 * calls}}
        assert per_thread(counts, t.pid)["fib"] == {ENTRY: 177, RETURN: 177}
    finally:
        if r1 is not None:
            os.close(r1)
        os.close(w1)
        if t is not None:
            t.close()


def test_agent__signal_handlers_on_alternate_stack_with_siglongjmp__then_frames_nest_and_close(
        session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "0", "0", "signals"],
               selection={"include": ["main", "raiser", "on_sig*", "leaf"]})
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "result signals ok" in out and "failures 0" in out
        counts, problems = check_stream(t.finish(), names_of(t))
        assert problems == []
        main = per_thread(counts, t.pid)
        assert main["raiser"] == {ENTRY: 2, RETURN: 1, UNWOUND: 1}
        assert main["on_sig"] == {ENTRY: 1, RETURN: 1}
        assert main["on_sig_jump"] == {ENTRY: 1, UNWOUND: 1}
        assert main["leaf"] == {ENTRY: 4, RETURN: 4}
        assert main["main"] == {ENTRY: 1, RETURN: 1}
    finally:
        t.close()


def test_agent__program_forks_child_running_hooked_code__then_only_parent_recorded(
        session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "0", "0", "fork"], selection={"include": ["work", "leaf"]})
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "exit 0" in out and "failures 0" in out, out
        counts, problems = check_stream(t.finish(), names_of(t))
        assert problems == []
        assert {tid for tid, _ in counts} == {t.pid}
        # parent only: catcher's leaf(5), leaf(1) after inner2, work(1) after the fork
        assert per_thread(counts, t.pid) == {"leaf": {ENTRY: 5, RETURN: 5}, "work": {ENTRY: 1, RETURN: 1}}
        assert t.seg.counters()["threads_registered"] == 1
    finally:
        t.close()


def test_agent__global_only_mode__then_records_arrive_through_the_global_lane_exactly(
        session_id, target_bin):
    threads, calls = 3, 300
    t = Traced(session_id, [target_bin, "-1", str(threads), str(calls)], mode="GLOBAL_ONLY",
               global_records=1 << 16, selection={"include": ["worker_main", "work", "leaf", "fib"]})
    try:
        t.resume()
        _, out = t.wait_exit()
        assert "failures 0" in out
        counts, problems = check_stream(t.finish(), names_of(t))
        assert problems == []
        assert per_thread(counts, t.pid) == {"fib": {ENTRY: 177, RETURN: 177},
                                             "leaf": {ENTRY: 2, RETURN: 2}}
        workers = {tid for tid, _ in counts} - {t.pid}
        assert len(workers) == threads
        for tid in workers:
            assert per_thread(counts, tid)["leaf"] == {ENTRY: 3 * calls, RETURN: 3 * calls}
        c = t.seg.counters()
        assert c["global_records"] == 2 * (179 + threads * (1 + 4 * calls))
        assert c["rings_submitted"] == 0 and sum(t.seg.drops().values()) == 0
    finally:
        t.close()


# standard XSAVE layout: legacy area and header (576 bytes), then the upper
# halves of the ymm registers (256)
XSAVE_BYTES_WITH_AVX = 576 + 256


@pytest.mark.skipif(not HAS_AVX, reason="the CPU has no AVX")
def test_agent__cpu_with_avx__then_a_threads_first_event_saves_the_vector_registers_whole(
        session_id, target_bin):
    # A thread's first event calls into libc; the hooked function's vector
    # arguments live in ymm/zmm registers and must survive it. fxsave keeps
    # only their low 128 bits, so the agent must use xsave with the AVX
    # state, also on CPUs whose AMX tile state makes the full area too big.
    t = Traced(session_id, [target_bin, "-1", "1", "10"])
    try:
        assert t.api.stats()["xsaveBytes"] >= XSAVE_BYTES_WITH_AVX
        t.resume()
        t.wait_exit()
        t.finish()
    finally:
        t.close()


def traced_streams(session_id, argv, clock):
    """Per thread (by order of first record), its records as (function, kind,
    depth), in sequence order, and the run's drops."""
    t = Traced(session_id, argv, clock=clock)
    try:
        t.resume()
        t.wait_exit()
        data = t.finish()
        names = names_of(t)
        recs = sorted(parse_records(data).tolist(), key=lambda r: (r[2], r[1]))  # tid, seq
        streams = collections.defaultdict(list)
        for r in recs:
            streams[r[2]].append((names[r[3]], r[4], r[5]))
        return t.record_clock, sorted(streams.values()), sum(t.seg.drops().values())
    finally:
        t.close()


def test_agent__tsc_stamps_in_assembly_and_clock_gettime_in_c__then_the_same_records(
        session_id, target_bin):
    # TSC stamps take the trampolines' assembly fast path; clock_gettime stamps
    # take lt_on_entry/lt_on_exit in C for every call. Same program, same records.
    argv = [target_bin, "-1", "2", "300"]
    fast_clock, fast, fast_drops = traced_streams(session_id, argv, "auto")
    c_clock, full, c_drops = traced_streams(session_id + "c", argv, "monotonic")
    if fast_clock != "tsc":
        pytest.skip("the TSC is not invariant here: no assembly fast path to compare")
    assert c_clock == "monotonic"
    assert fast_drops == c_drops == 0
    assert len(fast) == 3 and fast == full


def test_agent__install_batch_with_changed_code_and_a_cut_record__then_every_function_reported(
        session_id, target_bin):
    """One batch installs every fast hook; a record whose analysed bytes no
    longer match, and one cut off the batch, are each reported by name."""
    seen = {}

    def tampered(verdicts, addresses, roles):
        # the batch is ordered by mapping, then address: cut the last record
        fast = sorted((fid for fid, v in verdicts.items() if v.kind == "fast"),
                      key=lambda fid: (verdicts[fid].window, addresses[fid]))
        changed, cut = fast[0], fast[-1]
        v = verdicts[changed]
        verdicts[changed] = dataclasses.replace(v, expect=bytes([v.expect[0] ^ 0xFF]) + v.expect[1:])
        last = hooksafety.install_request({cut: verdicts[cut]}, addresses, roles)["batch"]
        request = hooksafety.install_request(verdicts, addresses, roles)
        assert request["batch"].count(last) == 1
        request["batch"] = request["batch"].replace(last, last[:len(last) // 2])
        seen.update(changed=changed, cut=cut, fast=len(fast))
        return request

    t = Traced(session_id, [target_bin, "-1", "0", "0"],
               selection={"include": ["target!fib", "target!fmix", "target!leaf", "target!work",
                                      "target!tail_caller", "target!tiny"]},
               install_request=tampered)
    try:
        names = {fid: f"{fn['module']}!{fn['name']}" for fid, fn in t.functions.items()}
        failed = {f["name"]: f["code"] for f in t.install["failed"]}
        assert failed == {names[seen["changed"]]: "code-changed",
                          names[seen["cut"]]: "install-failed"}, t.install
        assert t.install["replaced"] == seen["fast"] - 2
        assert t.install["attached"] == 1  # tiny, forced onto the fallback by the harness
        assert t.api.stats()["pending"] == 0
    finally:
        t.device.kill(t.pid)
        t.close()
