"""Chaos: real services of a real daemon killed with SIGKILL (or restarted
with supervisorctl) at random moments while they trace real programs; the
traces must come out exact (every call the program reports, no duplicate,
no gap) or, under a load the pipeline cannot keep up with, exactly
accounted for (recorded + counted drops == what the program did).

Random moments come from a seed printed in every failure message, so a
failing run can be repeated: CHAOS_SEED=<seed> pytest tests/chaos -k NAME.
"""
import json
import os
import random
import signal
import threading
import time
from collections import Counter

import orjson
import pytest
import zmq

from conftest import example
from supervise.daemonkit import Daemon, wait_for
from e2e.tracecheck import Trace, count_mismatches, load_expectation

pytestmark = [pytest.mark.frida, pytest.mark.slow]

KILLS = 3
TICK_SECONDS = 8


@pytest.fixture
def rng():
    seed = int(os.environ.get("CHAOS_SEED") or int.from_bytes(os.urandom(4), "little"))
    r = random.Random(seed)
    r.seed_value = seed
    return r


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "traces")
    try:
        yield d.start()
    finally:
        d.cleanup()


class ModeEvents:
    """Collects the watchdog's ctl.mode events from the broker."""

    def __init__(self, run_dir: str):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"ctl.mode")
        self.sub.connect(f"ipc://{run_dir}/broker-sub.sock")
        self.events = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            if self.sub.poll(100):
                _, body = self.sub.recv_multipart()
                self.events.append(orjson.loads(body))

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sub.close(0)
        self.ctx.term()


def moments(rng, start: float, end: float, n: int, gap: float = 1.6) -> list[float]:
    """n random moments in [start, end], at least gap apart (a service killed
    within supervisord's startsecs counts as a failed start)."""
    while True:
        ts = sorted(rng.uniform(start, end) for _ in range(n))
        if all(b - a >= gap for a, b in zip(ts, ts[1:])):
            return ts


def spawn_ticker(daemon, tmp_path, name: str, seconds: int = TICK_SECONDS) -> tuple[int, str]:
    expect = tmp_path / f"{name}.json"
    pid = daemon.spawn([example("tickboom"), str(seconds), str(seconds)], expect)
    return pid, str(expect)


def order_problems(trace: Trace) -> list[str]:
    """Per thread, in sequence order: numbers contiguous, none twice,
    timestamps monotonic. (After a fallback, records that another lane
    delivered later sit later in events.bin: docs/internals.md, "Registry
    modes and delivery"; readers sort by (thread, sequence).)"""
    problems = []
    for tid, events in trace.by_thread.items():
        events = sorted(events)
        seqs = [e[0] for e in events]
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            problems.append(f"tid {tid}: sequence numbers not contiguous or repeated")
        ts = [e[1] for e in events]
        if any(b < a for a, b in zip(ts, ts[1:])):
            problems.append(f"tid {tid}: timestamps go backwards in sequence order")
    return problems


def assert_exact(daemon, pid: int, expect_path: str, why: str) -> Trace:
    entry = daemon.wait_ended(pid)
    assert not entry["error"], f"{why}: {entry['error']}"
    trace = Trace(daemon.trace_dir(pid))
    expect = load_expectation(expect_path)
    assert count_mismatches(trace, expect) == [], \
        f"{why}: drops {trace.manifest['drops']}, control {entry.get('control')}"
    assert order_problems(trace) == [], why
    assert trace.manifest["complete"] is True, why
    assert sum(trace.manifest["drops"].values()) == 0, f"{why}: {trace.manifest['drops']}"
    return trace


def kill_at_random_moments(daemon, rng, names, start_s: float, end_s: float, n=KILLS):
    t0 = time.monotonic()
    done = []
    for at in moments(rng, start_s, end_s, n):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        name = rng.choice(names)
        old = daemon.kill9(name)
        daemon.wait_restarted(name, old)
        done.append((round(at, 2), name))
    return done


# ---- drainers ---------------------------------------------------------------------

