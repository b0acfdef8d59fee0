"""The writer service (``python -m lanetrace.writer``): receives the data
channel's requests on a ZeroMQ ROUTER (proto/datachannel.proto), appends
them to each target's trace file (``tracefile.TraceFile``) and acks each
request once its bytes are in the file."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import types

import orjson
import zmq

from lanetrace.core import atf, bus
from lanetrace.core.bus import Bus
from lanetrace.core.stopsignal import StopSignal
from lanetrace.writer.requests import I32, U32, U64, RequestError, field, function_entry, window
from lanetrace.writer.tracefile import RECORD_SIZE, OutBuffer, Syncer, TraceCorrupt, TraceFile

log = logging.getLogger("lanetrace.writer")

KINDS = ("target_start", "functions", "index", "detail", "window", "threads", "signal",
         "target_end", "ping")
MANIFEST_INTERVAL_S = 1.0
# Drainers may still deliver a finished target's last batches; keep its file
# open that long instead of rescanning it for each late batch.
ENDED_CLOSE_AFTER_S = 10.0


class Metrics:
    def __init__(self):
        self.c = dict(batches=0, records=0, events=0, bytes=0, duplicates=0, gaps=0,
                      unknownFunctions=0, invalidRecords=0, late=0, requests=0, nacks=0,
                      detailEvents=0, detailDiscarded=0, detailDuplicates=0)
        self._last = dict(self.c)
        self._last_t = time.monotonic()
        self.lanes: dict[tuple[int, str], list[int]] = {}  # (pid, lane) -> [events, bytes]
        self._last_lanes: dict[tuple[int, str], list[int]] = {}

    def lane(self, pid: int, lane: str, events: int, nbytes: int) -> None:
        c = self.lanes.setdefault((pid, lane), [0, 0])
        c[0] += events
        c[1] += nbytes

    def snapshot(self) -> dict:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        out = dict(self.c)
        out["eventsPerSec"] = (self.c["events"] - self._last["events"]) / dt
        out["bytesPerSec"] = (self.c["bytes"] - self._last["bytes"]) / dt
        by_target: dict[str, dict] = {}
        for (pid, lane), (events, nbytes) in self.lanes.items():
            last = self._last_lanes.get((pid, lane), [0, 0])
            by_target.setdefault(str(pid), {})[lane] = {
                "events": events, "bytes": nbytes, "eventsPerSec": (events - last[0]) / dt,
                "bytesPerSec": (nbytes - last[1]) / dt}
        out["byTraceFile"] = by_target
        self._last, self._last_t = dict(self.c), now
        self._last_lanes = {k: list(v) for k, v in self.lanes.items()}
        return out

    def forget(self, pid: int) -> None:
        for key in [k for k in self.lanes if k[0] == pid]:
            self.lanes.pop(key, None)
            self._last_lanes.pop(key, None)


class Writer:
    def __init__(self, run_dir: str, trace_root: str, session: str, inline_symbols: bool,
                 broker_pub: str | None):
        self.run_dir = run_dir
        self.trace_root = trace_root
        self.session = session
        self.inline_symbols = inline_symbols
        self.targets: dict[int, TraceFile] = {}
        self.out = OutBuffer()
        self.metrics = Metrics()
        self.stopping = False
        self.wakeup_fd: int | None = None  # readable on a stop signal (main())
        self.ctx = zmq.Context()
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind("ipc://" + os.path.join(run_dir, "writer.sock"))
        endpoint = broker_pub or "ipc://" + os.path.join(run_dir, "broker-pub.sock")
        self.bus = Bus(types.SimpleNamespace(broker_pub=endpoint), "writer", self.ctx)
        self.syncer = Syncer()

    # -- targets -------------------------------------------------------------
    def trace_dir(self, pid: int) -> str:
        return os.path.join(self.trace_root, self.session, f"pid_{pid}")

    def _open(self, pid: int) -> TraceFile:
        t = TraceFile(pid, self.trace_dir(pid), self.inline_symbols)
        try:
            t.open()
        except OSError as exc:
            raise RequestError(f"cannot open trace of pid {pid} in {t.dir}: {exc}") from None
        self.targets[pid] = t
        self.syncer.set_targets(self.targets.values())
        return t

    def _existing(self, pid: int) -> TraceFile:
        """The target of a non-start request, reopened from disk if needed."""
        t = self.targets.get(pid)
        if t is not None:
            return t
        if not os.path.exists(os.path.join(self.trace_dir(pid), atf.EVENTS_FILE)):
            raise RequestError(f"no trace for pid {pid} in session {self.session}: "
                               f"target_start was never acked")
        t = self._open(pid)
        log.info("pid %d: reopened %s (%d bytes)", pid, t.dir, t.size)
        if t.start is None:
            self._drop(t)
            raise RequestError(f"trace of pid {pid} has no TraceStart yet: send target_start")
        return t

    def _drop(self, t: TraceFile) -> None:
        t.close()
        self.targets.pop(t.pid, None)
        self.syncer.set_targets(self.targets.values())

    # -- requests ------------------------------------------------------------
    def on_target_start(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        session = field(h, "sessionId", str, self.session)
        if session != self.session:
            raise RequestError(f"sessionId {session!r} does not match this writer's "
                               f"session {self.session!r}")
        trace_dir = field(h, "traceDir", str, "")
        if trace_dir and os.path.realpath(trace_dir) != os.path.realpath(self.trace_dir(pid)):
            raise RequestError(f"traceDir {trace_dir!r} differs from this writer's "
                               f"{self.trace_dir(pid)!r}")
        args = field(h, "args", list, [])
        if not all(isinstance(a, str) for a in args):
            raise RequestError(f"header field 'args' must be a list of strings, got {args!r}")
        start = {"executablePath": field(h, "executablePath", str, ""), "args": args,
                 "attached": field(h, "attached", bool, False), "sessionId": session,
                 "startNs": field(h, "startNs", int, time.monotonic_ns(), lo=0, hi=U64)}
        flight = field(h, "flightRecorder", dict, {})
        t = self.targets.get(pid)
        if t is None:
            t = self._open(pid)
            if t.size:
                log.info("pid %d: reopened %s (%d bytes)", pid, t.dir, t.size)
        if flight:
            t.flight = flight
        if t.start is not None:
            if t.end is not None and t.start["startNs"] != start["startNs"]:
                raise RequestError(
                    f"{t.dir} already holds the finished trace of an earlier process with "
                    f"pid {pid} (started at {t.start['startNs']} ns); pid reuse within one "
                    f"session is not supported")
            return  # a resend, or a restart after the TraceStart was written
        self._guarded(t, lambda: (t.write_start(start), t.write_manifest(self.session),
                                  t.write_symbols()))

    def on_functions(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        raw = field(h, "functions", list)
        entries = [function_entry(r) for r in raw]
        t = self._existing(pid)
        self._guarded(t, lambda: t.define_functions(entries))
        try:
            t.write_symbols()
        except OSError as exc:  # a sidecar: events.bin already holds the definitions
            log.error("pid %d: cannot write %s: %s", pid, atf.SYMBOLS_FILE, exc)

    def on_index(self, h: dict, payload) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        count = field(h, "count", int, lo=0)
        if payload is None:
            raise RequestError("index request without a payload frame")
        if len(payload) != count * RECORD_SIZE:
            raise RequestError(f"index payload is {len(payload)} bytes, expected count "
                               f"{count} x {RECORD_SIZE} = {count * RECORD_SIZE}")
        t = self._existing(pid)
        events, dups, gaps, unknown, invalid, late, nbytes = self._guarded(
            t, lambda: t.append_index(payload, count, self.out))
        m = self.metrics.c
        m["batches"] += 1
        m["records"] += count
        m["events"] += events
        m["bytes"] += nbytes
        m["duplicates"] += dups
        m["gaps"] += gaps
        m["unknownFunctions"] += unknown
        m["invalidRecords"] += invalid
        m["late"] += late
        self.metrics.lane(pid, "index", events, nbytes)
        if invalid:
            log.warning("pid %d: dropped %d invalid records (bad kind or seq 0)", pid, invalid)

    def on_detail(self, h: dict, payload) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        nbytes = field(h, "bytes", int, 0, lo=0)
        windows = [window(w) for w in field(h, "windows", list, [])]
        keep_all = field(h, "full", bool, False)
        counts = field(h, "counts", dict, {})
        instance = field(h, "instance", str, "")
        if payload is None:
            payload = b""
        if len(payload) != nbytes:
            raise RequestError(f"detail payload is {len(payload)} bytes, header says {nbytes}")
        t = self._existing(pid)
        if windows:
            t.add_windows(windows)
        if instance and counts:
            for k, v in counts.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise RequestError(f"counts[{k!r}] must be a non-negative integer, got {v!r}")
            old = t.drainer_detail.get(instance, {})
            # cumulative per drainer instance: keep the larger of each
            t.drainer_detail[instance] = {k: max(int(old.get(k, 0)), v) for k, v in counts.items()}
            t.manifest_dirty = True
        if not payload:
            return
        kept, discarded, dups, invalid, n = self._guarded(
            t, lambda: t.append_detail(payload, keep_all, self.out))
        m = self.metrics.c
        m["detailEvents"] += kept
        m["detailDiscarded"] += discarded
        m["detailDuplicates"] += dups
        m["bytes"] += n
        self.metrics.lane(pid, "detail", kept, n)
        if invalid:
            log.warning("pid %d: %d malformed bytes at the end of a detail batch", pid, invalid)

    def onwindow(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        t = self._existing(pid)
        if t.add_windows([window(h)]):
            self._guarded(t, lambda: t.write_manifest(self.session))

    def on_threads(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        raw = field(h, "threads", list)
        names = {}
        for entry in raw:
            if not isinstance(entry, dict):
                raise RequestError(f"threads entry must be an object, got {entry!r}")
            names[field(entry, "threadId", int, lo=0, hi=U32)] = field(entry, "name", str)
        t = self._existing(pid)
        if any(t.threads.get(tid) != name for tid, name in names.items()):
            t.threads.update(names)
            # acked means durable: names live only in the manifest
            self._guarded(t, lambda: t.write_manifest(self.session))

    def on_signal(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        regs = field(h, "registers", dict, {})
        for k, v in regs.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U64:
                raise RequestError(f"registers[{k!r}] must be an unsigned 64-bit integer, got {v!r}")
        sig = {"tid": field(h, "tid", int, 0, lo=0, hi=I32[1]),
               "tsNs": field(h, "tsNs", int, lo=0, hi=U64),
               "number": field(h, "number", int, lo=0, hi=I32[1]),
               "name": field(h, "name", str, ""), "registers": regs}
        t = self._existing(pid)
        self._guarded(t, lambda: t.write_signal(sig))

    def on_target_end(self, h: dict) -> None:
        pid = field(h, "pid", int, lo=1, hi=I32[1])
        drops = field(h, "drops", dict, {})
        for k, v in drops.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RequestError(f"drops[{k!r}] must be a non-negative integer, got {v!r}")
        by_thread = field(h, "dropsByThread", list, [])
        if not all(isinstance(d, dict) for d in by_thread):
            raise RequestError("dropsByThread must be a list of objects")
        # registry-mode history from the control block: {modeTransitions, fallbackEvents, finalMode}
        control = field(h, "control", dict, {})
        # how each selected function was hooked, or why not (hooksafety.summarize)
        hooks = field(h, "hooks", dict, {})
        t = self._existing(pid)
        st = t.stats()
        default_end = max(st.max_ts_ns if st.min_ts_ns != U64 else 0, t.start["startNs"])
        end = {"exitCode": field(h, "exitCode", int, 0, *I32),
               "signal": field(h, "signal", int, 0, *I32),
               "detached": field(h, "detached", bool, False),
               "endNs": field(h, "endNs", int, default_end, lo=0, hi=U64)}
        if t.end is None:
            t.agent_drops = dict(drops)
            t.drops_by_thread = by_thread
            t.control = control
            t.hooks = hooks
            self._guarded(t, lambda: (t.write_end(end, self.out), t.sync()))
        try:
            t.write_manifest(self.session)
            t.write_symbols()
        except OSError as exc:
            raise RequestError(f"pid {pid}: TraceEnd written but manifest failed: {exc}") from None
        log.info("pid %d: trace complete in %s", pid, t.dir)

    def _guarded(self, t: TraceFile, action):
        """Run an append; on failure forget the target so that the next
        request rebuilds it from what really reached the file."""
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the file decides
            log.error("pid %d: write failed, state will be rebuilt from %s: %s",
                      t.pid, t.events_path, exc)
            self._drop(t)
            raise RequestError(f"pid {t.pid}: writing {t.events_path} failed: {exc}") from None

    def handle(self, frames: list) -> list[bytes]:
        ident = frames[0].bytes
        msg_id = b""
        try:
            if len(frames) not in (3, 4):
                raise RequestError(f"expected [kind, header] or [kind, header, payload], "
                                   f"got {len(frames) - 1} frames")
            kind = frames[1].bytes.decode("utf-8", "replace")
            try:
                header = orjson.loads(frames[2].bytes)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"header is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise RequestError("header must be a JSON object")
            if "msgId" in header:
                msg_id = str(header["msgId"]).encode()
            else:
                raise RequestError("header field 'msgId' is required")
            payload = frames[3].buffer if len(frames) == 4 else None
            self.metrics.c["requests"] += 1
            if kind == "index":
                self.on_index(header, payload)
            elif kind == "detail":
                self.on_detail(header, payload)
            elif kind == "window":
                self.onwindow(header)
            elif kind == "threads":
                self.on_threads(header)
            elif kind == "signal":
                self.on_signal(header)
            elif kind == "functions":
                self.on_functions(header)
            elif kind == "target_start":
                self.on_target_start(header)
            elif kind == "target_end":
                self.on_target_end(header)
            elif kind != "ping":
                raise RequestError(f"unknown request kind {kind!r}; expected one of {KINDS}")
            return [ident, b"ack", msg_id]
        except (RequestError, TraceCorrupt) as exc:
            error = str(exc)
        except Exception as exc:  # a bug must cost one request, not the service
            log.exception("internal error while handling a request")
            error = f"internal writer error: {exc!r}"
        self.metrics.c["nacks"] += 1
        log.warning("nack %s: %s", msg_id.decode(errors="replace") or "?", error)
        return [ident, b"nack", msg_id, orjson.dumps({"error": error})]

    # -- loop ----------------------------------------------------------------
    def periodic(self) -> None:
        now = time.monotonic()
        for t in list(self.targets.values()):
            try:
                self._guarded(t, lambda: t.release(self.out))
            except RequestError:
                continue
            try:
                if t.manifest_dirty:
                    t.write_manifest(self.session)
                if t.end is not None and now - t.last_append > ENDED_CLOSE_AFTER_S:
                    t.sync()
                    self._drop(t)  # finished and quiet; a late request reopens it
                    self.metrics.forget(t.pid)
            except OSError as exc:
                log.error("pid %d: cannot write manifest: %s", t.pid, exc)
        # Bus.heartbeat() rate-limits on its own clock and could skip a tick.
        self.bus.publish(bus.HEARTBEAT + "writer", {"service": "writer", "pid": os.getpid(),
                                       "ts": time.monotonic_ns()})
        m = self.metrics.snapshot()
        m.update(service="writer", pid=os.getpid(), ts=time.monotonic_ns(),
                 targets=len(self.targets))
        self.bus.publish(bus.WRITER_METRICS, m)

    def run(self) -> int:
        self.syncer.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.wakeup_fd is not None:
            poller.register(self.wakeup_fd, zmq.POLLIN)
        next_tick = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if now >= next_tick:
                self.periodic()
                next_tick = now + MANIFEST_INTERVAL_S
            timeout = max(1, min(200, int((next_tick - now) * 1000)))
            if self.sock not in dict(poller.poll(timeout)):
                continue
            # Serve what is queued, but come back to the tick and the stop flag.
            while not self.stopping and time.monotonic() < next_tick:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.sock.send_multipart(self.handle(frames))
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.syncer.stop()
        for t in list(self.targets.values()):
            try:
                t.release(self.out, everything=True)
                t.sync()
                t.write_manifest(self.session)
                t.write_symbols()
            except OSError as exc:
                log.error("pid %d: final flush failed: %s", t.pid, exc)
            t.close()
        self.targets.clear()
        self.bus.close()
        self.sock.close()
        self.ctx.term()
        log.info("writer stopped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lanetrace.writer",
                                description="lanetrace writer: persists ATF V4 traces")
    p.add_argument("--run-dir", required=True, help="run directory; binds <run-dir>/writer.sock")
    p.add_argument("--trace-root", required=True, help="traces go to <trace-root>/<session>/")
    p.add_argument("--session", required=True, help="session id")
    p.add_argument("--inline-symbols", action="store_true",
                   help="write every base ATF V4 field (event id, timestamp, symbol, "
                        "address) into each call/return")
    p.add_argument("--broker-pub", default=None,
                   help="broker endpoint to publish on (default ipc://<run-dir>/broker-pub.sock)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s writer[%(process)d] %(levelname)s %(message)s")
    if not args.session or "/" in args.session or args.session in (".", ".."):
        print(f"lanetrace.writer: error: invalid session id {args.session!r}", file=sys.stderr)
        return 2
    try:
        writer = Writer(args.run_dir, args.trace_root, args.session, args.inline_symbols,
                        args.broker_pub)
    except (OSError, zmq.ZMQError) as exc:
        print(f"lanetrace.writer: error: cannot start: {exc}", file=sys.stderr)
        return 1

    writer.wakeup_fd = StopSignal(on_stop=lambda: setattr(writer, "stopping", True)).fd
    log.info("writer listening on %s/writer.sock, traces in %s/%s%s", args.run_dir,
             args.trace_root, args.session, " (inline symbols)" if args.inline_symbols else "")
    return writer.run()

