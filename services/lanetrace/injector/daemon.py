"""The daemon's injector (``python -m lanetrace.injector.daemon``): an
``Injector`` whose targets come and go by control command (core/control.py)
while the others keep being traced. Each target is finished (drained,
TraceEnd, segment removed) when it ends; ``session.json`` lists them all."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections import OrderedDict

import frida
import orjson

from lanetrace.core import atf, bus
from lanetrace.core.bus import receive
from lanetrace.core.control import VERBS, ControlError
from lanetrace.core.datachannel import WriterRejected, WriterUnavailable
from lanetrace.core.rundir import RunDir
from lanetrace.core.selection import Selection, SelectionError
from lanetrace.core.shm import SegmentError, TargetSegment
from lanetrace.injector.injector import (DRAIN_TIMEOUT_S, SOURCE_LOCATIONS_TIMEOUT_S, Injector,
                                         control_counters)
from lanetrace.supervise.daemonconf import (DEFAULT_AGENT_STALE_MS, default_daemon_dir,
                                            load_daemon_config)
from lanetrace.injector.fridaguard import release_frida
from lanetrace.injector.traced import TargetError, TracedProcess

log = logging.getLogger("lanetrace.injector")

SHUTDOWN_DRAIN_S = 30.0
REPLY_MEMORY = 256
DEFERRED = object()  # a command answered later, once its target is finished


def _index_lane(per_target: dict) -> dict:
    """A drainer's metrics for one target: {lanes: {index: {...}}}."""
    return (per_target.get("lanes") or {}).get("index") or per_target



