"""The injector: spawns or attaches the targets with Frida, gives each its
shared-memory segment, loads the agent, publishes the function table to the
writer, and follows each target until it ends (exit code or signal) or until
tracing stops (``--duration``, SIGINT/SIGTERM).

Run as ``python -m lanetrace.injector --run-dir DIR --spec SPEC.json`` (the
spec is written by ``lanetrace run``/``attach``). When every target is
finished and drained, it writes ``result.json`` into the run directory.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

import frida
import orjson

from lanetrace.core import atf, bus
from lanetrace.core.bus import Bus, receive
from lanetrace.core.datachannel import WriterClient, WriterRejected, WriterUnavailable
from lanetrace.core.rundir import RunDir
from lanetrace.core.selection import Selection
from lanetrace.core.shm import TargetSegment
from lanetrace.export.dwarf import source_locations
from lanetrace.injector.children import ChildFollower
from lanetrace.injector.flightctl import FlightControl, TriggerError
from lanetrace.injector.fridaguard import HANG_MESSAGE, HangGuard
from lanetrace.injector.threadnames import ThreadNames
from lanetrace.injector.traced import TargetError, TracedProcess

log = logging.getLogger("lanetrace.injector")

# The build (setup.py) puts the agent library and its scripts into the package.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_DIR = os.path.join(PACKAGE_DIR, "agent")
AGENT_LIB = os.path.join(PACKAGE_DIR, "liblanetrace_agent.so")
PIPELINE_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 120.0
TERMINATE_GRACE_S = 2.0
INJECT_TIMEOUT_S = 60.0


def read_agent_source(name: str) -> str:
    with open(os.path.join(AGENT_DIR, name)) as f:
        return f.read()


class Injector:
    def __init__(self, run_dir: RunDir, spec: dict):
        self.run_dir = run_dir
        self.spec = spec
        self.session_id = spec["sessionId"]
        self.selection = Selection.from_agent(spec.get("selection", {})).validate()
        self.device = frida.get_local_device()
        self.bus = Bus(run_dir, "injector")
        self.drained_sub = self.bus.subscriber(bus.TARGET_DRAINED, bus.HEARTBEAT + "drainer-")
        self.writer = WriterClient(run_dir.writer, "injector")
        # Frida delivers messages on its own thread; a ZeroMQ socket must not
        # be shared across threads, so that thread gets a client of its own.
        self.callback_writer_lock = threading.Lock()
        self.callback_writer: WriterClient | None = None
        self.targets: list[TracedProcess] = []
        self.stop_requested = threading.Event()
        self.shards = int(spec.get("drainers", 2))
        self.flight = FlightControl(spec)
        self.thread_names = ThreadNames()
        self._source_cache: dict[str, dict] = {}
        self.tree: dict[int, int | None] = {}  # pid -> parent pid (--follow-children)
        self.children: ChildFollower | None = None

    # ---- pipeline readiness -------------------------------------------------
    def wait_for_pipeline(self) -> None:
        """Targets must not run before the writer answers and every drainer
        beats: records made before that would wait in the rings and, with a
        busy target, overflow them."""
        self.writer.request("ping", {}, deadline_s=PIPELINE_TIMEOUT_S)
        seen: set[str] = set()
        deadline = time.monotonic() + PIPELINE_TIMEOUT_S
        while len(seen) < self.shards:
            if time.monotonic() > deadline:
                missing = sorted(set(f"drainer-{k}" for k in range(self.shards)) - seen)
                raise TargetError(f"drainers did not start within {PIPELINE_TIMEOUT_S:.0f}s: "
                                  f"{', '.join(missing)} (see the logs in {self.run_dir.logs_dir})")
            msg = receive(self.drained_sub, 200)
            if msg and msg[0].startswith(bus.HEARTBEAT + "drainer-"):
                seen.add(msg[0][3:])

    # ---- writer -------------------------------------------------------------
    def _writer_for_current_thread(self) -> WriterClient:
        if threading.current_thread() is threading.main_thread():
            return self.writer
        if self.callback_writer is None:
            self.callback_writer = WriterClient(self.run_dir.writer, "injector-cb")
        return self.callback_writer

    def publish_functions(self, target: TracedProcess, functions: list[dict]) -> None:
        if not functions:
            return
        for fn in functions:
            if isinstance(fn.get("address"), str):  # the agent reports "0x..." strings
                fn["address"] = int(fn["address"], 16)
        self._add_source_locations(functions)
        with self.callback_writer_lock:
            self._writer_for_current_thread().request(
                "functions", {"pid": target.pid, "functions": functions})
        target.functions.extend(functions)

    def _add_source_locations(self, functions: list[dict]) -> None:
        """file:line from DWARF, once per module (best effort: a stripped
        module just has names)."""
        for fn in functions:
            path = fn.get("modulePath") or ""
            if not path:
                continue
            if path not in self._source_cache:
                try:
                    self._source_cache[path] = source_locations(path)
                except Exception as exc:  # a module we cannot parse keeps its names
                    log.info("no source locations for %s: %s", path, exc)
                    self._source_cache[path] = {}
            loc = self._source_cache[path].get(fn["name"])
            if loc:
                fn["sourceFile"], fn["sourceLine"] = loc[0], int(loc[1])

    # ---- targets ------------------------------------------------------------
    def start_targets(self) -> None:
        spawn = self.spec.get("spawn")
        if spawn:
            self.start_spawned(spawn)
        for pid in self.spec.get("attach", []):
            self.start_attached(int(pid))

    def start_spawned(self, spawn: dict) -> None:
        # A spawned target is ours to end: if Frida's injection never returns
        # (lanetrace.injector.fridaguard), the guard ends it and the user gets a clear
        # error instead of a session that hangs forever.
        guard = HangGuard(INJECT_TIMEOUT_S)
        try:
            with guard:
                self._start_spawned(spawn)
        except Exception:
            if guard.fired:
                raise TargetError(f"{HANG_MESSAGE} into {spawn['argv'][0]} within "
                                  f"{INJECT_TIMEOUT_S:.0f}s (a rare hang inside Frida); "
                                  "the target was ended, run again") from None
            raise

    def _start_spawned(self, spawn: dict) -> None:
        argv = spawn["argv"]
        try:
            pid = self.device.spawn(argv, envp=spawn.get("env"), cwd=spawn.get("cwd"))
        except frida.ExecutableNotFoundError:
            raise TargetError(f"program not found: {argv[0]}") from None
        except frida.PermissionDeniedError as exc:
            raise TargetError(f"not permitted to run {argv[0]}: {exc}") from None
        target = TracedProcess(pid=pid, spawned=True, argv=argv)
        self.targets.append(target)
        follow = bool(self.spec.get("followChildren"))
        try:
            self.instrument(target, attached=False)
            if follow:
                self.follow(target)
        except TargetError as exc:
            if not (follow and self.follow_untraced_root(target, exc)):
                self._kill(target.pid, signal.SIGKILL)
                raise
        except BaseException:
            self._kill(target.pid, signal.SIGKILL)
            raise
        self.device.resume(pid)

    def start_attached(self, pid: int) -> None:
        argv = _cmdline(pid)
        target = TracedProcess(pid=pid, spawned=False, argv=argv)
        self.targets.append(target)
        self.instrument(target, attached=True)

    def instrument(self, target: TracedProcess, attached: bool) -> None:
        pid = target.pid
        try:
            target.session = self.device.attach(pid)
        except frida.ProcessNotFoundError:
            raise TargetError(f"no such process: {pid}") from None
        except frida.PermissionDeniedError as exc:
            raise TargetError(f"not permitted to attach to pid {pid}: {exc}") from None
        except frida.ProcessNotRespondingError as exc:
            raise TargetError(f"pid {pid} is not responding: {exc}") from None
        target.session.on("detached", lambda reason, crash: self.on_detached(target, reason))
        target.start_ns = time.monotonic_ns()

        target.segment = TargetSegment.create(
            self.session_id, pid, slots=int(self.spec.get("slots", 64)), shards=self.shards,
            ring_bytes=int(self.spec.get("ringBytes", 256 * 1024)),
            rings_per_lane=int(self.spec.get("ringsPerLane", 8)), **self.flight.segment_kwargs())
        # Targets start in GLOBAL_ONLY (the segment's initial mode): nothing is
        # lost before the drainers beat; the agent then moves through
        # DUAL_WRITE to PER_THREAD_ONLY by itself.
        self.flight.configure(target.segment)
        self.run_dir.register_target(pid, {"pid": pid, "shm": target.segment.name,
                                           "shards": self.shards,
                                           "flight": self.flight.registration(target.start_ns)})

        target.lifecycle = target.session.create_script(read_agent_source("lifecycle.js"))
        target.lifecycle.on("message", lambda m, d: self.on_lifecycle_message(target, m))
        target.lifecycle.load()
        modules = target.lifecycle.exports_sync.modules()

        target.agent = target.session.create_script(read_agent_source("agent.js"))
        target.agent.on("message", lambda m, d: self.on_agent_message(target, m))
        target.agent.load()
        agent = target.agent.exports_sync
        glue_path = os.path.join(AGENT_DIR, "glue.c")
        glue = open(glue_path).read() if os.path.exists(glue_path) else None
        agent.init({"shmName": target.segment.name, "agentLibPath": AGENT_LIB,
                    "glueSource": glue})
        plan = agent.plan(self.selection.to_agent())
        functions = plan["functions"]
        problems = self.selection.unmatched(functions, [m["name"] for m in modules])
        if not self.selection.include and not self.selection.include_modules and not functions:
            problems.append(f"the main executable of pid {pid} has no function symbols "
                            "(stripped?); name functions with -i MODULE!FUNCTION")
        if problems:
            raise TargetError("; ".join(problems))
        try:
            self.flight.arm(pid, agent, functions)
        except TriggerError as exc:
            raise TargetError(str(exc)) from None

        executable = modules[0]["path"] if modules else (target.argv[0] if target.argv else "")
        self.writer.request("target_start", {
            "sessionId": self.session_id, "pid": pid, "executablePath": executable,
            "args": target.argv, "attached": attached, "startNs": target.start_ns,
            "traceDir": os.path.join(self.spec["traceRoot"], self.session_id, target.trace_dir_name),
            "flightRecorder": self.flight.describe(),
        })
        self.publish_functions(target, functions)
        target.hooks = agent.install()
        log.info("pid %d: %d functions hooked (%s)", pid, len(functions), target.hooks)
        self.bus.publish(bus.TARGET_STARTED, {"pid": pid, "shm": target.segment.name,
                                            "functions": len(functions), "attached": attached})

    # ---- Frida callbacks (Frida's thread) -----------------------------------
    def on_agent_message(self, target: TracedProcess, message: dict) -> None:
        if message.get("type") == "error":
            log.error("agent in pid %d: %s", target.pid, message.get("stack") or message)
            return
        payload = message.get("payload") or {}
        if payload.get("type") == "functions":
            # A module loaded with dlopen: the writer must know the ids before
            # the agent installs the hooks, so the agent waits for this ack.
            try:
                self.publish_functions(target, payload.get("functions", []))
            except (WriterUnavailable, WriterRejected) as exc:
                log.error("pid %d: could not publish late functions: %s", target.pid, exc)
            target.agent.post({"type": "functions-ack"})
        elif payload.get("type") == "log":
            log.info("agent in pid %d: %s", target.pid, payload.get("message"))

    def on_lifecycle_message(self, target: TracedProcess, message: dict) -> None:
        payload = message.get("payload") or {}
        if payload.get("type") == "exit" and target.exit_code is None:
            target.exit_code = int(payload["code"])
        elif payload.get("type") == "crash":
            target.crash = {k: v for k, v in payload.items() if k != "registers"}
            target.signal = int(payload.get("signal") or 0)
            try:  # before the exit-ack below: the process dies right after it
                with self.callback_writer_lock:
                    self.flight.on_crash(target, payload, self._writer_for_current_thread())
            except Exception as exc:  # the crash itself is still reported
                log.error("pid %d: recording the crash failed: %s", target.pid, exc)
        elif message.get("type") == "error":
            log.error("lifecycle script in pid %d: %s", target.pid, message.get("stack"))
        if target.lifecycle is not None and payload.get("type") in ("exit", "crash"):
            target.lifecycle.post({"type": "exit-ack"})

    def on_detached(self, target: TracedProcess, reason: str) -> None:
        target.end_reason = target.end_reason or reason
        if reason == "process-terminated" and target.exit_code is None and not target.signal:
            # Killed from outside (SIGKILL and friends): no hook ran.
            target.signal = target.sent_signal or _signal_of_dead_process(target.pid)
        target.end_ns = time.monotonic_ns()
        target.ended.set()

    def discard_target(self, t: TracedProcess) -> None:
        """Undo a target whose instrumentation failed half way: unload its
        scripts, detach, remove its registration and segment, forget it. Its
        trace was never started, so there is nothing to finalize."""
        for obj in (t.agent, t.lifecycle):
            try:
                if obj is not None:
                    obj.unload()
            except Exception:  # the process may already be gone
                pass
        try:
            if t.session is not None:
                t.session.detach()
        except Exception:
            pass
        if t.segment is not None:
            self.run_dir.unregister_target(t.pid)
            try:
                t.segment.unlink()
            finally:
                t.segment.close()
                t.segment = None
        self.targets[:] = [x for x in self.targets if x is not t]

    # ---- stopping -----------------------------------------------------------
    def stop_target(self, target: TracedProcess) -> None:
        """Stop tracing: leave attached targets running, end spawned ones."""
        if target.ended.is_set():
            return
        if target.spawned:
            target.sent_signal = signal.SIGTERM
            self._kill(target.pid, signal.SIGTERM)
            if not target.ended.wait(TERMINATE_GRACE_S):
                target.sent_signal = signal.SIGKILL
                self._kill(target.pid, signal.SIGKILL)
                target.ended.wait(TERMINATE_GRACE_S)
            return
        try:
            target.agent.exports_sync.detach()
        except Exception as exc:  # the process may be exiting right now
            log.info("pid %d: agent detach: %s", target.pid, exc)
        target.detached = True
        target.end_reason = "detached"
        try:
            target.session.detach()
        except frida.InvalidOperationError:
            pass
        target.end_ns = time.monotonic_ns()
        target.ended.set()

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def finish_target(self, target: TracedProcess) -> None:
        """Everything the target recorded reaches the writer, then the trace
        is finalized and the segment removed."""
        segment = target.segment
        if segment is None:
            return
        segment.mark_target_exited()
        drained: set[int] = set()
        # Without installed hooks nothing was recorded: no drain to wait for.
        deadline = time.monotonic() + (DRAIN_TIMEOUT_S if target.hooks else 0)
        while len(drained) < self.shards and time.monotonic() < deadline:
            msg = receive(self.drained_sub, 200)
            if msg and msg[0] == bus.TARGET_DRAINED and msg[1].get("pid") == target.pid:
                drained.add(int(msg[1]["shard"]))
        if len(drained) < self.shards:
            target.error = (f"shards {sorted(set(range(self.shards)) - drained)} were not "
                            f"drained within {DRAIN_TIMEOUT_S:.0f}s")
        self.flight_tick(target)
        drops = segment.drops()
        self.writer.request("target_end", {
            "pid": target.pid, "exitCode": target.exit_code if target.exit_code is not None else 0,
            "signal": target.signal, "detached": target.detached,
            "endNs": target.end_ns or time.monotonic_ns(), "drops": drops,
            "dropsByThread": segment.drops_by_thread(),
            "control": self._control_counters(target, segment),
        })
        self.run_dir.unregister_target(target.pid)
        segment.unlink()
        segment.close()
        target.segment = None
        self.bus.publish(bus.TARGET_ENDED, {"pid": target.pid, "exitCode": target.exit_code,
                                          "signal": target.signal, "drops": drops})

    # ---- main loop ----------------------------------------------------------
    def run(self) -> dict:
        result = {"sessionId": self.session_id, "traceRoot": self.spec["traceRoot"],
                  "targets": [], "error": ""}
        try:
            self.wait_for_pipeline()
            self.start_targets()
            duration = self.spec.get("duration")
            deadline = time.monotonic() + float(duration) if duration else None
            while not all(t.ended.is_set() for t in self.targets):
                if self.stop_requested.is_set() or (deadline and time.monotonic() >= deadline):
                    break
                self.bus.heartbeat(targets=len(self.targets))
                for target in self.targets:
                    self.flight_tick(target)
                if self.children is not None:
                    self.children.pump()
                time.sleep(0.05)
        except TargetError as exc:
            result["error"] = str(exc)
        except (WriterUnavailable, WriterRejected) as exc:
            result["error"] = f"writer: {exc}"
        except frida.TransportError as exc:
            result["error"] = f"lost the connection to a target: {exc}"
        except Exception as exc:  # report, never leave targets or segments behind
            log.exception("injector failed")
            result["error"] = f"internal error in the injector: {type(exc).__name__}: {exc}"
        finally:
            for target in self.targets:
                if result["error"] and target.spawned:
                    self._kill(target.pid, signal.SIGKILL)
                self.stop_target(target)
            for target in self.targets:
                try:
                    self.finish_target(target)
                except (WriterUnavailable, WriterRejected) as exc:
                    target.error = f"writer: {exc}"
                result["targets"].append(self._target_result(target))
        return result

    def flight_tick(self, target: TracedProcess) -> None:
        """Flight-recorder marks and thread names, from the main loop."""
        if target.segment is None:
            return
        self.flight.tick(target, self.writer)
        if self.thread_names.due(target.pid):
            names = self.thread_names.poll(target.pid)
            if names:
                self.writer.request("threads", {"pid": target.pid, "threads": names})

    def _target_result(self, target: TracedProcess) -> dict:
        trace_dir = os.path.join(self.spec["traceRoot"], self.session_id, target.trace_dir_name)
        return {
            "pid": target.pid, "argv": target.argv, "spawned": target.spawned,
            "exitCode": target.exit_code, "signal": target.signal, "crash": target.crash,
            "detached": target.detached, "endReason": target.end_reason,
            "traceDir": trace_dir, "functions": len(target.functions), "hooks": target.hooks,
            "error": target.error, "startNs": target.start_ns, "endNs": target.end_ns,
            "parentPid": target.parent_pid,
            "control": target.control,
        }

    @staticmethod
    def _control_counters(target: TracedProcess, segment: TargetSegment) -> dict:
        """Mode transitions and fallback events (watchdog/agent), for the manifest."""
        target.control = control_counters(segment)
        return target.control

    # ---- --follow-children ----------------------------------------------------
    def _child_follower(self) -> ChildFollower:
        if self.children is None:
            self.children = ChildFollower(self)
        return self.children

    def follow(self, target: TracedProcess) -> None:
        """Gate and follow the children of an instrumented target (call before
        resuming it)."""
        self._child_follower().enable(target)

    def follow_untraced_root(self, target: TracedProcess, exc: TargetError) -> bool:
        """A root with nothing to hook (``make``, a stripped ``sh``) is kept as
        an untraced participant whose children are followed; False if it
        cannot be."""
        if target.session is None:
            return False
        return self._child_follower().adopt_untraced_root(target, exc)

    def write_session(self) -> None:
        """Targets changed. The one-shot CLI writes session.json itself from
        result.json; the daemon's injector overrides this."""


def control_counters(segment: TargetSegment) -> dict:
    """Mode transitions and fallback events of a target (control block)."""
    try:
        c = segment.counters()
    except Exception:
        return {}
    return {"modeTransitions": c.get("mode_transitions", 0),
            "fallbackEvents": c.get("fallback_events", 0), "finalMode": c.get("mode")}


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        raise TargetError(f"no such process: {pid}") from None
    except PermissionError:
        raise TargetError(f"not permitted to inspect pid {pid}") from None


def _signal_of_dead_process(pid: int) -> int:
    """Best effort for a target killed from outside: no hook of ours ran, and
    the process is not our child, so its status is gone. Report SIGKILL, the
    only signal that cannot be observed from inside."""
    return signal.SIGKILL


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lanetrace-injector")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    logging.basicConfig(filename=os.path.join(run_dir.logs_dir, "injector.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(args.spec, "rb") as f:
        spec = orjson.loads(f.read())
    injector = Injector(run_dir, spec)
    signal.signal(signal.SIGTERM, lambda *_: injector.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: injector.stop_requested.set())
    result = injector.run()
    atf.write_json_atomic(run_dir.file("result.json"), result)
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
