"""Drive agent.js the way the injector does (init/plan/install, functions
ack), drain the segment concurrently, and check the record stream."""
import collections
import os
import subprocess
import threading
import time

import frida

from lanetrace.injector import hooksafety
from lanetrace.injector.fridaguard import HangGuard
from lanetrace.injector.threadstop import thread_ids

from lanetrace.core.shm import TargetSegment, parse_records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT_JS = os.path.join(REPO, "native", "agent", "agent.js")
AGENT_LIB = os.path.join(REPO, "services", "lanetrace", "liblanetrace_agent.so")

ENTRY, RETURN, UNWOUND = 1, 2, 3


class Drainers:
    """One thread per shard: collect_batch -> ("writer acked") -> commit,
    and collect_detail. heartbeat: write the shard's heartbeat every pass
    (like the real drainer) unless the shard is in `silent`."""

    def __init__(self, seg, heartbeat=False, silent=()):
        self.seg = seg
        self.chunks = collections.defaultdict(list)
        self.detail = collections.defaultdict(list)
        self.heartbeat = heartbeat
        self.silent = set(silent)  # shards that do not beat (not up yet, or stuck)
        self.paused = set()  # shards that stop draining (and beating)
        self.stop = threading.Event()
        self.abort = threading.Event()  # quit now: the segment is about to be freed
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(seg.shard(k),), daemon=True)
                        for k in range(seg.config["shards"])]
        for t in self.threads:
            t.start()

    def _run(self, shard):
        try:
            while not self.abort.is_set():
                if shard.index in self.paused and not self.stop.is_set():
                    time.sleep(0.001)
                    continue
                if self.heartbeat and shard.index not in self.silent:
                    self.seg.heartbeat(shard.index)
                data, token = shard.collect_batch(1 << 20)
                if data:
                    self.chunks[shard.index].append(data)
                shard.commit(token)
                detail = shard.collect_detail(max(1 << 20, self.seg.config["detail_ring_bytes"]))
                if detail:
                    self.detail[shard.index].append(detail)
                if not data and not detail:
                    if self.stop.is_set() and shard.idle_and_complete():
                        return
                    time.sleep(0.0005)
        except Exception as e:  # surfaced by finish()
            self.errors.append(repr(e))

    def wait_for_function(self, fid, timeout=60):
        """Block until an ENTRY of function `fid` was collected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for chunks in list(self.chunks.values()):
                for data in list(chunks):
                    recs = parse_records(data)
                    if ((recs["func_id"] == fid) & (recs["kind"] == ENTRY)).any():
                        return
            time.sleep(0.01)
        raise AssertionError(f"no ENTRY of function {fid} within {timeout}s")

    def finish(self, timeout=60):
        self.seg.mark_target_exited()
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not self.errors, self.errors
        assert not any(t.is_alive() for t in self.threads), "drainer did not reach idle_and_complete"
        return b"".join(b"".join(v) for v in self.chunks.values())

    def halt(self, timeout=60):
        """Stop every drainer thread at once, drained or not."""
        self.abort.set()
        for t in self.threads:
            t.join(timeout)

    def detail_bytes(self):
        return b"".join(b"".join(v) for v in self.detail.values())


class Traced:
    """A target under the agent: spawn (frida.spawn) or attach (Popen + attach).

    Frida's injection very rarely never returns (see lanetrace.injector.fridaguard);
    the set-up is then killed after SETUP_TIMEOUT_S and tried once more with
    a fresh target, so a known Frida hang fails loudly instead of hanging."""

    SETUP_TIMEOUT_S = 60

    def __init__(self, *args, **kwargs):
        for attempt in (1, 2):
            guard = HangGuard(self.SETUP_TIMEOUT_S)
            try:
                with guard:
                    self._start(*args, **kwargs)
                return
            except Exception:
                drainers = getattr(self, "drainers", None)
                if drainers is not None:
                    try:
                        drainers.finish()
                    except Exception:  # the target was killed under it
                        pass
                    self.drainers = None
                seg = getattr(self, "seg", None)
                if seg is not None:
                    seg.unlink()
                    seg.close()
                    self.seg = None
                if not guard.fired or attempt == 2:
                    raise

    def _start(self, session_id, argv, *, attach=False, selection=None, slots=64, shards=2,
                 ring_bytes=65536, rings_per_lane=8, pass_fds=(), stdin=None, _wait_line=None,
                 mode="PER_THREAD_ONLY", global_records=16384, detail_ring_bytes=65536,
                 detail_rings_per_lane=4, detail=None, triggers=None, heartbeat=False,
                 silent_shards=(), before_install=None, fallback=("tiny",), clock="auto",
                 install_request=hooksafety.install_request):
        self.functions = {}
        self.messages = []
        self.output = []
        self.detached = threading.Event()
        self.device = frida.get_local_device()
        if attach:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, pass_fds=pass_fds, stdin=stdin)
            self.pid = self.proc.pid
            if _wait_line:  # attach only once the target reached this point
                line = ""
                while _wait_line not in line:
                    line = self.proc.stdout.readline()
                    self.output.append(line)
                    if not line:
                        raise RuntimeError(f"target exited before printing {_wait_line!r}")
        else:
            self.proc = None
            self.pid = self.device.spawn(argv, stdio="pipe")
            self.device.on("output", self._on_output)
        self.seg = TargetSegment.create(session_id, self.pid, slots=slots, shards=shards,
                                        ring_bytes=ring_bytes, rings_per_lane=rings_per_lane,
                                        global_records=global_records,
                                        detail_ring_bytes=detail_ring_bytes,
                                        detail_rings_per_lane=detail_rings_per_lane)
        if detail is not None:  # stack bytes
            self.seg.set_detail(True, detail)
        program_tids = thread_ids(self.pid)
        self.session = self.device.attach(self.pid)
        self.session.on("detached", lambda *a: self.detached.set())
        with open(AGENT_JS) as f:
            self.script = self.session.create_script(f.read())
        self.script.on("message", self._on_message)
        self.script.load()
        self.api = self.script.exports_sync
        # as the injector does: the agent stamps with the TSC where it can
        self.record_clock = self.seg.enable_tsc_clock(clock)
        self.init = self.api.init({"shmName": self.seg.name, "agentLibPath": AGENT_LIB,
                                   "programThreads": program_tids})
        self.plan = self.api.plan(selection or {})
        for fn in self.plan["functions"]:
            self.functions[fn["id"]] = fn
        # the mode before hooks go live (None: leave it to the agent's mode machine)
        if mode is not None:
            self.seg.set_mode(mode)
        self.drainers = Drainers(self.seg, heartbeat=heartbeat, silent=silent_shards)
        if before_install is not None:
            before_install(self)
        self.verdicts = hooksafety.decide(self.pid, self.plan.get("modules", []), self.plan["functions"])
        # keep the Interceptor.attach fallback path covered: these functions take it
        for fn in self.plan["functions"]:
            if fn["name"] in fallback and self.verdicts[fn["id"]].kind == "fast":
                self.verdicts[fn["id"]] = hooksafety.Verdict("fallback", "forced by the test")
        self.install = self.api.install(install_request(
            self.verdicts, *hooksafety.planned_entries(self.plan["functions"])))
        if triggers is not None:
            ids = [fid for fid, fn in self.functions.items() if fn["name"] in triggers]
            self.triggers = self.api.set_triggers({"functionIds": ids})

    def _on_output(self, pid, fd, data):
        if pid == self.pid and data:
            self.output.append(data.decode(errors="replace"))

    def _on_message(self, message, data):
        self.messages.append(message)
        if message.get("type") == "send":
            p = message["payload"]
            if p.get("type") == "functions":
                for fn in p["functions"]:
                    self.functions[fn["id"]] = fn
                verdicts = hooksafety.decide(self.pid, p.get("modules", []), p["functions"])
                self.script.post({"type": "functions-ack", "seq": p["seq"], **hooksafety.install_request(
                    verdicts, *hooksafety.planned_entries(p["functions"]))})

    def resume(self):
        self.device.resume(self.pid)

    def wait_exit(self, timeout=120):
        """Returns (exit code or None, stdout)."""
        if self.proc is not None:
            out, err = self.proc.communicate(timeout=timeout)
            self.detached.wait(timeout)
            return self.proc.returncode, "".join(self.output) + out + err
        assert self.detached.wait(timeout), "target did not exit"
        return None, "".join(self.output)

    def finish(self):
        data = self.drainers.finish()
        return data

    def close(self):
        if getattr(self, "drainers", None) is not None:
            self.drainers.halt()  # they read the segment close() frees
        try:
            self.seg.unlink()
        finally:
            self.seg.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fid_by_name(traced):
    return {fn["name"]: fid for fid, fn in traced.functions.items()}


class _Counts(collections.defaultdict):
    threads = 0


def check_stream(data, name_of):
    """Per-thread checks of a complete stream: seq contiguous from 1, time
    non-decreasing, every RETURN/UNWOUND closes the innermost open ENTRY of
    the same function at the same depth. Returns (counts, problems) where
    counts[(tid, name)][kind] is a number of records; counts.threads is the
    number of thread instances (a reused tid counts again)."""
    recs = parse_records(data)
    problems = []
    counts = _Counts(collections.Counter)
    by_tid = collections.defaultdict(list)
    for r in recs:
        by_tid[int(r["tid"])].append((int(r["seq"]), int(r["ts_ns"]), int(r["func_id"]),
                                      int(r["kind"]), int(r["depth"])))
    instances = []
    for tid, rs in by_tid.items():
        # a tid the kernel reused for a later thread starts again at seq 1:
        # threads of one tid follow each other in time
        rs.sort(key=lambda x: (x[1], x[0]))
        cur = []
        for x in rs:
            if x[0] == 1 and cur:
                instances.append((tid, cur))
                cur = []
            cur.append(x)
        instances.append((tid, cur))
    for tid, rs in instances:
        rs.sort()
        seqs = [x[0] for x in rs]
        if seqs != list(range(1, len(rs) + 1)):
            problems.append(f"tid {tid}: seqs not contiguous from 1 ({len(rs)} records, max {seqs[-1]})")
        ts = [x[1] for x in rs]
        if any(a > b for a, b in zip(ts, ts[1:])):
            problems.append(f"tid {tid}: timestamps go backwards")
        stack = []
        for seq, _, fid, kind, depth in rs:
            name = name_of.get(fid, f"#{fid}")
            counts[(tid, name)][kind] += 1
            if kind == ENTRY:
                if depth != len(stack):
                    problems.append(f"tid {tid} seq {seq}: ENTRY {name} depth {depth} != {len(stack)}")
                stack.append((fid, depth))
            else:
                if not stack or stack[-1] != (fid, depth):
                    problems.append(f"tid {tid} seq {seq}: close {name}@{depth} does not match {stack[-1:]}")
                    continue
                stack.pop()
        if stack:
            problems.append(f"tid {tid}: {len(stack)} frames never closed: "
                            f"{[name_of.get(f, f) for f, _ in stack]}")
    counts.threads = len(instances)
    return counts, problems