class DaemonInjector(Injector):
    """The injector of a daemon: targets come and go by control command;
    each is finished (drained, TraceEnd, segment removed) when it ends,
    while the others keep being traced."""

    def __init__(self, run_dir: RunDir, spec: dict):
        super().__init__(run_dir, spec)
        self.ctl_sub = self.bus.subscriber(bus.CONTROL_REQUEST, bus.METRICS)
        self.replies: OrderedDict[str, dict] = OrderedDict()
        self.metrics: dict[str, dict] = {}
        self.finished: list[dict] = []
        self.pipeline_ok = False
        self.tree: dict[int, int | None] = {}  # pid -> parent pid (follow-children)
        self.session_started = time.time()
        self.default_selection = self.selection
        self._load_session()
        self.ending: dict = {}       # pid -> {target, drained: set, deadline}
        self.done: dict[int, dict] = {}  # pid -> result of its finished trace
        self.deferred: dict[str, tuple[int, str]] = {}  # request id -> (pid, replyTo)

    def _load_session(self) -> None:
        """A restarted injector keeps what its predecessor recorded."""
        path = os.path.join(self.spec["traceRoot"], self.session_id, "session.json")
        try:
            with open(path, "rb") as f:
                doc = orjson.loads(f.read())
        except (OSError, ValueError):
            return
        self.session_started = doc.get("startedAt", self.session_started)
        self.finished = [t for t in doc.get("targets", []) if t.get("state") == "ended"]
        for row in doc.get("processTree", []):
            self.tree[int(row["pid"])] = row.get("parentPid")

    # -- commands ----------------------------------------------------------
    def handle(self, topic: str, req: dict) -> None:
        req_id = req.get("id")
        reply_to = req.get("replyTo")
        if not req_id or not reply_to:
            return
        if req_id in self.deferred:
            return  # still being worked on; answered when done
        if req_id in self.replies:
            reply = self.replies[req_id]
        else:
            verb = req.get("verb") or topic[len(bus.CONTROL_REQUEST):]
            try:
                result = getattr(self, f"cmd_{verb}")(req.get("args") or {}) \
                    if verb in VERBS else None
                if result is None:
                    raise ControlError(f"unknown control command {verb!r}")
                if result is DEFERRED:  # answered by answer_deferred()
                    self.deferred[req_id] = (int(req["args"]["pid"]), reply_to)
                    return
                reply = {"id": req_id, "ok": True, "result": result}
            except (ControlError, TargetError, SelectionError) as exc:
                reply = {"id": req_id, "ok": False, "error": str(exc)}
            except (WriterUnavailable, WriterRejected) as exc:
                reply = {"id": req_id, "ok": False, "error": f"writer: {exc}"}
            except frida.TransportError as exc:
                reply = {"id": req_id, "ok": False, "error": f"lost the target: {exc}"}
            except Exception as exc:  # a bug costs one command, not the daemon
                log.exception("control command %s failed", verb)
                reply = {"id": req_id, "ok": False,
                         "error": f"internal error: {type(exc).__name__}: {exc}"}
            self.replies[req_id] = reply
            while len(self.replies) > REPLY_MEMORY:
                self.replies.popitem(last=False)
        self.bus.publish(reply_to, reply)

    def instrument(self, target, attached: bool) -> None:
        super().instrument(target, attached)
        # Supervised: the watchdog orders a shard's fallback the moment its
        # drainer exits, so the agent's own heartbeat-age check is only the
        # backstop for a stuck drainer. Its default (0.5 s) also fires when
        # the drainers merely wait for a restarting writer, and then the
        # global lane, which nobody can drain either, overflows.
        stale = self.spec.get("agentStaleMs")
        if stale and target.segment is not None:
            target.segment.mode_policy(stale_ms=float(stale))

    def cmd_ping(self, args: dict) -> dict:
        return {"pid": os.getpid(), "sessionId": self.session_id}

    def _ensure_pipeline(self) -> None:
        if not self.pipeline_ok:
            self.wait_for_pipeline()
            self.pipeline_ok = True

    def _live(self, pid: int):
        for t in self.targets:
            if t.pid == pid and not t.ended.is_set():
                return t
        return None

    def cmd_attach(self, args: dict) -> dict:
        sel = args.get("selection")
        self.selection = (Selection.from_agent(sel).validate() if sel
                          else self.default_selection)
        follow = bool(args.get("followChildren"))
        daemon_spec = self.spec
        # this attach's drop policy, if it has one, over the daemon's
        self.spec = dict(daemon_spec, **{k: args[k] for k in ("noDrop", "blockTimeoutMs") if k in args})
        self._ensure_pipeline()
        before = len(self.targets)
        try:
            if args.get("spawn"):
                spawn = args["spawn"]
                if not spawn.get("argv"):
                    raise ControlError("attach: empty program")
                untraced = self.start_spawned_daemon(spawn, follow)
                if untraced is not None:
                    self.write_session()
                    return untraced
            else:
                pid = int(args.get("pid") or 0)
                if pid <= 0:
                    raise ControlError("attach: no pid given")
                if self._live(pid):
                    raise ControlError(f"pid {pid} is already traced by this daemon")
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    raise ControlError(f"no such process: {pid}") from None
                self.start_attached(pid)
                if follow:
                    self.follow(self.targets[-1])
        except BaseException:
            for t in self.targets[before:]:
                self._abandon(t)
            raise
        finally:
            self.selection = self.default_selection
            self.spec = daemon_spec
        t = self.targets[-1]
        self.tree.setdefault(t.pid, None)
        self.write_session()
        return {"pid": t.pid, "traceDir": self._trace_dir(t), "hooks": t.hooks,
                "functions": len(t.functions)}

    def start_spawned_daemon(self, spawn: dict, follow: bool) -> None:
        argv = spawn["argv"]
        try:
            pid = self.device.spawn(argv, envp=spawn.get("env"), cwd=spawn.get("cwd"))
        except frida.ExecutableNotFoundError:
            raise TargetError(f"program not found: {argv[0]}") from None
        except frida.PermissionDeniedError as exc:
            raise TargetError(f"not permitted to run {argv[0]}: {exc}") from None
        target = TracedProcess(pid=pid, spawned=True, argv=argv)
        self.targets.append(target)
        try:
            self.instrument(target, attached=False)
        except TargetError as exc:
            # Nothing to hook in the root (make, sh): follow its children.
            if not follow or not self.follow_untraced_root(target, exc):
                raise
            self.device.resume(pid)
            return {"pid": pid, "traceDir": None, "hooks": {}, "functions": 0,
                    "note": target.error}
        if follow:
            self.follow(target)
        self.device.resume(pid)
        return None

    def _abandon(self, t) -> None:
        """A target that failed half way: leave nothing of it behind."""
        if t.spawned:
            self._kill(t.pid, signal.SIGKILL)
        self.discard_target(t)

    def cmd_detach(self, args: dict) -> dict:
        pid = int(args.get("pid") or 0)
        target = self._live(pid)
        if target is None:
            known = [t.pid for t in self.targets if not t.ended.is_set()]
            raise ControlError(f"pid {pid} is not traced by this daemon "
                               f"(traced: {', '.join(map(str, known)) or 'none'})")
        self.stop_target(target)
        self.begin_finish(target)
        return DEFERRED

    def cmd_status(self, args: dict) -> dict:
        targets = []
        for t in self.targets:
            entry = {"pid": t.pid, "argv": t.argv, "spawned": t.spawned,
                     "traceDir": self._trace_dir(t), "functions": len(t.functions)}
            seg = t.segment
            if seg is not None:
                try:
                    counters = seg.counters()
                    entry.update(state="ending" if t.pid in self.ending else "tracing",
                                 mode=counters["mode"],
                                 fallback=seg.shard_fallback(), drops=seg.drops(),
                                 control={k: counters[k] for k in
                                          ("mode_transitions", "fallback_events")},
                                 threads=counters.get("slots_in_use", 0))
                except Exception as exc:
                    entry.update(state="ending", error=str(exc))
            per = [(m.get("targets") or {}).get(str(t.pid)) or {}
                   for name, m in self.metrics.items() if name.startswith("drainer")]
            entry["recordsDrained"] = sum(_index_lane(x).get("records", 0) for x in per)
            entry["recordsPerSec"] = sum(_index_lane(x).get("recordsPerSec", 0.0) for x in per)
            entry["drainLagMs"] = max([x.get("drainLagMs", 0.0) for x in per] or [0.0])
            targets.append(entry)
        targets.extend(self.finished_entries())
        writer = self.metrics.get("writer", {})
        return {"sessionId": self.session_id, "traceRoot": self.spec["traceRoot"],
                "injectorPid": os.getpid(), "targets": targets,
                "rates": {"writerEventsPerSec": writer.get("eventsPerSec", 0.0),
                          "drainerRecordsPerSec": sum(
                              _index_lane(x).get("recordsPerSec", 0.0)
                              for n, m in self.metrics.items() if n.startswith("drainer")
                              for x in (m.get("targets") or {}).values())},
                "writer": {k: writer.get(k) for k in ("events", "duplicates", "gaps", "late")
                           if k in writer}}

    def finished_entries(self) -> list[dict]:
        return [dict(r, state="ended") for r in self.finished]

    # -- target end ------------------------------------------------------------
    def _trace_dir(self, t) -> str:
        return os.path.join(self.spec["traceRoot"], self.session_id, t.trace_dir_name)

    def begin_finish(self, target) -> None:
        """Non-blocking first half of Injector.finish_target: the drainers
        are told the target ended; serve() collects their target.drained
        while it keeps answering commands and tracing other targets."""
        if target.pid in self.ending:
            return
        if target.segment is not None:
            target.segment.mark_target_exited()
        self.ending[target.pid] = {"target": target, "drained": set(),
                                   "deadline": time.monotonic() +
                                   (DRAIN_TIMEOUT_S if target.hooks else 0)}

    def pump_drained(self) -> None:
        msg = receive(self.drained_sub, 0)
        while msg is not None:
            topic, body = msg
            if topic == bus.TARGET_DRAINED:
                st = self.ending.get(body.get("pid"))
                if st is not None:
                    st["drained"].add(int(body.get("shard", -1)))
            msg = receive(self.drained_sub, 0)
        now = time.monotonic()
        for pid, st in list(self.ending.items()):
            if len(st["drained"]) >= self.shards or now >= st["deadline"]:
                self._end_and_finish(st["target"])

    def finish_target(self, target) -> None:
        """Second half (blocking only on the writer's ack of target_end)."""
        st = self.ending.pop(target.pid, {"drained": set(range(self.shards))})
        segment = target.segment
        if segment is None:
            return
        missing = sorted(set(range(self.shards)) - st["drained"])
        if missing and target.hooks:
            target.error = (f"shards {missing} were not drained within "
                            f"{DRAIN_TIMEOUT_S:.0f}s")
        self.flight_tick(target)
        # file:line of its functions are in (found after the hooks went live)
        problem = self.sources.wait(target.pid, SOURCE_LOCATIONS_TIMEOUT_S)
        if problem:
            target.error = target.error or problem
        drops = segment.drops()
        target.control = control_counters(segment)
        header = {
            "pid": target.pid,
            "exitCode": target.exit_code if target.exit_code is not None else 0,
            "signal": target.signal, "detached": target.detached,
            "endNs": target.end_ns or time.monotonic_ns(), "drops": drops,
            "control": target.control, "dropsByThread": segment.drops_by_thread(),
            "hooks": target.hooks,
        }
        self.writer.request("target_end", header, deadline_s=SHUTDOWN_DRAIN_S
                            if self.stop_requested.is_set() else 60.0)
        self.run_dir.unregister_target(target.pid)
        segment.unlink()
        segment.close()
        target.segment = None
        self.bus.publish(bus.TARGET_ENDED, {"pid": target.pid, "exitCode": target.exit_code,
                                          "signal": target.signal, "drops": drops,
                                          "control": target.control})

    def _end_and_finish(self, target) -> dict:
        try:
            self.finish_target(target)
        except (WriterUnavailable, WriterRejected) as exc:
            target.error = f"writer: {exc}"
        if target.segment is not None:  # finish_target stopped half way
            self.run_dir.unregister_target(target.pid)
            target.segment.unlink()
            target.segment.close()
            target.segment = None
        result = self._target_result(target)
        result["parentPid"] = self.tree.get(target.pid)
        result["control"] = target.control or {}
        self.finished.append(result)
        self.done[target.pid] = result
        self.targets = [x for x in self.targets if x is not target]
        self.write_session()
        return result

    def write_session(self) -> None:
        live = []
        for t in self.targets:
            r = self._target_result(t)
            r["parentPid"] = self.tree.get(t.pid)
            r["state"] = "tracing"
            live.append(r)
        ended = [dict(r, state="ended") for r in self.finished]
        doc = {"sessionId": self.session_id, "daemon": True, "startedAt": self.session_started,
               "updatedAt": time.time(),
               "options": {k: self.spec.get(k) for k in ("drainers", "slots", "ringBytes",
                                                         "ringsPerLane")},
               "targets": ended + live,
               "processTree": [{"pid": p, "parentPid": pp} for p, pp in sorted(self.tree.items())],
               "error": ""}
        path = os.path.join(self.spec["traceRoot"], self.session_id)
        os.makedirs(path, exist_ok=True)
        atf.write_json_atomic(os.path.join(path, "session.json"), doc)

    # -- loop ------------------------------------------------------------------
    def serve(self) -> int:
        self.write_session()
        while not self.stop_requested.is_set():
            msg = receive(self.ctl_sub, 50)
            while msg is not None:
                topic, payload = msg
                if topic.startswith(bus.METRICS):
                    self.metrics[topic[len(bus.METRICS):]] = payload
                else:
                    self.handle(topic, payload)
                msg = receive(self.ctl_sub, 0)
            for t in list(self.targets):
                if t.ended.is_set() and t.pid not in self.ending:
                    self.begin_finish(t)
            for t in list(self.targets):
                if t.pid not in self.ending:
                    try:
                        self.flight_tick(t)
                    except Exception:
                        log.exception("pid %d: flight recorder tick", t.pid)
            self.pump_drained()
            self.answer_deferred()
            if self.children is not None:
                self.children.pump()
            self.bus.heartbeat(targets=len(self.targets))
        for t in list(self.targets):
            self.stop_target(t)
            self.begin_finish(t)
        # Stopped with the rest of the daemon (supervisorctl shutdown): the
        # drainers may be stopping too; do not outwait supervisord.
        for st in self.ending.values():
            st["deadline"] = min(st["deadline"], time.monotonic() + SHUTDOWN_DRAIN_S)
        while self.ending:
            self.pump_drained()
            time.sleep(0.05)
        release_frida()
        self.write_session()
        return 0

    def answer_deferred(self) -> None:
        for req_id, (pid, reply_to) in list(self.deferred.items()):
            if pid in self.done:
                del self.deferred[req_id]
                reply = {"id": req_id, "ok": True, "result": self.done[pid]}
                self.replies[req_id] = reply
                self.bus.publish(reply_to, reply)