def test_drainer__kill9_three_times_at_random_moments__then_fallback_and_back_and_trace_exact(
        daemon, tmp_path, rng):
    modes = ModeEvents(daemon.run_dir)
    try:
        pid, expect = spawn_ticker(daemon, tmp_path, "ticker")
        kills = kill_at_random_moments(daemon, rng, ["lanetrace:drainer-0", "lanetrace:drainer-1"],
                                       0.5, TICK_SECONDS - 2.5)
        why = f"seed {rng.seed_value}, kills {kills}"
        # The watchdog saw every exit and every return (before the target ends).
        wait_for(lambda: not json.load(open(os.path.join(daemon.run_dir, "watchdog.json")))
                 ["down"], "every shard back from fallback")
        watchdog = json.load(open(os.path.join(daemon.run_dir, "watchdog.json")))
        assert watchdog["events"]["drainerExits"] == KILLS, why
        assert_exact(daemon, pid, expect, why)
        entry = daemon.wait_ended(pid)
        assert entry["control"]["fallbackEvents"] >= 1, why
        assert entry["control"]["finalMode"] == "PER_THREAD_ONLY", why
        on = [e for e in modes.events if e["pid"] == pid and e["fallback"]]
        off = [e for e in modes.events if e["pid"] == pid and not e["fallback"]]
        assert on and off, f"{why}: ctl.mode events {modes.events}"
    finally:
        modes.close()


def _thread_records(trace: Trace) -> Counter:
    out = Counter()
    for (tid, _), n in trace.entries.items():
        out[tid] += n
    for (tid, _), n in trace.returns.items():
        out[tid] += n
    return out


def test_drainer__kill9_under_a_hot_load__then_recorded_plus_dropped_equals_what_the_program_did(
        daemon, tmp_path, rng):
    expect_path = tmp_path / "workers.json"
    pid = daemon.spawn([example("workers"), "4", "50000"], expect_path,
                       ["-I", "workers", "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*"])
    kills = []
    t0 = time.monotonic()
    for at in moments(rng, 0.3, 2.2, 2):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        if daemon.target_entry(pid) and daemon.target_entry(pid).get("state") == "ended":
            break
        name = rng.choice(["lanetrace:drainer-0", "lanetrace:drainer-1"])
        daemon.wait_restarted(name, daemon.kill9(name))
        kills.append((round(at, 2), name))
    why = f"seed {rng.seed_value}, kills {kills}"
    entry = daemon.wait_ended(pid)
    assert not entry["error"], f"{why}: {entry['error']}"
    trace = Trace(daemon.trace_dir(pid))
    expect = load_expectation(str(expect_path))
    dropped = Counter()
    for row in trace.manifest.get("dropsByThread") or []:
        if row["lane"] == "index":
            dropped[row["tid"]] += row["count"]
    recorded = _thread_records(trace)
    for thread in expect["threads"]:
        if thread["tid"] == expect["pid"]:
            continue  # main also runs crt code outside the expectation
        made = 2 * sum(thread["calls"].values())  # an ENTRY and a RETURN per call
        tid = thread["tid"]
        assert recorded[tid] + dropped[tid] == made, \
            f"{why}: tid {tid}: recorded {recorded[tid]} + dropped {dropped[tid]} != {made}"
    assert trace.manifest["complete"] is True


# ---- writer and broker ----------------------------------------------------------------

def test_writer__kill9_three_times_at_random_moments__then_nothing_lost_or_duplicated(
        daemon, tmp_path, rng):
    pid, expect = spawn_ticker(daemon, tmp_path, "ticker")
    kills = kill_at_random_moments(daemon, rng, ["lanetrace:writer"], 0.5, TICK_SECONDS - 2.5)
    trace = assert_exact(daemon, pid, expect, f"seed {rng.seed_value}, kills {kills}")
    seqs = Counter((tid, e[0]) for tid, events in trace.by_thread.items() for e in events)
    assert max(seqs.values()) == 1, "a record written twice"


def test_broker__kill9_three_times_at_random_moments__then_control_and_metrics_resume(
        daemon, tmp_path, rng):
    pid, expect = spawn_ticker(daemon, tmp_path, "ticker")
    kills = kill_at_random_moments(daemon, rng, ["lanetrace:broker"], 0.5, TICK_SECONDS - 3.5)
    why = f"seed {rng.seed_value}, kills {kills}"
    # Control: a command is answered; metrics: the writer's reach the injector again.
    status = wait_for(lambda: (lambda s: s if s["rates"]["writerEventsPerSec"] > 0 else None)(
        daemon.status()), "metrics after the broker's restarts", timeout=60)
    assert any(t["pid"] == pid for t in status["targets"]), why
    assert_exact(daemon, pid, expect, why)


