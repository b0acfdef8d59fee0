"""The event rate the drainers and the writer sustain on their own, with zero
drops: a synthetic target (bench/pipegen.c, the agent's own producer code
without hooks or Frida) writes ENTRY/RETURN pairs into a real shared-memory
segment at an exact, paced rate; the real drainer and writer services (and
the broker, which carries the drainers' "target drained" messages) move
them into a real trace. For each rate the trace's own counters say what was
recorded and dropped; the highest rate at which every event is in the trace
is the answer, with the detail lane off and on (on: every event also writes
a detail record with a 128-byte stack copy, and no window ever opens, as
with a flight-recorder trigger that does not fire).

    .venv/bin/python bench/drainrate.py [--rates 0.25,0.5,1,1.5,2,3,4,6,8,12,16] [--seconds 2]
        [--threads 2] [--drainers 2] [--detail off,on] [--json]

Each detail setting has services of its own, started once and all up at
once; the settings take turns at each rate (one synthetic target per run,
like a session with many targets), so that a change in machine load hits
them alike. Segment sizes are those
of `lanetrace run`'s defaults (256 KiB rings, 8 per lane, 64 slots).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack

import orjson
import zmq

from lanetrace.core import bus
from lanetrace.core.bus import Bus
from lanetrace.core.rundir import RunDir
from lanetrace.core.shm import SegmentError, TargetSegment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTIONS = 64
DRAIN_TIMEOUT_S = 120.0
STACK_BYTES = 128  # the flight recorder's default (core/flightrec.py)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Failed(Exception):
    """A trial or the services could not run; the message says why."""


def build_pipegen(out_dir: str) -> str:
    exe = os.path.join(out_dir, "pipegen")
    cmd = ["gcc", "-std=gnu11", "-O2", "-g", "-I", os.path.join(ROOT, "native", "include"),
           "-o", exe, os.path.join(ROOT, "bench", "pipegen.c"),
           os.path.join(ROOT, "native", "src", "shm.c"),
           os.path.join(ROOT, "native", "agent", "lanes.c"), "-pthread", "-lrt"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failed(f"building pipegen failed: {proc.stderr.strip()}")
    return exe


class Services:
    """Broker, writer and drainers of one session, as supervisord would run
    them, without supervisord."""

    def __init__(self, work: str, drainers: int):
        self.session = "bench-" + uuid.uuid4().hex[:8]
        self.run_dir = RunDir(os.path.join(work, "run-" + self.session)).create()
        self.trace_root = os.path.join(work, "traces")
        self.drainers = drainers
        self.procs: list[subprocess.Popen] = []
        self.pipeline_pids: list[int] = []  # writer and drainers
        self.logs = os.path.join(self.run_dir.path, "logs")
        os.makedirs(self.logs, exist_ok=True)

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.logs, name + ".log"), "wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", *argv], stdout=log,
                                           stderr=subprocess.STDOUT))
        if name != "broker":
            self.pipeline_pids.append(self.procs[-1].pid)
        log.close()

    def __enter__(self) -> "Services":
        try:
            return self._start_all()
        except BaseException:
            self.__exit__()
            raise

    def _start_all(self) -> "Services":
        rd = self.run_dir.path
        self._start("broker", ["lanetrace.supervise.broker", "--run-dir", rd])
        self._start("writer", ["lanetrace.writer", "--run-dir", rd, "--trace-root",
                               self.trace_root, "--session", self.session])
        for k in range(self.drainers):
            self._start(f"drainer-{k}", ["lanetrace.drainer", "--run-dir", rd, "--shard", str(k),
                                         "--shards", str(self.drainers)])
        ctx = zmq.Context()
        self.writer = ctx.socket(zmq.DEALER)
        self.writer.setsockopt(zmq.LINGER, 0)
        self.writer.connect(self.run_dir.writer)
        self.bus = Bus(self.run_dir, "bench", ctx)
        self.drained = self.bus.subscriber(bus.TARGET_DRAINED)
        self.ctx = ctx
        self._msg = 0
        self.request("ping", {})
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if hasattr(self, "ctx"):
            self.drained.close(0)
            self.writer.close(0)
            self.bus.close()
            self.ctx.term()

    def request(self, kind: str, header: dict, timeout_s: float = 30.0) -> None:
        self._msg += 1
        header = {"msgId": f"bench-{self._msg}", **header}
        self.writer.send_multipart([kind.encode(), orjson.dumps(header)])
        if not self.writer.poll(int(timeout_s * 1000)):
            raise Failed(f"the writer did not answer {kind} within {timeout_s:.0f} s "
                         f"(logs in {self.logs})")
        reply = self.writer.recv_multipart()
        if reply[0] != b"ack":
            raise Failed(f"the writer refused {kind}: {reply[2:] or reply}")

    def trace(self, exe: str, threads: int, events_per_s: float, seconds: float,
              detail: bool) -> dict:
        """One synthetic target at one rate, from start to finished trace."""
        argv = [exe, str(threads), f"{events_per_s:.0f}", str(seconds)]
        if detail:
            argv.append("detail")
        gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        pid = gen.pid
        seg = TargetSegment.create(self.session, pid, slots=64, shards=self.drainers,
                                   ring_bytes=256 * 1024, rings_per_lane=8,
                                   detail_ring_bytes=256 * 1024, detail_rings_per_lane=8)
        try:
            seg.preallocate()
            # The agent moves to the per-thread lanes by itself once the
            # drainers beat; the synthetic target starts there.
            seg.mode_policy(auto=False)
            seg.set_mode("PER_THREAD_ONLY")
            if detail:
                seg.set_detail(True, STACK_BYTES)
            start_ns = time.monotonic_ns()
            flight = {"enabled": detail, "full": False, "preRollNs": 500_000_000,
                      "postRollNs": 200_000_000, "bufferBytes": 64 << 20, "timeMarksNs": []}
            self.run_dir.register_target(pid, {"pid": pid, "shm": seg.name,
                                               "shards": self.drainers, "flight": flight})
            self.request("target_start", {"pid": pid, "sessionId": self.session,
                                          "executablePath": exe, "args": argv, "attached": False,
                                          "startNs": start_ns})
            self.request("functions", {"pid": pid, "functions": [
                {"id": f, "name": f"synthetic_{f}", "module": "pipegen",
                 "address": 0x401000 + f * 64, "size": 64} for f in range(1, FUNCTIONS + 1)]})
            deadline = time.monotonic() + 30
            while not all(seg.heartbeats()[:self.drainers]):
                if time.monotonic() > deadline:
                    raise Failed("the drainers never picked the target up")
                time.sleep(0.005)
            t0 = time.monotonic()
            cpu0 = sum(cpu_seconds(p) for p in self.pipeline_pids)
            out, err = gen.communicate(seg.name + "\n", timeout=seconds + 120)
            if gen.returncode != 0:
                raise Failed(f"pipegen failed: {err.strip()}")
            events = int(out.split("events=")[1].split()[0])
            seg.mark_target_exited()
            drained = set()
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while len(drained) < self.drainers:
                if time.monotonic() > deadline:
                    raise Failed(f"not drained within {DRAIN_TIMEOUT_S:.0f} s")
                msg = bus.receive(self.drained, 200)
                if msg and msg[1].get("pid") == pid:
                    drained.add(int(msg[1]["shard"]))
            drain_s = time.monotonic() - t0
            cpu = sum(cpu_seconds(p) for p in self.pipeline_pids) - cpu0
            drops = seg.drops()
            self.request("target_end", {"pid": pid, "exitCode": 0, "signal": 0,
                                        "detached": False, "endNs": time.monotonic_ns(),
                                        "drops": drops, "dropsByThread": seg.drops_by_thread()})
        finally:
            if gen.poll() is None:
                gen.kill()
                gen.wait()
            self.run_dir.unregister_target(pid)
            seg.unlink()
            seg.close()
        trace_dir = os.path.join(self.trace_root, self.session, f"pid_{pid}")
        with open(os.path.join(trace_dir, "trace.json"), "rb") as f:
            manifest = orjson.loads(f.read())
        recorded = manifest.get("callCount", 0) + manifest.get("returnCount", 0)
        index_drops = sum(v for k, v in drops.items() if not k.startswith(("detail", "marks")))
        shutil.rmtree(trace_dir, ignore_errors=True)
        return {"offeredPerSec": events_per_s, "detail": detail, "events": events,
                "recorded": recorded, "drops": index_drops,
                "detailDrops": sum(v for k, v in drops.items() if k.startswith("detail")),
                "seqGaps": manifest.get("seqGaps", 0), "seconds": seconds,
                "drainedAfterS": drain_s, "pipelineCpuS": cpu,
                # what the writer and drainers would move with a whole CPU
                "recordedPerCpuS": recorded / cpu if cpu > 0 else None,
                "zeroDrop": recorded == events and index_drops == 0}


def measure(rates: list[float], seconds: float = 2.0, threads: int = 2, drainers: int = 2,
            details: tuple[bool, ...] = (False, True), log=print) -> dict:
    """Every rate (M events/s) with each detail setting; returns the runs and
    the highest zero-drop rate per setting. The settings have services of
    their own, all up at once, and take turns at each rate, so that a change
    in machine load hits them alike. A setting stops at its first lossy rate."""
    out = {"runs": [], "maxZeroDropPerSec": {}, "errors": {}}
    keys = {detail: "on" if detail else "off" for detail in details}
    with tempfile.TemporaryDirectory(prefix="lt-bench-drain-") as work, ExitStack() as stack:
        exe = build_pipegen(work)
        services = {}
        for detail, key in keys.items():
            out["maxZeroDropPerSec"][key] = 0.0
            try:
                services[detail] = stack.enter_context(Services(work, drainers))
            except (Failed, OSError) as exc:
                out["errors"][key] = str(exc)
                log(f"  drain rate, detail {key}: failed ({exc})")
        for rate in sorted(rates):
            for detail, svc in list(services.items()):
                key = keys[detail]
                try:
                    r = svc.trace(exe, threads, rate * 1e6, seconds, detail)
                except (Failed, SegmentError, OSError, subprocess.SubprocessError) as exc:
                    out["errors"][key] = str(exc)
                    log(f"  drain rate, detail {key}: failed ({exc})")
                    del services[detail]
                    continue
                out["runs"].append(r)
                log(f"  drain rate, detail {key:<3} {rate:6.2f} M events/s offered: "
                    f"{r['events']:,} written, {r['recorded']:,} recorded, "
                    f"{r['drops']:,} dropped, drained {r['drainedAfterS']:.2f} s "
                    f"after the start; writer + drainers used {r['pipelineCpuS']:.2f} CPU s")
                if r["zeroDrop"]:
                    out["maxZeroDropPerSec"][key] = rate * 1e6
                else:
                    del services[detail]
    return out


def cost_text(res: dict, key: str) -> str:
    """What the writer and drainers spent at the highest zero-drop rate of one
    setting: CPU seconds per second of the run (idle polling included) and
    per recorded event."""
    runs = [r for r in res["runs"] if r["detail"] == (key == "on") and r["zeroDrop"]
            and r["recordedPerCpuS"]]
    if not runs:
        return ""
    best = max(runs, key=lambda r: r["offeredPerSec"])
    return (f"; there writer + drainers used {best['pipelineCpuS'] / best['seconds']:.2f} CPU s "
            f"per s ({best['pipelineCpuS'] / best['recorded'] * 1e9:.0f} ns CPU per event)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0.25,0.5,1,1.5,2,3,4,6,8,12,16",
                    help="offered rates to try, million events/s (default 0.25,0.5,1,1.5,2,3,4,6,8,12,16)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--drainers", type=int, default=2)
    ap.add_argument("--detail", default="off,on")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",") if x]
    details = tuple(x.strip() == "on" for x in args.detail.split(",") if x.strip())
    res = measure(rates, args.seconds, args.threads, args.drainers, details,
                  log=lambda s: print(s, file=sys.stderr))
    for key, best in res["maxZeroDropPerSec"].items():
        print(f"detail {key}: highest offered rate with zero drops {best / 1e6:.2f} M events/s"
              + cost_text(res, key)
              + (f" ({res['errors'][key]})" if key in res["errors"] else ""))
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
