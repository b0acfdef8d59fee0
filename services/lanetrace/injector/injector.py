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
import contextlib
import hashlib
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
import time

import frida
import orjson

from lanetrace.core import bus, ringpolicy
from lanetrace.core.bus import Bus, receive
from lanetrace.core.deferred import Deferred, preload
from lanetrace.core.datachannel import WriterClient, WriterRejected, WriterUnavailable
from lanetrace.core.rundir import RunDir
from lanetrace.core.selection import Selection
from lanetrace.core.shm import TargetSegment
from lanetrace.core.stdio import adopt_caller_stdio
from lanetrace.injector import procfs
from lanetrace.injector.attachguard import ParkedMainThread
from lanetrace.injector.children import ChildFollower
from lanetrace.injector.flightctl import FlightControl, TriggerError
from lanetrace.injector.fridaguard import HANG_MESSAGE, HangGuard, release_frida
from lanetrace.injector.planahead import PlanAhead
from lanetrace.injector.srclocator import SourceLocator
from lanetrace.injector.sweepahead import SweepAhead
from lanetrace.injector.threadnames import ThreadNames
from lanetrace.injector.threadstop import StoppedThreads, thread_ids
from lanetrace.injector.traced import TargetError, TracedProcess

log = logging.getLogger("lanetrace.injector")

# Needed once the target is spawned and attached: imported meanwhile (main()).
HEAVY_MODULES = ("lanetrace.injector.hooksafety", "lanetrace.core.atf")
hooksafety = Deferred(HEAVY_MODULES[0])
atf = Deferred(HEAVY_MODULES[1])

