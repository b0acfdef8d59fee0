"""The watchdog: a supervisord event listener that turns drainer exits and
stale drainer heartbeats into per-shard fallback (docs/internals.md,
"Registry modes and delivery").

Run by supervisord as ``[eventlistener:watchdog]`` with
``events=PROCESS_STATE,TICK_5``::

    python -m lanetrace.supervise.watchdog --run-dir DIR [--group lanetrace]

What it does:

* ``PROCESS_STATE_*`` of ``drainer-K`` leaving RUNNING (STOPPING, EXITED,
  BACKOFF, FATAL, STOPPED): at once set shard K's fallback flag in the
  segment of every live target (found in the run directory's ``targets/``),
  so that the threads of that shard write to the global lane, which the
  surviving drainers drain.
* Between events (the listener waits on stdin with a short timeout, and
  TICK events come every 5 s) it polls the heartbeats in the segments: a
  shard in fallback whose heartbeat is newer than its fallback moment and
  fresh (younger than ``--fresh-ms``) is cleared; a shard whose drainer is
  RUNNING but whose heartbeat is older than ``--stale-ms`` is put into
  fallback (a stuck drainer). Targets registered while a shard is down get
  the flag as soon as they are seen.
* Every transition is counted by the segment itself (``fallback_events``,
  and the registry epoch) and published on the broker as ``ctl.mode``
  ``{pid, shard, fallback, reason, ts, counters}``; the watchdog's own
  view is kept in ``<run-dir>/watchdog.json`` for ``lanetrace ctl status``.

Speaks supervisor's listener protocol on stdin/stdout (``READY``, then
``RESULT 2\\nOK`` per event); everything else goes to stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import select
import sys
import time

from lanetrace.core import bus
from lanetrace.core.bus import Bus
from lanetrace.core.rundir import RunDir
from lanetrace.core.shm import SegmentError, TargetSegment
from lanetrace.core.stopsignal import StopSignal

log = logging.getLogger("lanetrace.supervise.watchdog")

DRAINER_RE = re.compile(r"^drainer-(\d+)$")
DOWN_STATES = {"PROCESS_STATE_STOPPING", "PROCESS_STATE_EXITED", "PROCESS_STATE_BACKOFF",
               "PROCESS_STATE_FATAL", "PROCESS_STATE_STOPPED"}
POLL_S = 0.05
STATE_FILE = "watchdog.json"


class EventReader:
    """supervisor's listener protocol on raw fds, so that waiting for an
    event can time out (Python's buffered stdin would hide pending bytes
    from select)."""

    def __init__(self, fd_in: int = 0, out=None, wakeup_fd: int | None = None):
        self.fd = fd_in
        self.out = out or sys.stdout
        self.buf = b""
        # readable on a stop signal: the wait for an event ends at once
        self.wakeup_fd = wakeup_fd

    def ready(self) -> None:
        self.out.write("READY\n")
        self.out.flush()

    def ok(self) -> None:
        self.out.write("RESULT 2\nOK")
        self.out.flush()

    def _fill(self, timeout: float) -> bool:
        fds = [self.fd] if self.wakeup_fd is None else [self.fd, self.wakeup_fd]
        r, _, _ = select.select(fds, [], [], timeout)
        if self.fd not in r:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            raise EOFError("supervisord closed the listener's stdin")
        self.buf += chunk
        return True

    def poll(self, timeout: float) -> tuple[dict, dict] | None:
        """One event (headers, payload fields) if it arrives within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if not self._fill(max(0.0, deadline - time.monotonic())):
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        headers = parse_tokens(line.decode())
        need = int(headers.get("len", 0))
        while len(self.buf) < need:
            self._fill(1.0)  # the payload follows its header line at once
        body, self.buf = self.buf[:need], self.buf[need:]
        text = body.decode(errors="replace")
        fields = parse_tokens(text.split("\n", 1)[0])
        return headers, fields


def parse_tokens(line: str) -> dict:
    out = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            out[key] = value
    return out