# ---- supervisorctl restart of each service ------------------------------------------------

def test_supervisorctl_restart__each_service_in_turn__then_trace_exact(daemon, tmp_path, rng):
    names = ["lanetrace:drainer-0", "lanetrace:writer", "lanetrace:broker", "lanetrace:drainer-1",
             "watchdog", "lanetrace:query-0"]
    pid, expect = spawn_ticker(daemon, tmp_path, "ticker", seconds=11)
    for name in names:
        out = daemon.supervisorctl("restart", name)
        assert out.returncode == 0 and "started" in out.stdout, out.stdout + out.stderr
        time.sleep(rng.uniform(0.2, 0.8))
    assert_exact(daemon, pid, expect, f"restarted {names}")


# ---- targets ending badly, several targets at once -------------------------------------------

def test_target_crashes_mid_trace__then_its_trace_final_and_the_daemon_serves_the_others(
        daemon, tmp_path):
    pid, expect = spawn_ticker(daemon, tmp_path, "ticker")
    crasher = daemon.spawn([example("crasher"), "thread"])
    entry = daemon.wait_ended(crasher)
    assert entry["signal"] == signal.SIGSEGV
    trace = Trace(daemon.trace_dir(crasher))
    assert trace.manifest["complete"] is True and trace.manifest["signal"] == signal.SIGSEGV
    assert sum(trace.entries.values()) > 0
    # A third target after the crash: the daemon still takes commands.
    later, later_expect = spawn_ticker(daemon, tmp_path, "later", seconds=2)
    assert_exact(daemon, later, later_expect, "target started after the crash")
    assert_exact(daemon, pid, expect, "target running through the crash")


def test_target_killed_from_outside_mid_trace__then_its_trace_final(daemon, tmp_path):
    pid, _ = spawn_ticker(daemon, tmp_path, "victim", seconds=30)
    wait_for(lambda: daemon.status()["targets"][0].get("recordsDrained", 0) >= 0, "tracing")
    time.sleep(1.5)
    os.kill(pid, signal.SIGKILL)
    entry = daemon.wait_ended(pid)
    assert entry["signal"] == signal.SIGKILL
    trace = Trace(daemon.trace_dir(pid))
    assert trace.manifest["complete"] is True
    assert sum(n for (tid, name), n in trace.entries.items() if name == "tick") > 0
    assert order_problems(trace) == []


@pytest.mark.parametrize("count", [2, 4])
def test_targets_at_once__each_killed_drainer_included__then_each_recorded_exactly(
        daemon, tmp_path, rng, count):
    targets = [spawn_ticker(daemon, tmp_path, f"t{i}", seconds=5) for i in range(count)]
    name = rng.choice(["lanetrace:drainer-0", "lanetrace:drainer-1"])
    time.sleep(rng.uniform(0.5, 2.0))
    daemon.wait_restarted(name, daemon.kill9(name))
    why = f"seed {rng.seed_value}, killed {name}"
    for pid, expect in targets:
        assert_exact(daemon, pid, expect, f"{why}, pid {pid}")
    dirs = sorted(os.listdir(daemon.session_dir()))
    assert [d for d in dirs if d.startswith("pid_")] == sorted(f"pid_{p}" for p, _ in targets)


def test_injector__kill9_while_tracing__then_its_successor_finalizes_the_orphaned_trace(
        daemon, tmp_path):
    first, first_expect = spawn_ticker(daemon, tmp_path, "first", seconds=2)
    assert_exact(daemon, first, first_expect, "before the kill")
    pid, _ = spawn_ticker(daemon, tmp_path, "orphan", seconds=30)
    time.sleep(1.0)
    daemon.wait_restarted("lanetrace:injector", daemon.kill9("lanetrace:injector"))
    entry = daemon.wait_ended(pid)
    assert "injector was restarted" in entry["error"]
    trace = Trace(daemon.trace_dir(pid))
    assert trace.manifest["complete"] is True
    assert sum(n for (tid, name), n in trace.entries.items() if name == "tick") > 0
    # The successor kept its predecessor's record and takes new commands.
    assert daemon.target_entry(first)["state"] == "ended"
    later, later_expect = spawn_ticker(daemon, tmp_path, "later", seconds=2)
    assert_exact(daemon, later, later_expect, "after the restart")
    os.kill(pid, signal.SIGKILL)