# The build (setup.py) puts the agent library and its scripts into the package.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_DIR = os.path.join(PACKAGE_DIR, "agent")
AGENT_LIB = os.path.join(PACKAGE_DIR, "liblanetrace_agent.so")
PIPELINE_TIMEOUT_S = 30.0
PING_TRY_S = 1.0  # the writer's ping is retried this often while a stop is possible
# a drainer's first beat in a new segment comes within its scan interval
SEGMENT_POLL_MS = 5
DRAIN_TIMEOUT_S = 120.0
TERMINATE_GRACE_S = 2.0
INJECT_TIMEOUT_S = 60.0
SOURCE_LOCATIONS_TIMEOUT_S = 300.0


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
        # set when a target ends (Frida's thread): the main loop looks at once
        self.wake = threading.Event()
        self.shards = int(spec.get("drainers", 2))
        self.flight = FlightControl(spec)
        self.thread_names = ThreadNames()
        self.sources = SourceLocator(lambda: WriterClient(run_dir.writer, "injector-src"))
        self.timings = {"injectorStart": time.monotonic_ns()}
        self.tree: dict[int, int | None] = {}  # pid -> parent pid (--follow-children)
        self.children: ChildFollower | None = None

    # ---- pipeline readiness -------------------------------------------------
    def wait_for_pipeline(self, segments: list[TargetSegment] = ()) -> None:
        """Targets must not run before the writer answers and every drainer
        drains: records made before that would wait in the rings and, with a
        busy target, overflow them. A drainer is ready once it beats in the
        segment of every target about to start (it has opened it and drains
        it), or, with no such segment, once its heartbeat is on the bus."""
        deadline = time.monotonic() + PIPELINE_TIMEOUT_S
        while True:  # the services start next to us; a stop ends the wait
            try:
                self.writer.request("ping", {}, deadline_s=PING_TRY_S)
                break
            except WriterUnavailable:
                if time.monotonic() > deadline:
                    raise
            self._stop_if_requested()
        seen: set[str] = set()
        while len(seen) < self.shards:
            self._stop_if_requested()
            if time.monotonic() > deadline:
                missing = sorted(set(f"drainer-{k}" for k in range(self.shards)) - seen)
                raise TargetError(f"drainers did not start within {PIPELINE_TIMEOUT_S:.0f}s: "
                                  f"{', '.join(missing)} (see the logs in {self.run_dir.logs_dir})")
            if segments:
                beats = [segment.heartbeats() for segment in segments]
                seen |= {f"drainer-{k}" for k in range(self.shards) if all(b[k] for b in beats)}
                if len(seen) == self.shards:
                    break
            msg = receive(self.drained_sub, SEGMENT_POLL_MS if segments else 200)
            if msg and msg[0].startswith(bus.HEARTBEAT + "drainer-"):
                seen.add(msg[0][3:])

    def _stop_if_requested(self) -> None:
        if self.stop_requested.is_set():
            raise TargetError("stopped before the writer and the drainers were ready")

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
        with self.callback_writer_lock:
            self._writer_for_current_thread().request(
                "functions", {"pid": target.pid, "functions": functions})
        target.functions.extend(functions)
        self.sources.locate(target.pid, functions)

    # ---- targets ------------------------------------------------------------
    def start_targets(self) -> None:
        """Attach to (or spawn) every target and plan its hooks while the
        services start, then, once the pipeline is ready, make the hooks
        live (and resume spawned targets)."""
        spawn = self.spec.get("spawn")
        prepared: list[tuple[TracedProcess, bool]] = []
        if spawn:
            prepared.append((self._spawn_prepared(spawn), False))
        for pid in self.spec.get("attach", []):
            target = self._new_attached(int(pid))
            self._set_up(target, self.prepare)
            prepared.append((target, True))
        self.wait_for_pipeline([t.segment for t, _ in prepared if t.segment is not None])
        self.timings["pipelineReady"] = time.monotonic_ns()
        for target, attached in prepared:
            if attached:
                self._set_up(target, lambda t: self.go_live(t, attached=True))
            else:
                self.guarded_spawn(spawn, lambda _: self._finish_spawned(target), target.pid)

    def start_spawned(self, spawn: dict) -> None:
        """Spawn, instrument and resume one target (the pipeline is ready)."""
        target = self._spawn_prepared(spawn)
        self.guarded_spawn(spawn, lambda _: self._finish_spawned(target), target.pid)

    def _spawn_prepared(self, spawn: dict) -> TracedProcess:
        """A spawned target has not run any of its own code before it is
        resumed, so when Frida's injection hangs (lanetrace.injector.fridaguard) it is
        ended and spawned once more."""
        before = len(self.targets)
        try:
            return self.guarded_spawn(spawn, self._prepare_spawned)
        except TargetError as exc:
            if not str(exc).startswith(HANG_MESSAGE):
                raise
            log.warning("%s; spawning %s once more", exc, spawn["argv"][0])
            for t in self.targets[before:]:
                self.discard_target(t)
        return self.guarded_spawn(spawn, self._prepare_spawned)

    def _set_up(self, target: TracedProcess, step) -> None:
        """Run a set-up step; a target that dies meanwhile is reported as
        such, not as Frida's 'script has been destroyed'. An attached target
        is not ours to end when Frida's injection hangs in it (spawned ones
        have their HangGuard): the session is detached instead, which fails
        the call that hangs, and the process keeps running."""
        hung = threading.Event()

        def give_up() -> None:
            hung.set()
            try:
                if target.session is not None:
                    target.session.detach()
            except frida.InvalidOperationError:
                pass

        timer = None
        if not target.spawned:
            timer = threading.Timer(INJECT_TIMEOUT_S, give_up)
            timer.daemon = True
            timer.start()
        try:
            step(target)
        except (frida.InvalidOperationError, frida.TransportError) as exc:
            if hung.is_set():
                raise TargetError(f"{HANG_MESSAGE} into pid {target.pid} within "
                                  f"{INJECT_TIMEOUT_S:.0f}s (a rare hang inside Frida); lanetrace "
                                  "detached and the process keeps running, attach again") from None
            if target.ended.wait(2.0):
                raise TargetError(f"pid {target.pid} {_how_it_ended(target)} while its hooks "
                                  "were being set up") from None
            raise TargetError(f"lost pid {target.pid} while its hooks were being set up: "
                              f"{exc}") from None
        finally:
            if timer is not None:
                timer.cancel()

    def guarded_spawn(self, spawn: dict, step, pid: int | None = None):
        # A spawned target is ours to end: if Frida's injection never returns
        # (lanetrace.injector.fridaguard), the guard ends it and the user gets a clear
        # error instead of a session that hangs forever. Before the spawn has
        # returned a pid, the guard ends what was spawned during the step.
        guard = HangGuard(INJECT_TIMEOUT_S, pid)
        try:
            with guard:
                return step(spawn)
        except Exception:
            if guard.fired:
                raise TargetError(f"{HANG_MESSAGE} into {spawn['argv'][0]} within "
                                  f"{INJECT_TIMEOUT_S:.0f}s (a rare hang inside Frida); "
                                  "the target was ended, run again") from None
            raise

    def _prepare_spawned(self, spawn: dict) -> TracedProcess:
        argv = spawn["argv"]
        try:
            pid = self.device.spawn(argv, envp=spawn.get("env"), cwd=spawn.get("cwd"),
                                    stdio="inherit")
        except frida.ExecutableNotFoundError:
            raise TargetError(f"program not found: {argv[0]}") from None
        except frida.PermissionDeniedError as exc:
            raise TargetError(f"not permitted to run {argv[0]}: {exc}") from None
        except (frida.ExecutableNotSupportedError, frida.NotSupportedError) as exc:
            raise TargetError(f"cannot spawn {argv[0]}: not a native executable for this "
                              f"machine ({exc}); a script is traced through its "
                              "interpreter: lanetrace run -- INTERPRETER SCRIPT") from None
        target = TracedProcess(pid=pid, spawned=True, argv=argv)
        self.targets.append(target)
        try:
            self._set_up(target, self.prepare)
        except TargetError as exc:
            if not self.spec.get("followChildren"):
                self._kill(target.pid, signal.SIGKILL)
                raise
            target.prepare_error = exc  # may still be followed untraced
        except BaseException:
            self._kill(target.pid, signal.SIGKILL)
            raise
        return target

    def _finish_spawned(self, target: TracedProcess) -> None:
        follow = bool(self.spec.get("followChildren"))
        try:
            if target.prepare_error is not None:
                raise target.prepare_error
            self._set_up(target, lambda t: self.go_live(t, attached=False))
            if follow:
                self.follow(target)
        except TargetError as exc:
            if not (follow and self.follow_untraced_root(target, exc)):
                self._kill(target.pid, signal.SIGKILL)
                raise
        except BaseException:
            self._kill(target.pid, signal.SIGKILL)
            raise
        self.device.resume(target.pid)

    def _new_attached(self, pid: int) -> TracedProcess:
        target = TracedProcess(pid=pid, spawned=False, argv=_cmdline(pid))
        self.targets.append(target)
        return target

    def start_attached(self, pid: int) -> None:
        self.instrument(self._new_attached(pid), attached=True)

    def instrument(self, target: TracedProcess, attached: bool) -> None:
        self._set_up(target, self.prepare)
        self._set_up(target, lambda t: self.go_live(t, attached))

    def prepare(self, target: TracedProcess) -> None:
        """Attach, create the segment, load the scripts and plan the hooks:
        nothing that needs the writer or the drainers."""
        pid = target.pid
        target.mark("attachStart")
        uid, gid = _credentials(pid)
        foreign = uid != os.geteuid()  # a service account's process, attached by root
        ring_bytes = int(self.spec.get("ringBytes", 256 * 1024))
        target.segment = TargetSegment.create(
            self.session_id, pid, slots=int(self.spec.get("slots", 64)), shards=self.shards,
            ring_bytes=ring_bytes, rings_per_lane=int(self.spec.get("ringsPerLane", 8)),
            pool_rings=ringpolicy.pool_rings(self.spec, ring_bytes),
            owner=(uid, gid) if foreign else None, **self.flight.segment_kwargs())
        target.segment.drop_policy(**ringpolicy.drop_policy(self.spec))
        # The agent maps the segment with its pages populated; allocating them
        # here, while Frida attaches, takes that work off the way to live hooks.
        allocating = threading.Thread(target=target.segment.preallocate, daemon=True,
                                      name=f"preallocate-{pid}")
        allocating.start()
        target.program_tids = thread_ids(pid)
        # the branch sweep of the hook-safety analysis runs while Frida attaches
        target.sweep_ahead = SweepAhead(pid, self.selection)
        # and the plan, from the modules' files, so the agent only numbers it
        # (LANETRACE_PLAN_AHEAD=off: the agent plans every module, for comparison)
        if os.environ.get("LANETRACE_PLAN_AHEAD", "on") != "off":
            target.plan_ahead = PlanAhead(pid, self.selection, read_agent_source("agent.js"),
                                          AGENT_LIB)
        # A running program's main thread waits aside while Frida's bootstrap
        # borrows it; spawned targets and gated children are not running yet.
        running = not target.spawned and target.parent_pid is None
        try:
            with ParkedMainThread(pid) if running else contextlib.nullcontext():
                target.session = self.device.attach(pid)
        except frida.ProcessNotFoundError:
            raise TargetError(f"no such process: {pid}") from None
        except frida.PermissionDeniedError as exc:
            raise TargetError(f"not permitted to attach to pid {pid}: {exc}") from None
        except frida.ProcessNotRespondingError as exc:
            raise TargetError(f"pid {pid} is not responding: {exc}") from None
        finally:
            if target.session is None:  # no trace begins: leave no segment behind
                allocating.join()
                target.segment.unlink()
                target.segment.close()
                target.segment = None
        target.session.on("detached", lambda reason, crash: self.on_detached(target, reason))
        target.start_ns = time.monotonic_ns()
        target.mark("attached")
        # Targets start in GLOBAL_ONLY (the segment's initial mode): nothing is
        # lost before the drainers beat; the agent then moves to
        # PER_THREAD_ONLY by itself (through DUAL_WRITE if it recorded first).
        self.flight.configure(target.segment)
        self.run_dir.register_target(pid, {"pid": pid, "shm": target.segment.name,
                                           "shards": self.shards,
                                           "flight": self.flight.registration(target.start_ns)})

        target.lifecycle = target.session.create_script(read_agent_source("lifecycle.js"))
        target.lifecycle.on("message", lambda m, d: self.on_lifecycle_message(target, m))
        target.lifecycle.load()
        target.modules = target.lifecycle.exports_sync.modules()

        target.agent = target.session.create_script(read_agent_source("agent.js"))
        target.agent.on("message", lambda m, d: self.on_agent_message(target, m))
        target.agent.load()
        target.mark("scriptsLoaded")
        agent = target.agent.exports_sync
        glue_path = os.path.join(AGENT_DIR, "glue.c")
        glue = open(glue_path).read() if os.path.exists(glue_path) else None
        agent_lib = agent_library_for(uid, gid) if foreign else AGENT_LIB
        allocating.join()
        target.mark("allocated")
        # the calibration spans creation to here (the attach, mostly): no wait
        target.segment.enable_tsc_clock(os.environ.get("LANETRACE_CLOCK", "auto"))
        ahead = target.plan_ahead.result() if target.plan_ahead is not None else None
        init = agent.init({"shmName": target.segment.name, "agentLibPath": agent_lib,
                           "programThreads": target.program_tids or [pid], "glueSource": glue,
                           "resolve": ahead.resolve_requests() if ahead is not None else []})
        if ahead is not None:
            ahead.finish(init.get("resolved") or {})
        target.mark("initialized")
        plan = self.plan(target, agent)
        planned = plan["functions"]
        functions = traced_functions(planned)
        target.mark("planned")
        problems = self.selection.unmatched(functions, [m["name"] for m in target.modules])
        if not self.selection.include and not self.selection.include_modules and not functions:
            problems.append(f"the main executable of pid {pid} has no function symbols "
                            "(stripped?); name functions with -i MODULE!FUNCTION")
        if problems:
            raise TargetError("; ".join(problems))
        try:
            self.flight.arm(pid, agent, functions)
        except TriggerError as exc:
            raise TargetError(str(exc)) from None
        target.planned = functions
        target.addresses, target.roles = hooksafety.planned_entries(planned)
        target.sweep_ahead.wait()
        # what may be patched, decided from the code in memory before the
        # writer is needed
        target.verdicts = hooksafety.decide(pid, plan.get("modules", []), planned)
        target.selection_skips = plan.get("skipped", [])
        target.mark("analysed")

    def plan(self, target: TracedProcess, agent) -> dict:
        """The agent's plan, with the modules planned ahead from their files
        (planahead.py) only numbered by the agent; their function starts
        are the injector's."""
        ahead = target.plan_ahead.result() if target.plan_ahead is not None else None
        request = self.selection.to_agent()
        if ahead is not None and ahead.modules:
            request["given"] = ahead.given()
        plan = agent.plan(request)
        for m in plan.get("modules", []):
            if m.get("starts") is None:
                m["starts"] = [hex(a) for a in ahead.modules[int(m["base"], 16)].starts]
        if ahead is not None:
            log.info("pid %d: planned ahead in %.3f s: %s; left to the agent: %s", target.pid,
                     ahead.seconds, plan.get("plannedAhead"), ahead.left_to_agent or "none")
        return plan

    def go_live(self, target: TracedProcess, attached: bool) -> None:
        """The writer learns the target and its function table, then the
        hooks go live. The pipeline must be ready."""
        pid, functions, modules = target.pid, target.planned, target.modules
        agent = target.agent.exports_sync
        executable = modules[0]["path"] if modules else (target.argv[0] if target.argv else "")
        self.writer.request("target_start", {
            "sessionId": self.session_id, "pid": pid, "executablePath": executable,
            "args": target.argv, "attached": attached, "startNs": target.start_ns,
            "traceDir": os.path.join(self.spec["traceRoot"], self.session_id, target.trace_dir_name),
            "flightRecorder": self.flight.describe(),
        })
        target.trace_started = True
        self.publish_functions(target, functions)
        target.mark("published")
        verdicts = target.verdicts
        if attached:
            installed = self.install_stopped(target, agent, verdicts)
        else:  # spawned: suspended at its entry point, no thread runs
            # the segment's pages mapped in before the program runs, not under its first events
            installed = agent.install({**hooksafety.install_request(verdicts, target.addresses,
                                                                    target.roles),
                                       "populateNow": True})
        target.mark("live")
        self.record_hooks(target, functions, verdicts, installed, target.selection_skips)
        log.info("pid %d: %d functions planned: %d fast, %d fallback, %d skipped %s", pid,
                 len(functions), target.hooks["fast"], target.hooks["fallback"],
                 target.hooks["skipped"], target.hooks["skippedByReason"])
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
            # the agent installs the hooks, so the agent waits for this ack,
            # which carries the safety verdicts.
            planned = payload.get("functions", [])
            functions = traced_functions(planned)
            # before publishing, which turns the addresses into integers
            addresses, roles = hooksafety.planned_entries(planned)
            try:
                verdicts = hooksafety.decide(target.pid, payload.get("modules", []), planned)
                request = hooksafety.install_request(verdicts, addresses, roles)
            except Exception as exc:  # never patch what was not analysed
                log.error("pid %d: hook safety analysis failed: %s", target.pid, exc)
                verdicts = {f["id"]: hooksafety.Verdict("skip", hooksafety.UNREADABLE) for f in planned}
                request = hooksafety.install_request(verdicts, addresses, roles)
            try:
                self.publish_functions(target, functions)
            except (WriterUnavailable, WriterRejected) as exc:
                log.error("pid %d: could not publish late functions: %s", target.pid, exc)
            target.hook_batches.append([functions, verdicts, {}, payload.get("skipped", [])])
            target.agent.post({"type": "functions-ack", **request})
        elif payload.get("type") == "installed" and target.hook_batches:
            target.hook_batches[-1][2] = payload
            self._summarize_hooks(target)
        elif payload.get("type") == "log":
            log.info("agent in pid %d: %s", target.pid, payload.get("message"))

    BUSY_ROUNDS = 4

    def install_stopped(self, target: TracedProcess, agent, verdicts: dict) -> dict:
        """Install into a running program with its threads stopped: a
        function some thread is inside of (past its first patched
        instruction) waits for the next round; after BUSY_ROUNDS it is
        skipped as ``busy``."""
        addresses = target.addresses
        pending = dict(verdicts)
        total = {"replaced": 0, "attached": 0, "failed": [], "demoted": {}, "roles": 0}
        for _ in range(self.BUSY_ROUNDS):
            with StoppedThreads(target.pid, _program_threads(target)) as stopped:
                busy = stopped.inside(hooksafety.patch_ranges(pending, addresses))
                now = {k: v for k, v in pending.items() if k not in busy}
                result = agent.install(hooksafety.install_request(now, addresses, target.roles))
            if stopped.unstoppable:
                log.warning("pid %d: threads %s could not be stopped while hooks were written",
                            target.pid, stopped.unstoppable)
            for key in ("replaced", "attached", "roles"):
                total[key] += int(result.get(key, 0))
            total["failed"] += result.get("failed", [])
            for r, n in (result.get("demoted") or {}).items():
                total["demoted"][r] = total["demoted"].get(r, 0) + n
            pending = {k: pending[k] for k in busy}
            if not pending:
                break
        for k in pending:  # still busy: left alone, and said so
            verdicts[k] = hooksafety.Verdict("skip", hooksafety.BUSY)
        if pending:
            agent.install(hooksafety.install_request({k: verdicts[k] for k in pending}, addresses,
                                                     target.roles))
        return total

    def record_hooks(self, target: TracedProcess, functions, verdicts, installed, skipped) -> None:
        target.hook_batches.append([functions, verdicts, installed, skipped])
        self._summarize_hooks(target)

    @staticmethod
    def _summarize_hooks(target: TracedProcess) -> None:
        functions, verdicts, skipped = [], {}, []
        installed = {"replaced": 0, "attached": 0, "failed": [], "demoted": {}}
        for fns, vs, inst, sk in target.hook_batches:
            functions += fns
            verdicts.update(vs)
            skipped += sk
            installed["replaced"] += int(inst.get("replaced", 0))
            installed["attached"] += int(inst.get("attached", 0))
            installed["failed"] += inst.get("failed", [])
            for r, n in (inst.get("demoted") or {}).items():
                installed["demoted"][r] = installed["demoted"].get(r, 0) + n
        target.hooks = hooksafety.summarize(functions, verdicts, installed, skipped)

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
        if (reason in ("process-terminated", "process-replaced") and target.spawned
                and self.children is None  # --follow-children traces the new image
                and target.exit_code is None and not target.signal and _running(target.pid)):
            # The program exec'd another image: our hooks went with the old
            # one, so its trace ends here, but the process runs on. The main
            # loop follows it untraced to report how it really ends.
            target.end_reason = "process-replaced"
            target.end_ns = target.end_ns or time.monotonic_ns()
            target.exec_pending = target.exec_followed = True
            return
        target.end_reason = target.end_reason or reason
        if target.exec_followed and target.exit_code is None and not target.signal:
            _collect_status(target)
        elif reason == "process-terminated" and target.exit_code is None and not target.signal:
            # Killed from outside (SIGKILL and friends): no hook ran.
            target.signal = target.sent_signal or _signal_of_dead_process(target.pid)
        target.end_ns = time.monotonic_ns()
        target.ended.set()
        self.wake.set()

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

    def follow_exec(self, target: TracedProcess) -> None:
        """Attach to the image a spawned target exec'd, with the lifecycle
        script only, so its exit status or fatal signal is what the session
        reports (``--follow-children`` traces the new image instead)."""
        target.exec_pending = False
        try:
            session = self.device.attach(target.pid)
            session.on("detached", lambda reason, crash: self.on_detached(target, reason))
            lifecycle = session.create_script(read_agent_source("lifecycle.js"))
            lifecycle.on("message", lambda m, d: self.on_lifecycle_message(target, m))
            target.session, target.lifecycle = session, lifecycle
            lifecycle.load()
        except (frida.ProcessNotFoundError, frida.ProcessNotRespondingError,
                frida.InvalidOperationError, frida.TransportError, frida.ProtocolError) as exc:
            log.info("pid %d: its exec'd image could not be followed: %s", target.pid, exc)
            _collect_status(target)
            target.ended.set()

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
        # Code that other threads run is rewritten only while they are
        # stopped, as at install: a thread resumed by the kernel fetches the
        # restored bytes whole.
        try:
            with StoppedThreads(target.pid, _program_threads(target)):
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
        if not target.trace_started:  # stopped before the writer knew it: nothing to finalize
            self.run_dir.unregister_target(target.pid)
            segment.unlink()
            segment.close()
            target.segment = None
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
        problem = self.sources.wait(target.pid, SOURCE_LOCATIONS_TIMEOUT_S)
        if problem:
            log.warning("pid %d: %s", target.pid, problem)
            target.error = target.error or problem
        drops = segment.drops()
        self.writer.request("target_end", {
            "pid": target.pid, "exitCode": target.exit_code if target.exit_code is not None else 0,
            "signal": target.signal, "detached": target.detached,
            "endNs": target.end_ns or time.monotonic_ns(), "drops": drops,
            "dropsByThread": segment.drops_by_thread(),
            "control": self._control_counters(target, segment),
            "hooks": target.hooks,
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
                  "targets": [], "error": "", "timings": self.timings}
        try:
            self.start_targets()
            duration = self.spec.get("duration")
            deadline = time.monotonic() + float(duration) if duration else None
            while not all(t.ended.is_set() for t in self.targets):
                if self.stop_requested.is_set() or (deadline and time.monotonic() >= deadline):
                    break
                self.bus.heartbeat(targets=len(self.targets))
                for target in self.targets:
                    if target.exec_pending:
                        self.follow_exec(target)
                    self.flight_tick(target)
                if self.children is not None:
                    self.children.pump()
                self.wake.wait(0.05)
                self.wake.clear()
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
            self.sources.close()
            release_frida()
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
            "timings": target.timings,
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
    """Mode transitions and fallback events of a target, and the clock its
    agent stamped records with (control block)."""
    try:
        c = segment.counters()
        pool = segment.pool_stats()
    except Exception:
        return {}
    return {"modeTransitions": c.get("mode_transitions", 0),
            "fallbackEvents": c.get("fallback_events", 0), "finalMode": c.get("mode"),
            "recordClock": segment.clock,
            "ringPool": pool}


def traced_functions(planned: list[dict]) -> list[dict]:
    """The planned functions that are traced: not those hooked only to keep
    the shadow stack right (``role``: C++ throw and catch)."""
    return [f for f in planned if not f.get("role")]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        raise TargetError(f"no such process: {pid}") from None
    except PermissionError:
        raise TargetError(f"not permitted to inspect pid {pid}") from None


def _how_it_ended(target: TracedProcess) -> str:
    if target.crash:
        return (f"crashed ({target.crash.get('kind', 'signal')} at "
                f"{target.crash.get('address', '?')})")
    if target.signal:
        try:
            return f"was killed by {signal.Signals(target.signal).name}"
        except ValueError:
            return f"was killed by signal {target.signal}"
    if target.exit_code is not None:
        return f"exited with status {target.exit_code}"
    return f"went away ({target.end_reason or 'detached'})"


def _credentials(pid: int) -> tuple[int, int]:
    """The uid and gid the process opens files with (fsuid, fsgid)."""
    try:
        fields = procfs.status_fields(pid)
        return int(fields["Uid"].split()[3]), int(fields["Gid"].split()[3])
    except FileNotFoundError:
        raise TargetError(f"no such process: {pid}") from None
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise TargetError(f"cannot read the credentials of pid {pid}: {exc}") from None


def agent_library_for(uid: int, gid: int) -> str:
    """A copy of the agent library that a process of uid can load: the one
    next to this package may sit in a directory only we can read (a clone in
    a 0700 home or `mktemp -d`). One copy per user and library build, owned
    by that user, 0700/0500, so a later attach loads the same file (the
    loader reuses it) and no other user can read or replace it."""
    with open(AGENT_LIB, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()[:16]
    directory = os.path.join(tempfile.gettempdir(), f"lanetrace-agent-{uid}-{digest}")
    path = os.path.join(directory, os.path.basename(AGENT_LIB))
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
            raise TargetError(f"{directory} exists but is not a private directory of uid "
                              f"{uid}; remove it and try again") from None
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return path
        except OSError:
            pass
    else:
        os.chown(directory, uid, gid)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _collect_status(target: TracedProcess, timeout: float = 5.0) -> None:
    """The exit status of a spawned target that ended unobserved: it is our
    child (Frida spawns it from this process), so it waits for us as a
    zombie unless Frida reaped it first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, target.pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            log.info("pid %d: exit status already collected elsewhere", target.pid)
            return
        if info is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if info is None:
        return
    if info.si_code == os.CLD_EXITED:
        target.exit_code = info.si_status
    else:
        target.signal = info.si_status


def _program_threads(target: TracedProcess) -> list[int]:
    """Those of the threads the process had before the attach that are
    still alive (the ones stopped while code is rewritten)."""
    before = set(target.program_tids)
    return [t for t in thread_ids(target.pid) if t in before]


def _running(pid: int) -> bool:
    """pid exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


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
    preload(*HEAVY_MODULES)
    run_dir = RunDir(args.run_dir)
    logging.basicConfig(filename=os.path.join(run_dir.logs_dir, "injector.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(args.spec, "rb") as f:
        spec = orjson.loads(f.read())
    if spec.get("stdioSocket"):
        # before Frida starts its helper, which the target inherits from
        try:
            adopt_caller_stdio(spec["stdioSocket"])
        except OSError as exc:
            atf.write_json_atomic(run_dir.file("result.json"), {
                "sessionId": spec["sessionId"], "traceRoot": spec["traceRoot"], "targets": [],
                "error": f"could not take over the caller's stdin/stdout/stderr: {exc}"})
            return 1
    injector = Injector(run_dir, spec)
    signal.signal(signal.SIGTERM, lambda *_: injector.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: injector.stop_requested.set())
    result = injector.run()
    atf.write_json_atomic(run_dir.file("result.json"), result)
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
