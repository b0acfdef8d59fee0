"""The flight recorder end to end: ``python -m lanetrace run``/``attach`` on
the real example programs, checked against what the programs report they did
(LANETRACE_EXPECT)."""
import os
import signal
import subprocess

import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import (Trace, count_mismatches, leftover_segments, load_expectation,
                            session_id_of, single_trace_dir)
from e2e.flighttrace import FlightTrace

pytestmark = pytest.mark.frida

NS = 1_000_000_000


def _no_leftovers(trace_dir):
    session = session_id_of(trace_dir)
    assert leftover_segments(session) == []
    assert not os.path.exists(f"/tmp/lanetrace-run-{session}")


def test_run_trigger_symbol__tickboom__then_detail_only_in_window_on_all_threads_and_full_index(
        tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-t", "symbol=boom", "--pre-roll-sec", "0.3",
                          "--post-roll-sec", "0.2", "--", example("tickboom"), "2", "1"],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    trace_dir = single_trace_dir(str(out))
    expect = load_expectation(str(expect_path))
    # the index lane is complete: every call, exactly
    assert count_mismatches(Trace(trace_dir), expect) == []
    ft = FlightTrace(trace_dir)
    m = ft.manifest
    assert sum(m["drops"].values()) == 0
    # one window, around boom's ENTRY, as long as pre + post roll
    boom = [(k, v) for k, v in ft.index.items() if v[1] == "boom" and v[0] == "function_call"]
    assert len(boom) == 1 and boom[0][0][0] == expect["boom"]["tid"]
    boom_ts = boom[0][1][2]
    (w,) = m["windows"]
    assert w["trigger"] == "symbol=boom"
    assert w["startNs"] <= boom_ts <= w["endNs"]
    assert w["endNs"] - w["startNs"] == int(0.5 * NS)
    assert abs((boom_ts - w["startNs"]) - int(0.3 * NS)) < NS // 100  # mark at boom's entry
    # detail: only inside the window, each the twin of an index event
    assert ft.detail, "no detail records kept"
    for key, ev in ft.detail.items():
        assert ft.in_window(ev.timestamp.seconds * NS + ev.timestamp.nanos), key
        kind, name, ts = ft.index[key]
        assert ev.WhichOneof("payload") == kind and ft.detail_name(ev) == name
        assert ev.timestamp.seconds * NS + ev.timestamp.nanos == ts
    # ... on every ticking thread (the window is for the whole process)
    tick_tids = {t["tid"] for t in expect["threads"] if "tick" in t["calls"]}
    assert len(tick_tids) == 4
    assert tick_tids <= {tid for tid, _ in ft.detail}
    # ... and complete inside the window: every index event there has its detail
    in_window = [k for k, (_, _, ts) in ft.index.items() if w["startNs"] <= ts <= w["endNs"]]
    assert sorted(in_window) == sorted(ft.detail)
    # kept + discarded account for every detail record the lane produced
    assert m["detailKept"] == len(ft.detail)
    assert m["detailKept"] + m["detailDiscarded"] + ft.detail_drops() == len(ft.index)
    _no_leftovers(trace_dir)


def test_run_trigger_crash__crasher__then_signal_event_window_before_it_and_death_reported(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-t", "crash", "--pre-roll-sec", "5",
                          "--", example("crasher")], env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 128 + signal.SIGSEGV, proc.stderr
    expect = load_expectation(str(expect_path))
    trace_dir = single_trace_dir(str(out))
    ft = FlightTrace(trace_dir)
    m = ft.manifest
    assert m["signal"] == signal.SIGSEGV and m["complete"] is True
    (sig,) = ft.signals
    d = sig.signal_delivery
    assert (d.number, d.name) == (signal.SIGSEGV, "SIGSEGV")
    assert sig.thread_id == expect["crash"]["tid"]
    regs = dict(d.registers)
    assert regs.get("pc") and regs.get("sp")
    # crash_here(NULL): the faulting store's address register holds 0 (rdi on entry)
    crash_entry = [k for k, v in ft.index.items() if v[1] == "crash_here"]
    assert len(crash_entry) == 1
    assert ft.detail[crash_entry[0]].function_call.argument_registers["rdi"] == 0
    # the window ends at the crash and reaches back over the whole short run
    (w,) = m["windows"]
    assert w["trigger"] == "crash"
    sig_ts = sig.timestamp.seconds * NS + sig.timestamp.nanos
    assert w["startNs"] < sig_ts <= w["endNs"]
    assert set(ft.detail) == set(ft.index)  # all within 5 s before the crash
    # every call was recorded (frames the crash cut short have no RETURN)
    entries = Trace(trace_dir).entries
    for t in expect["threads"]:
        for name, n in t["calls"].items():
            assert entries[(t["tid"], name)] == n, (t["tid"], name)
    _no_leftovers(trace_dir)


