"""A drainer: owns registry shard k of every target of the session (slots with
``slot % shards == k``), moves their committed records to the writer in bulk,
and hands rings back to the producers only after the writer acked them.

Run as ``python -m lanetrace.drainer --run-dir DIR --shard K --shards N``.
Targets are found by scanning the run directory's ``targets/`` folder, so a
drainer restarted by supervisord picks up every live target by itself. What a
killed drainer had collected but not committed is collected again by its
successor (the shared read position moves only on commit), and the writer
drops the resent records by sequence number.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from lanetrace.bus import Bus
from lanetrace.datachannel import WriterClient
from lanetrace.rundir import RunDir
from lanetrace.shm import SegmentError, TargetSegment

BATCH_BYTES = 4 << 20
IDLE_SLEEP_S = 0.002
SCAN_INTERVAL_S = 0.1


class Target:
    def __init__(self, pid: int, info: dict, shard_index: int):
        self.pid = pid
        self.info = info
        self.segment = TargetSegment.open(info["shm"])
        self.shard = self.segment.shard(shard_index)
        self.records = 0
        self.batches = 0
        self.announced_drained = 0.0

    def close(self) -> None:
        self.segment.close()


class Drainer:
    def __init__(self, run_dir: RunDir, shard: int, shards: int):
        self.run_dir = run_dir
        self.shard_index = shard
        self.shards = shards
        self.name = f"drainer-{shard}"
        self.bus = Bus(run_dir, self.name)
        self.writer = WriterClient(run_dir.writer, self.name)
        self.targets: dict[int, Target] = {}
        self.stopping = False
        self._last_scan = 0.0
        self._window_start = time.monotonic()
        self._window_records = 0
        self._window_bytes = 0

    def scan_targets(self) -> None:
        registered = self.run_dir.registered_targets()
        for pid in list(self.targets):
            if pid not in registered:
                self.targets.pop(pid).close()
        for pid, info in registered.items():
            if pid in self.targets:
                continue
            try:
                self.targets[pid] = Target(pid, info, self.shard_index)
            except SegmentError as exc:
                # The injector unlinks a segment only after unregistering it,
                # so this is a target whose registration is going away.
                self.bus.publish("log.drainer", {"drainer": self.name, "pid": pid,
                                                 "error": str(exc)})

    def drain_target(self, target: Target) -> int:
        """Move everything target's shard has committed to the writer; return
        the number of bytes moved."""
        moved = 0
        while True:
            data = target.shard.collect(BATCH_BYTES)
            if not data:
                break
            count = len(data) // 32
            self.writer.request("index", {"pid": target.pid, "drainer": self.shard_index,
                                          "count": count}, data, deadline_s=None)
            # Acked as durable: only now may the producer reuse those rings.
            target.shard.commit()
            target.records += count
            target.batches += 1
            moved += len(data)
            self._window_records += count
            self._window_bytes += len(data)
            if len(data) < BATCH_BYTES:
                break
        return moved

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
                moved += self.drain_target(target)
                if target.segment.target_exited and target.shard.idle_and_complete():
                    # Repeated while registered: PUB/SUB may drop the first one.
                    if now - target.announced_drained > 0.2:
                        self.bus.publish("target.drained", {"pid": target.pid,
                                                            "shard": self.shard_index,
                                                            "records": target.records})
                        target.announced_drained = now
            self.publish_liveness()
            if not moved:
                time.sleep(IDLE_SLEEP_S)
        # Stop: one last pass so nothing collected-but-unsent stays behind.
        for target in self.targets.values():
            self.drain_target(target)
            target.close()
        self.writer.close()
        self.bus.close()
        return 0

    def publish_liveness(self) -> None:
        if not self.bus.heartbeat(shard=self.shard_index, targets=len(self.targets)):
            return
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        self.bus.publish(f"metrics.{self.name}", {
            "drainer": self.name, "shard": self.shard_index,
            "recordsPerSec": self._window_records / elapsed,
            "bytesPerSec": self._window_bytes / elapsed,
            "targets": {str(t.pid): {"records": t.records, "batches": t.batches}
                        for t in self.targets.values()},
        })
        self._window_start = time.monotonic()
        self._window_records = self._window_bytes = 0


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


if __name__ == "__main__":
    sys.exit(main())
