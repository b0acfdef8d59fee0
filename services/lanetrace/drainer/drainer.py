"""A drainer: owns registry shard k of every target of the session (slots with
``slot % shards == k``), moves their committed records to the writer in bulk,
and hands rings back to the producers only after the writer acked them.

Run as ``python -m lanetrace.drainer --run-dir DIR --shard K --shards N``.
Targets are found by scanning the run directory's ``targets/`` folder, so a
drainer restarted by supervisord picks up every live target by itself. What a
killed drainer had collected but not committed is collected again by its
successor (the shared read position moves only on commit), and the writer
drops the resent records by sequence number.

Index batches are pipelined (pipeline.py): a few are in flight, and each
one's rings are committed when its own ack arrives. Detail rings are copied
out at once into the target's pre-roll buffer (preroll.py) and sent only
where a window claims them.
"""
from __future__ import annotations

import argparse
import os
import signal
import time

from lanetrace.core import bus, flightrec
from lanetrace.core.bus import Bus
from lanetrace.core.rundir import RunDir
from lanetrace.core.shm import SegmentError, TargetSegment
from lanetrace.drainer.pipeline import Pipeline
from lanetrace.drainer.preroll import PreRoll

# 32k records a request: the per-request cost (header, ZeroMQ hop, ack) is
# then a few percent of the writer's encoding time. The rings a batch holds
# until its ack are borrowed from the target's shared pool when a thread's own
# run out, so big batches no longer starve the producers.
BATCH_BYTES = int(os.environ.get("LANETRACE_DRAIN_BATCH_KB", "1024")) << 10
# batches in flight to the writer; 1 = wait for each ack (bench/overhead.py
# compares the two through this variable)
PIPELINE_DEPTH = int(os.environ.get("LANETRACE_DRAIN_DEPTH", "4"))
DETAIL_COLLECT_BYTES = 4 << 20
IDLE_SLEEP_S = 0.002
# new targets are found by listing targets/; a busy target fills its rings
# within tens of milliseconds, so look often
SCAN_INTERVAL_S = 0.02
COUNTS_INTERVAL_S = 1.0
# marks are read this often; held data outlives the pre-roll by
# flightrec.MARK_LATENCY_S, far more than this
MARKS_INTERVAL_S = 0.01


class DrainedTarget:
    def __init__(self, pid: int, info: dict, shard_index: int, shards: int):
        self.pid = pid
        self.info = info
        self.segment = TargetSegment.open(info["shm"])
        self.shard = self.segment.shard(shard_index)
        self.records = 0
        self.batches = 0
        self.index_bytes = 0
        self.detail_records = 0
        self.detail_bytes = 0
        self.lag_ns = 0
        self.announced_drained = 0.0
        fr = info.get("flight") or {}
        self.flight = bool(fr.get("enabled"))
        self.full = bool(fr.get("full"))
        self.pre_ns = int(fr.get("preRollNs", 0))
        self.post_ns = int(fr.get("postRollNs", 0))
        self.time_marks = [int(t) for t in fr.get("timeMarksNs", [])]
        # the budget is per target; every shard holds its share
        self.preroll = PreRoll(int(fr.get("bufferBytes", 0)) // max(1, shards),
                               self.pre_ns / flightrec.NS, full=self.full)
        self.windows: list[dict] = []
        self.windows_at = 0.0
        self.final_flushed = False
        # nothing to report before the first record (the writer may not
        # know the target yet: registration comes before target_start)
        self.counts_sent: dict = dict(self.preroll.counts)
        self.counts_sent_at = 0.0
        self.warned_budget = False
        self.rate_window = (time.monotonic(), 0)
        # batch buffers not in flight: the records are collected into one and
        # sent from it without a copy; it is reused once its batch was acked
        self.spare_buffers: list[bytearray] = []

    def close(self) -> None:
        self.segment.close()