def test_run_registers__add__then_arguments_and_return_values_as_the_program_saw_them(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--full", "--stack-bytes", "64", "--",
                          example("add")], env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    want = load_expectation(str(expect_path))["add_calls"]
    ft = FlightTrace(single_trace_dir(str(out)))
    calls = sorted((k, ev) for k, ev in ft.detail.items() if ft.detail_name(ev) == "add")
    entries = [ev for _, ev in calls if ev.WhichOneof("payload") == "function_call"]
    returns = [ev for _, ev in calls if ev.WhichOneof("payload") == "function_return"]
    assert len(entries) == len(returns) == len(want)

    def i32(v):
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >= 1 << 31 else v

    got = [{"a": i32(e.function_call.argument_registers["rdi"]),
            "b": i32(e.function_call.argument_registers["rsi"]),
            "ret": i32(r.function_return.return_registers["rax"])}
           for e, r in zip(entries, returns)]
    assert got == want
    for e in entries:
        regs = e.function_call.argument_registers
        assert set(regs) == {"rdi", "rsi", "rdx", "rcx", "r8", "r9", "rsp"}
        assert len(e.function_call.stack_shallow_copy) == 64
        # the copy starts at rsp on entry: its first word is add's return address
        ret_addr = int.from_bytes(e.function_call.stack_shallow_copy[:8], "little")
        main_sym = next(s for s in ft.symbols.by_id.values() if s.name == "main")
        assert main_sym.address < ret_addr < main_sym.address + max(main_sym.size, 1)


def test_run_malformed_trigger__then_exit_2_and_nothing_started(tmp_path):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-t", "symbol~=(", "--", example("add")])
    assert proc.returncode == 2
    assert "bad regular expression" in proc.stderr
    assert not out.exists()


def test_run_symbol_trigger_matching_nothing__then_specific_error_and_target_not_left(tmp_path):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-t", "symbol=no_such_function", "--",
                          example("add")])
    assert proc.returncode != 0
    assert "symbol=no_such_function matches no hooked function" in proc.stderr


def test_run_trigger_time__sleeper__then_window_at_that_time_after_start(tmp_path):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-t", "time=1.0", "--pre-roll-sec", "0.2",
                          "--post-roll-sec", "0.1", "--", example("sleeper"), "2"])
    assert proc.returncode == 0, proc.stderr
    ft = FlightTrace(single_trace_dir(str(out)))
    m = ft.manifest
    (w,) = m["windows"]
    assert w["trigger"] == "time=1.0"
    mark = w["startNs"] + int(0.2 * NS)
    assert abs(mark - (m["timeStartNs"] + NS)) < NS // 1000
    assert ft.detail and all(ft.in_window(ev.timestamp.seconds * NS + ev.timestamp.nanos)
                             for ev in ft.detail.values())
    names = {t["name"] for t in m["threads"]}
    assert {"sleeper-0", "sleeper-1", "sleeper-2"} <= names


def test_attach_duration__sleeper_with_trigger__then_target_left_running_and_healthy(tmp_path):
    expect_path = tmp_path / "expect.json"
    target = subprocess.Popen([example("sleeper"), "60"], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, LANETRACE_EXPECT=str(expect_path)))
    try:
        assert "ready" in target.stdout.readline() + target.stdout.readline()
        out = tmp_path / "traces"
        proc = run_lanetrace(["attach", "-o", str(out), "--duration", "2", "-t", "time=1.0",
                              "--post-roll-sec", "0.5", str(target.pid)])
        assert proc.returncode == 0, proc.stderr
        assert target.poll() is None, "the target must keep running after detach"
        trace_dir = single_trace_dir(str(out))
        ft = FlightTrace(trace_dir)
        assert ft.manifest["detached"] is True and ft.manifest["complete"] is True
        assert ft.detail
        _no_leftovers(trace_dir)
        # healthy: it still ticks on every thread and exits cleanly on request
        target.send_signal(signal.SIGTERM)
        assert target.wait(20) == 0
        expect = load_expectation(str(expect_path))
        assert expect["stop"] == "signal"
        ticks = [t["calls"].get("heartbeat_tick", 0) for t in expect["threads"][1:]]
        assert len(ticks) == 3 and min(ticks) > 0
        traced = sum(1 for v in ft.index.values() if v[1] == "heartbeat_tick"
                     and v[0] == "function_call")
        assert sum(ticks) > traced > 0  # it kept ticking after we left
    finally:
        if target.poll() is None:
            target.kill()


def test_run_starved_drainer__hot_threads__then_drops_per_thread_add_up_exactly(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--drainers", "1", "--ring-kb", "4",
                          "--rings-per-lane", "2", "--ring-budget-mb", "0",
                          "--", example("workers"), "4", "3000"],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    expect = load_expectation(str(expect_path))
    trace_dir = single_trace_dir(str(out))
    ft = FlightTrace(trace_dir)
    m = ft.manifest
    assert sum(m["drops"].values()) > 0, "the drainer was not starved: no drops to check"
    by_thread = {}
    for d in m["dropsByThread"]:
        assert d["lane"] == "index"
        by_thread[d["tid"]] = by_thread.get(d["tid"], 0) + d["count"]
    assert sum(by_thread.values()) == sum(v for k, v in m["drops"].items()
                                          if not k.startswith("detail_"))
    # hooked: the executable's own functions (the default selection)
    known = {name for name, module in expect["functions"].items() if module == "workers"}
    for t in expect["threads"]:
        real = 2 * sum(n for f, n in t["calls"].items() if f in known)  # ENTRY + RETURN
        recorded = sum(1 for (tid, _), v in ft.index.items() if tid == t["tid"] and v[1] in known)
        assert recorded + by_thread.get(t["tid"], 0) == real, t["tid"]
    assert m["seqGaps"] <= sum(by_thread.values())
    _no_leftovers(trace_dir)