class Watchdog:
    def __init__(self, run_dir: RunDir, group: str = "lanetrace", fresh_ms: int = 500,
                 stale_ms: int = 5000, shards: int | None = None):
        self.run_dir = run_dir
        self.group = group
        self.fresh_ns = fresh_ms * 1_000_000
        self.stale_ns = stale_ms * 1_000_000
        self.bus = Bus(run_dir, "watchdog")
        self.segments: dict[int, TargetSegment] = {}
        # shard -> monotonic ns when it went down (None: up)
        self.down: dict[int, int] = {}
        # shard -> supervisord state name of drainer-K as last reported
        self.proc_state: dict[int, str] = {}
        self.shards_hint = shards
        self.events = {"fallbackOn": 0, "fallbackOff": 0, "drainerExits": 0, "staleDetected": 0}
        self.history: list[dict] = []
        self._last_state_write = 0.0
        self.stopping = False
        # shard -> (pid, pidfd) of the running drainer: its exit is seen at
        # once, before supervisord (which reaps on its 1 s tick) reports it.
        self.pidfds: dict[int, tuple[int, int]] = {}

    # -- targets ---------------------------------------------------------------
    def scan_targets(self) -> None:
        registered = self.run_dir.registered_targets()
        for pid in list(self.segments):
            if pid not in registered:
                self.segments.pop(pid).close()
        for pid, info in registered.items():
            if pid in self.segments:
                continue
            try:
                seg = TargetSegment.open(info["shm"])
            except (SegmentError, KeyError) as exc:
                log.info("pid %d: cannot open its segment (ending?): %s", pid, exc)
                continue
            self.segments[pid] = seg
            for shard, since in self.down.items():
                if shard < seg.config["shards"]:
                    self._set(pid, seg, shard, True, "drainer down when target appeared")

    # -- transitions -----------------------------------------------------------
    def _set(self, pid: int, seg: TargetSegment, shard: int, on: bool, reason: str) -> None:
        try:
            if seg.shard_fallback()[shard] == on:
                return
            seg.set_shard_fallback(shard, on)
            counters = seg.counters()
        except SegmentError as exc:
            log.info("pid %d: segment gone while setting fallback: %s", pid, exc)
            return
        self.events["fallbackOn" if on else "fallbackOff"] += 1
        event = {"pid": pid, "shard": shard, "fallback": on, "reason": reason,
                 "ts": time.monotonic_ns(),
                 "counters": {k: counters[k] for k in ("mode_transitions", "fallback_events")},
                 "mode": counters.get("mode"), "epoch": counters.get("registry_epoch")}
        self.history = (self.history + [event])[-100:]
        log.info("pid %d shard %d: fallback %s (%s)", pid, shard, "ON" if on else "OFF", reason)
        self.bus.publish(bus.MODE_CHANGE, event)

    def shard_down(self, shard: int, reason: str) -> None:
        if shard not in self.down:
            self.down[shard] = time.monotonic_ns()
        self.scan_targets()
        for pid, seg in list(self.segments.items()):
            if shard < seg.config["shards"]:
                self._set(pid, seg, shard, True, reason)

    def check_heartbeats(self) -> None:
        self.scan_targets()
        now = time.monotonic_ns()
        for shard, since in list(self.down.items()):
            if self.proc_state.get(shard) not in (None, "RUNNING", "STARTING"):
                continue  # still down as far as supervisord knows
            beats = []
            for seg in self.segments.values():
                if shard < seg.config["shards"]:
                    try:
                        beats.append(seg.heartbeats()[shard])
                    except SegmentError:
                        pass
            fresh = [hb for hb in beats if hb > since and now - hb < self.fresh_ns]
            if beats and len(fresh) < len(beats):
                continue
            if not beats and self.proc_state.get(shard) != "RUNNING":
                continue
            del self.down[shard]
            for pid, seg in list(self.segments.items()):
                if shard < seg.config["shards"]:
                    self._set(pid, seg, shard, False, "drainer heartbeat fresh again")
        # A drainer RUNNING but silent: stuck. (Its heartbeat is written in
        # every segment on every pass; an old one in a live segment means no
        # pass for stale_ms.)
        for pid, seg in list(self.segments.items()):
            try:
                beats = seg.heartbeats()
            except SegmentError:
                continue
            for shard, hb in enumerate(beats):
                if shard in self.down or not hb:
                    continue
                if now - hb > self.stale_ns and self.proc_state.get(shard, "RUNNING") == "RUNNING":
                    self.events["staleDetected"] += 1
                    self.shard_down(shard, f"heartbeat stale ({(now - hb) / 1e9:.1f}s)")

    # -- drainer pids ------------------------------------------------------------
    def track(self, shard: int, pid: int) -> None:
        self.untrack(shard)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.shard_down(shard, f"drainer-{shard} (pid {pid}) gone")
            return
        except (OSError, AttributeError):
            return  # no pidfd here: supervisord's events only
        self.pidfds[shard] = (pid, fd)

    def untrack(self, shard: int) -> None:
        old = self.pidfds.pop(shard, None)
        if old is not None:
            os.close(old[1])

    def learn_pids(self) -> None:
        """The drainers already running when the watchdog (re)starts."""
        if "SUPERVISOR_SERVER_URL" not in os.environ:
            return
        try:
            from supervisor import childutils
            infos = childutils.getRPCInterface(os.environ).supervisor.getAllProcessInfo()
        except Exception as exc:  # best effort: events still come
            log.info("cannot ask supervisord for the drainers' pids: %s", exc)
            return
        for info in infos:
            m = DRAINER_RE.match(info.get("name", ""))
            if m and info.get("group") == self.group and info.get("statename") == "RUNNING":
                self.proc_state[int(m.group(1))] = "RUNNING"
                self.track(int(m.group(1)), int(info["pid"]))

    def check_pids(self) -> None:
        if not self.pidfds:
            return
        by_fd = {fd: (shard, pid) for shard, (pid, fd) in self.pidfds.items()}
        ready, _, _ = select.select(list(by_fd), [], [], 0)
        for fd in ready:
            shard, pid = by_fd[fd]
            self.untrack(shard)
            self.proc_state[shard] = "EXITED"
            self.events["drainerExits"] += 1
            self.shard_down(shard, f"drainer-{shard} (pid {pid}) exited")

    def on_event(self, headers: dict, fields: dict) -> None:
        name = headers.get("eventname", "")
        if not name.startswith("PROCESS_STATE_"):
            return
        if fields.get("groupname") != self.group:
            return
        m = DRAINER_RE.match(fields.get("processname", ""))
        if not m:
            return
        shard = int(m.group(1))
        state = name[len("PROCESS_STATE_"):]
        seen_exit = shard not in self.pidfds and shard in self.down
        self.proc_state[shard] = state
        if state == "RUNNING" and fields.get("pid", "").isdigit():
            self.track(shard, int(fields["pid"]))
        if name in DOWN_STATES:
            self.untrack(shard)
            if name in ("PROCESS_STATE_EXITED", "PROCESS_STATE_STOPPED") and not seen_exit:
                self.events["drainerExits"] += 1
            self.shard_down(shard, f"drainer-{shard} {state.lower()}")

    def write_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_state_write < 0.5:
            return
        self._last_state_write = now
        state = {"pid": os.getpid(), "ts": time.monotonic_ns(),
                 "down": {str(k): v for k, v in self.down.items()},
                 "drainers": {str(k): v for k, v in self.proc_state.items()},
                 "events": self.events, "history": self.history[-20:]}
        try:
            self.run_dir.write_json(self.run_dir.file(STATE_FILE), state)
        except OSError as exc:
            log.warning("cannot write %s: %s", STATE_FILE, exc)

    def run(self, reader: EventReader) -> int:
        self.learn_pids()
        reader.ready()
        while not self.stopping:
            try:
                got = reader.poll(POLL_S)
            except EOFError:
                return 0
            if got is not None:
                headers, fields = got
                try:
                    self.on_event(headers, fields)
                except Exception:  # never leave supervisord waiting for a result
                    log.exception("handling %s", headers.get("eventname"))
                reader.ok()
                reader.ready()
            try:
                self.check_pids()
                self.check_heartbeats()
            except Exception:
                log.exception("heartbeat check failed")
            self.bus.heartbeat(down=sorted(self.down))
            self.write_state()


    def run_standalone(self) -> int:
        while not self.stopping:
            time.sleep(POLL_S * 2)
            try:
                self.check_heartbeats()
            except Exception:
                log.exception("heartbeat check failed")
            self.bus.heartbeat(down=sorted(self.down))
            self.write_state()
        return 0

    def close(self) -> None:
        self.write_state(force=True)
        for seg in self.segments.values():
            seg.close()
        self.segments.clear()
        self.bus.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lanetrace-watchdog")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--group", default="lanetrace",
                        help="supervisord group of the drainers (default lanetrace)")
    parser.add_argument("--fresh-ms", type=int, default=500,
                        help="a heartbeat younger than this is fresh (default 500)")
    parser.add_argument("--stale-ms", type=int, default=5000,
                        help="a running drainer silent this long is put in fallback (default 5000)")
    parser.add_argument("--standalone", action="store_true",
                        help="no supervisord events (Procfile): act on heartbeats only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s watchdog[%(process)d] %(levelname)s %(message)s")
    wd = Watchdog(RunDir(args.run_dir), args.group, args.fresh_ms, args.stale_ms)

    stop = StopSignal(on_stop=lambda: setattr(wd, "stopping", True))
    try:
        if args.standalone:
            return wd.run_standalone()
        return wd.run(EventReader(wakeup_fd=stop.fd))
    finally:
        wd.close()


if __name__ == "__main__":
    sys.exit(main())