class Drainer:
    def __init__(self, run_dir: RunDir, shard: int, shards: int):
        self.run_dir = run_dir
        self.shard_index = shard
        self.shards = shards
        self.name = f"drainer-{shard}"
        # cumulative detail counts are keyed by instance: a restarted drainer
        # starts from zero without the writer mistaking it for a resend
        self.instance = f"{self.name}:{os.getpid()}:{time.monotonic_ns()}"
        self.bus = Bus(run_dir, self.name)
        self.pipe = Pipeline(run_dir.writer, self.name, depth=PIPELINE_DEPTH,
                             on_wait=self.beat_while_blocked)
        self.targets: dict[int, DrainedTarget] = {}
        self.stopping = False
        self._last_scan = 0.0
        self._window_start = time.monotonic()
        self._last_totals: dict[tuple[int, str], tuple[int, int]] = {}

    def scan_targets(self) -> None:
        registered = self.run_dir.registered_targets()
        for pid in list(self.targets):
            if pid not in registered:
                self.forget(self.targets.pop(pid))
        for pid, info in registered.items():
            if pid in self.targets:
                continue
            try:
                self.targets[pid] = DrainedTarget(pid, info, self.shard_index, self.shards)
            except SegmentError as exc:
                # The injector unlinks a segment only after unregistering it,
                # so this is a target whose registration is going away.
                self.bus.publish(bus.DRAINER_LOG, {"drainer": self.name, "pid": pid,
                                                 "error": str(exc)})

    def forget(self, target: DrainedTarget) -> None:
        # Unregistered before we saw its end: nothing more can be sent for it.
        self.pipe.flush()
        target.preroll.drop_all()
        target.close()

    # ---- index lane -------------------------------------------------------------
    def drain_index(self, target: DrainedTarget) -> int:
        """Collect and send what target's shard has committed, up to a full
        pipeline; return the number of bytes sent."""
        moved = 0
        while True:
            buf = target.spare_buffers.pop() if target.spare_buffers else bytearray(BATCH_BYTES)
            n, token = target.shard.collect_batch_into(buf)
            if not n:
                target.spare_buffers.append(buf)
                break
            count = n // 32
            target.lag_ns = max(0, time.monotonic_ns() - int.from_bytes(buf[:8], "little"))

            def acked(t=target, tok=token, b=buf):
                # Durable at the writer: only now may the producer reuse the rings.
                t.shard.commit(tok)
                t.spare_buffers.append(b)

            self.pipe.send("index", {"pid": target.pid, "drainer": self.shard_index,
                                     "count": count}, memoryview(buf)[:n], on_ack=acked)
            target.records += count
            target.batches += 1
            target.index_bytes += n
            moved += n
            if n < BATCH_BYTES:
                break
        return moved

    # ---- detail lane ----------------------------------------------------------
    def drain_detail(self, target: DrainedTarget, final: bool = False) -> int:
        if not target.flight:
            return 0
        # One helping per pass (everything when final): the index lane, which
        # is always kept in full, must not wait behind a flood of detail.
        got = 0
        while True:
            data = target.shard.collect_detail(DETAIL_COLLECT_BYTES)
            if not data:
                break
            target.preroll.add(data)
            got += len(data)
            if not final:
                break
        now = time.monotonic()
        if final or now - target.windows_at >= MARKS_INTERVAL_S:
            target.windows = self.windows_of(target)
            target.windows_at = now
        out = target.preroll.release(target.windows, time.monotonic_ns(), final=final)
        target.preroll.enforce_budget()
        self.warn_if_budget_short(target)
        counts = dict(target.preroll.counts)
        report = counts != target.counts_sent and \
            (final or now - target.counts_sent_at >= COUNTS_INTERVAL_S)
        if out or report:
            header = {"pid": target.pid, "drainer": self.shard_index, "bytes": len(out),
                      "full": target.full, "windows": target.preroll.annotate(target.windows),
                      "instance": self.instance, "counts": counts}
            self.pipe.send("detail", header, out,
                           on_nack=lambda err, t=target, n=len(out): self.detail_refused(t, n, err))
            target.counts_sent, target.counts_sent_at = counts, now
            if out:
                target.detail_bytes += len(out)
        return got

    def detail_refused(self, target: DrainedTarget, nbytes: int, error: str) -> None:
        # Detail is best effort next to the index lane: a refused batch is
        # reported, never a reason to stop draining.
        self.bus.publish(bus.DRAINER_LOG, {"drainer": self.name, "pid": target.pid,
                                         "error": f"detail batch of {nbytes} bytes refused: {error}"})

    def windows_of(self, target: DrainedTarget) -> list[dict]:
        ws = [flightrec.window_of(m, target.pre_ns, target.post_ns, flightrec.mark_label(m))
              for m in target.segment.marks()]
        # time triggers: due on our own clock, whether or not the injector's
        # mark is in yet (a window in the future would claim data too early)
        now = time.monotonic_ns()
        ws += [flightrec.window_of({"tsNs": t}, target.pre_ns, target.post_ns, "time")
               for t in target.time_marks if t <= now]
        return flightrec.merge_windows(ws)

    def warn_if_budget_short(self, target: DrainedTarget) -> None:
        """Say so as soon as the data rate shows that the budget cannot hold
        the pre-roll, not only when a window turns out short."""
        t0, b0 = target.rate_window
        now = time.monotonic()
        if now - t0 < 1.0 or target.full:
            return
        received = target.preroll.counts["received"]
        rate = (received - b0) / (now - t0)  # records/s into this shard's buffer
        target.rate_window = (now, received)
        held = max(1, target.preroll.held_records)
        per_record = target.preroll.held_bytes / held if target.preroll.held_records else 0
        need = rate * per_record * (target.pre_ns / flightrec.NS + flightrec.MARK_LATENCY_S)
        if per_record and need > target.preroll.budget and not target.warned_budget:
            target.warned_budget = True
            holds_s = target.preroll.budget / max(rate * per_record, 1e-9)
            self.bus.publish(bus.FLIGHT_BUDGET, {
                "pid": target.pid, "drainer": self.name, "needBytes": int(need),
                "budgetBytes": target.preroll.budget, "holdsSeconds": holds_s,
                "preRollSeconds": target.pre_ns / flightrec.NS})

    # ---- loop ---------------------------------------------------------------
    def run(self) -> int:
        while not self.stopping:
            now = time.monotonic()
            if now - self._last_scan >= SCAN_INTERVAL_S:
                self.scan_targets()
                self._last_scan = now
            moved = 0
            now_ns = time.monotonic_ns()
            for target in list(self.targets.values()):
                target.segment.heartbeat(self.shard_index, now_ns)
                moved += self.drain_index(target)
                moved += self.drain_detail(target)
                target.segment.heartbeat(self.shard_index, time.monotonic_ns())
                self.pipe.poll(0)
                if target.segment.target_exited:
                    self.finish_if_drained(target, now)
            if moved or not self.pipe.idle():
                self.pipe.poll(0 if moved else int(IDLE_SLEEP_S * 1000))
            else:
                time.sleep(IDLE_SLEEP_S)
            self.publish_liveness()
        # Stop: one last pass so nothing collected-but-unsent stays behind.
        for target in self.targets.values():
            self.drain_index(target)
            self.drain_detail(target, final=target.segment.target_exited)
        self.pipe.flush()
        for target in self.targets.values():
            target.close()
        self.pipe.close()
        self.bus.close()
        return 0

    def finish_if_drained(self, target: DrainedTarget, now: float) -> None:
        self.pipe.flush()  # every ack in, so every commit done
        if not target.shard.idle_and_complete():
            return
        if not target.final_flushed:
            # No window can open after the target's end: place or discard
            # everything still held, and report the final counts.
            self.drain_detail(target, final=True)
            self.pipe.flush()
            target.final_flushed = True
        # Repeated while registered: PUB/SUB may drop the first one.
        if now - target.announced_drained > 0.2:
            self.bus.publish(bus.TARGET_DRAINED, {"pid": target.pid, "shard": self.shard_index,
                                                "records": target.records})
            target.announced_drained = now

    def beat_while_blocked(self) -> None:
        """Blocked on a restarting writer, this drainer is still alive: its
        shard must not look stale, or the agent would move its threads to the
        small global lane, which no drainer can empty while the writer is down."""
        now_ns = time.monotonic_ns()
        for target in self.targets.values():
            target.segment.heartbeat(self.shard_index, now_ns)
        self.publish_liveness()

    def publish_liveness(self) -> None:
        if not self.bus.heartbeat(shard=self.shard_index, targets=len(self.targets)):
            return
        now = time.monotonic()
        dt = max(now - self._window_start, 1e-9)
        self._window_start = now
        targets = {}
        for t in self.targets.values():
            lanes = {}
            for lane, (records, nbytes) in (("index", (t.records, t.index_bytes)),
                                            ("detail", (t.preroll.counts["received"],
                                                        t.detail_bytes))):
                last = self._last_totals.get((t.pid, lane), (0, 0))
                self._last_totals[(t.pid, lane)] = (records, nbytes)
                lanes[lane] = {"records": records, "recordsPerSec": (records - last[0]) / dt,
                               "bytesPerSec": (nbytes - last[1]) / dt}
            pr = t.preroll
            lanes["detail"].update(
                held=pr.held_records, heldBytes=pr.held_bytes, budgetBytes=pr.budget,
                occupancy=pr.held_bytes / pr.budget if pr.budget else 0.0,
                **{k: v for k, v in pr.counts.items() if k != "received"})
            try:
                drops = t.segment.drops()
                counters = t.segment.counters()
                # rings held by us: batches collected, not yet acked+committed
                pool = {"batchesInFlight": t.shard.pending_batches,
                        "slotsInUse": counters.get("slots_in_use", 0),
                        "ringsSubmitted": counters.get("rings_submitted", 0)}
            except SegmentError:
                drops, pool = {}, None
            targets[str(t.pid)] = {"lanes": lanes, "drops": drops, "ringPool": pool,
                                   "drainLagMs": t.lag_ns / 1e6, "batches": t.batches}
        self.bus.publish(bus.METRICS + self.name, {
            "drainer": self.name, "shard": self.shard_index, "ts": time.monotonic_ns(),
            "inFlight": self.pipe.in_flight, "resends": self.pipe.resends, "targets": targets,
            "recordsPerSec": sum(x["lanes"]["index"]["recordsPerSec"] for x in targets.values()),
            "bytesPerSec": sum(x["lanes"]["index"]["bytesPerSec"] + x["lanes"]["detail"]["bytesPerSec"]
                               for x in targets.values()),
        })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lanetrace-drainer")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shards", type=int, required=True)
    args = parser.parse_args(argv)
    if not 0 <= args.shard < args.shards:
        parser.error(f"--shard must be in [0, {args.shards})")
    drainer = Drainer(RunDir(args.run_dir), args.shard, args.shards)

    def stop(*_):
        drainer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return drainer.run()