def run(args) -> int:
    run_dir = RunDir(args.run_dir).create()
    logging.basicConfig(filename=os.path.join(run_dir.logs_dir, "injector.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_daemon_config(run_dir)
    spec = {"sessionId": cfg["sessionId"], "traceRoot": cfg["traceRoot"], "drainers": args.shards,
            "selection": cfg.get("selection") or {}, "slots": cfg.get("slots", 64),
            "ringBytes": cfg.get("ringBytes", 256 * 1024), "ringsPerLane": cfg.get("ringsPerLane", 8),
            **{k: cfg[k] for k in ("ringBudgetBytes", "noDrop", "blockTimeoutMs") if k in cfg},
            "agentStaleMs": cfg.get("agentStaleMs", DEFAULT_AGENT_STALE_MS)}
    injector = DaemonInjector(run_dir, spec)
    finish_orphans(injector)
    signal.signal(signal.SIGTERM, lambda *_: injector.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: injector.stop_requested.set())
    return injector.serve()


def finish_orphans(injector) -> None:
    """Targets registered by an injector that died (SIGKILL): their Frida
    sessions are gone; finalize their traces so nothing stays half done."""
    for pid, info in injector.run_dir.registered_targets().items():
        try:
            seg = TargetSegment.open(info["shm"])
        except (SegmentError, KeyError):
            injector.run_dir.unregister_target(pid)
            continue
        t = TracedProcess(pid=pid, spawned=False, argv=info.get("argv") or [], segment=seg)
        t.hooks = {"orphan": True}
        t.end_reason = "injector restarted"
        t.detached = True
        t.error = "the injector was restarted while tracing; trace ends there"
        log.warning("pid %d: finishing the trace of a previous injector", pid)
        t.ended.set()
        injector.targets.append(t)
        injector.begin_finish(t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanetrace.injector.daemon")
    parser.add_argument("--run-dir", default=default_daemon_dir())
    parser.add_argument("--shards", type=int, default=2)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
