"""Daemon mode: the long-running injector that takes control commands from
the broker, the launcher that starts every daemon service from the run
directory's ``daemon.json``, and the client side of the control protocol.

Control protocol (request/reply over the broker's pub/sub)::

    request  topic ctl.req.<verb>    {id, verb, args, replyTo}
    reply    topic <replyTo>         {id, ok, result | error}

The client subscribes to its own ``ctl.reply.<client>`` topic, then
publishes the request and re-publishes it (same id) every
``RESEND_S`` until a reply arrives or the timeout passes: PUB/SUB drops
messages sent before a connection is up, and the broker itself may be
restarting. The server remembers the replies of the last requests by id, so
a repeated request is answered from that memory and never executed twice.

Verbs: ``ping``, ``attach`` ``{pid}`` or ``{spawn: {argv, env, cwd}}``
(+ ``selection``, ``followChildren``), ``detach`` ``{pid}``, ``status``.

Processes (``python -m lanetrace.control <command>``)::

    exec SERVICE --run-dir D [...]   launcher: reads/creates D/daemon.json and
                                     execs the service with the daemon's
                                     session, trace root and options
    injector --run-dir D --shards N  the daemon's injector (control server)
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict

import orjson
import zmq

from lanetrace.core import atf
from lanetrace.core.bus import receive
from lanetrace.core.datachannel import WriterRejected, WriterUnavailable
from lanetrace.core.rundir import RunDir, new_session_id
from lanetrace.selection import Selection, SelectionError

log = logging.getLogger("lanetrace.control")

DAEMON_FILE = "daemon.json"
DEFAULT_DAEMON_DIR = "/tmp/lanetrace-daemon"
DEFAULT_TRACE_ROOT = "/var/tmp/lanetrace/traces"
DEFAULT_QUERY_BIND = "127.0.0.1:9090"
RESEND_S = 0.5
SHUTDOWN_DRAIN_S = 30.0
DEFAULT_AGENT_STALE_MS = 5000
REPLY_MEMORY = 256


def default_daemon_dir() -> str:
    return os.environ.get("LANETRACE_DAEMON_DIR") or DEFAULT_DAEMON_DIR


class ControlError(Exception):
    """A control command failed; the message is for the user."""


# ---- daemon.json ------------------------------------------------------------

def daemon_defaults() -> dict:
    return {"sessionId": new_session_id(), "traceRoot": os.environ.get("LANETRACE_TRACE_ROOT")
            or DEFAULT_TRACE_ROOT, "queryBind": DEFAULT_QUERY_BIND, "slots": 64,
            "ringBytes": 256 * 1024, "ringsPerLane": 8, "inlineSymbols": False,
            "startedAt": time.time()}


def load_daemon_config(run_dir: RunDir, create: bool = True) -> dict:
    """The daemon's settings; created with defaults (new session) if absent.
    Creation is atomic (link of a complete temp file), so services started at
    the same moment all end up with the same session."""
    path = run_dir.file(DAEMON_FILE)
    if not os.path.exists(path) and create:
        run_dir.create()
        write_daemon_config(run_dir, daemon_defaults(), replace=False)
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def write_daemon_config(run_dir: RunDir, cfg: dict, replace: bool = True) -> None:
    path = run_dir.file(DAEMON_FILE)
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(cfg, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    try:
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def session_dir(cfg: dict) -> str:
    return os.path.join(cfg["traceRoot"], cfg["sessionId"])


# ---- launcher -----------------------------------------------------------------

def service_argv(service: str, run_dir: RunDir, cfg: dict, shard: int | None,
                 shards: int | None, python: str = sys.executable) -> list[str]:
    rd = run_dir.path
    if service == "broker":
        return [python, "-m", "lanetrace.broker", "--run-dir", rd]
    if service == "writer":
        argv = [python, "-m", "lanetrace.writer", "--run-dir", rd, "--trace-root",
                cfg["traceRoot"], "--session", cfg["sessionId"]]
        if cfg.get("inlineSymbols"):
            argv.append("--inline-symbols")
        return argv
    if service == "drainer":
        if shard is None or shards is None:
            raise ControlError("exec drainer needs --shard and --shards")
        return [python, "-m", "lanetrace.drainer", "--run-dir", rd, "--shard", str(shard),
                "--shards", str(shards)]
    if service == "injector":
        return [python, "-m", "lanetrace.control", "injector", "--run-dir", rd,
                "--shards", str(shards or 2)]
    if service == "watchdog":
        argv = [python, "-m", "lanetrace.watchdog", "--run-dir", rd]
        return argv
    if service == "query":
        return [python, "-m", "lanetrace", "serve", "--trace-root", cfg["traceRoot"],
                "--bind", cfg.get("queryBind", DEFAULT_QUERY_BIND), "--reuseport",
                "--access-log", "off"]
    raise ControlError(f"unknown service {service!r}")


def cmd_exec(args) -> int:
    run_dir = RunDir(args.run_dir).create()
    cfg = load_daemon_config(run_dir)
    os.makedirs(session_dir(cfg), exist_ok=True)
    argv = service_argv(args.service, run_dir, cfg, args.shard, args.shards)
    if args.service == "watchdog" and args.standalone:
        argv.append("--standalone")
    env = dict(os.environ, LANETRACE_SESSION=cfg["sessionId"], PYTHONUNBUFFERED="1")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
    return 127  # not reached


# ---- supervisord configuration ----------------------------------------------

SHIPPED_PYTHON = "%(here)s/../.venv/bin/python"


def render_supervisord_conf(run_dir: str, python: str, drainers: int = 2,
                            query_replicas: int = 1) -> str:
    """The daemon's supervisord configuration. ``config/supervisord.conf`` is
    this function's output for the defaults (a test keeps them identical);
    ``lanetrace daemon start`` writes it into the run directory with the
    running interpreter and the chosen run directory and sizes."""
    rd = run_dir.rstrip("/")
    logs = f"{rd}/logs"

    def launch(service: str, *extra: str) -> str:
        return " ".join([python, "-m", "lanetrace.control", "exec", service, "--run-dir", rd,
                         *extra])

    return f"""; lanetrace daemon: supervisord configuration.
;
; Start:   lanetrace daemon start      (creates {rd}, a new session, then runs
;                                       supervisord -c on a copy of this file)
;   or:    mkdir -p {logs} && supervisord -c config/supervisord.conf
; Control: lanetrace ctl attach PID | detach PID | status
;          supervisorctl -c config/supervisord.conf status|restart lanetrace:drainer-1|...
; Stop:    lanetrace daemon stop
;
; Every service is started by the launcher (python -m lanetrace.control exec
; SERVICE), which reads the daemon's session, trace root and options from
; {rd}/daemon.json (created with defaults if absent).
; Generated by lanetrace.control.render_supervisord_conf; edit that, not this.

[unix_http_server]
file={rd}/supervisord.sock
chmod=0700

[supervisord]
nodaemon=false
logfile={rd}/supervisord.log
pidfile={rd}/supervisord.pid
childlogdir={logs}
loglevel=info
environment=PYTHONUNBUFFERED="1"

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{rd}/supervisord.sock

; ZeroMQ XSUB/XPUB proxy: heartbeats, metrics, control commands and events.
[program:broker]
command={launch("broker")}
priority=10
autorestart=true
startsecs=1
stopsignal=TERM
stdout_logfile={logs}/broker.log
redirect_stderr=true

; ATF V4 persistence; acks batches once durable (restart: clients resend).
[program:writer]
command={launch("writer")}
priority=20
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=60
stdout_logfile={logs}/writer.log
redirect_stderr=true

; One drainer per registry shard; --shards must equal numprocs.
[program:drainer]
command={launch("drainer", "--shard", "%(process_num)d", "--shards", str(drainers))}
process_name=drainer-%(process_num)d
numprocs={drainers}
priority=30
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=60
stdout_logfile={logs}/drainer-%(process_num)d.log
redirect_stderr=true

; Attaches/spawns targets on control commands (lanetrace ctl ...).
[program:injector]
command={launch("injector", "--shards", str(drainers))}
priority=40
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=150
stdout_logfile={logs}/injector.out
redirect_stderr=true

; JSON-RPC query server over the daemon's trace root (replicas share the port).
[program:query]
command={launch("query")}
process_name=query-%(process_num)d
numprocs={query_replicas}
priority=50
autorestart=true
startsecs=1
stopsignal=TERM
stdout_logfile={logs}/query-%(process_num)d.log
redirect_stderr=true

[group:lanetrace]
programs=broker,writer,drainer,injector,query

; Event listener: drainer exit -> shard fallback at once; fresh heartbeat -> back.
[eventlistener:watchdog]
command={launch("watchdog")}
events=PROCESS_STATE,TICK_5
priority=5
autorestart=true
startsecs=1
stopsignal=TERM
buffer_size=1024
stderr_logfile={logs}/watchdog.log
"""


def render_procfile(run_dir: str, python: str, drainers: int = 2) -> str:
    lines = [f"# lanetrace daemon for honcho/foreman (the same services as config/supervisord.conf,",
             f"# without supervisord: nothing restarts them, and the watchdog only watches",
             f"# heartbeats). Control it with LANETRACE_DAEMON_DIR={run_dir} lanetrace ctl ...",
             f"# Generated by lanetrace.control.render_procfile."]

    def launch(service, *extra):
        return " ".join([python, "-m", "lanetrace.control", "exec", service, "--run-dir",
                         run_dir, *extra])

    lines.append(f"broker: {launch('broker')}")
    lines.append(f"writer: {launch('writer')}")
    for k in range(drainers):
        lines.append(f"drainer{k}: {launch('drainer', '--shard', str(k), '--shards', str(drainers))}")
    lines.append(f"injector: {launch('injector', '--shards', str(drainers))}")
    lines.append(f"watchdog: {launch('watchdog', '--standalone')}")
    lines.append(f"query: {launch('query')}")
    return "\n".join(lines) + "\n"


# ---- client -----------------------------------------------------------------

class ControlClient:
    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.ctx = zmq.Context()
        self.client_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.reply_topic = f"ctl.reply.{self.client_id}"
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(run_dir.broker_pub)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.reply_topic.encode())
        self.sub.connect(run_dir.broker_sub)

    def request(self, verb: str, args: dict | None = None, timeout_s: float = 30.0) -> dict:
        req_id = secrets.token_hex(8)
        msg = [f"ctl.req.{verb}".encode(),
               orjson.dumps({"id": req_id, "verb": verb, "args": args or {},
                             "replyTo": self.reply_topic})]
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise ControlError(f"no reply to {verb!r} from the daemon's injector within "
                                   f"{timeout_s:.0f}s (see the logs in {self.run_dir.logs_dir})")
            if now >= next_send:
                try:
                    self.pub.send_multipart(msg, zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_send = now + RESEND_S
            got = receive(self.sub, int(max(1, min(next_send, deadline) - now) * 1000) or 1)
            if got is None:
                continue
            _, reply = got
            if reply.get("id") != req_id:
                continue
            if not reply.get("ok"):
                raise ControlError(reply.get("error") or f"{verb} failed")
            return reply.get("result") or {}

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


# ---- the daemon's injector ----------------------------------------------------

DEFERRED = object()


def _index_lane(per_target: dict) -> dict:
    """A drainer's metrics for one target: {lanes: {index: {...}}} (or the
    older flat {records, ...})."""
    return (per_target.get("lanes") or {}).get("index") or per_target


def control_counters(segment) -> dict:
    """Mode transitions and fallback events of a target (control block)."""
    try:
        c = segment.counters()
    except Exception:
        return {}
    return {"modeTransitions": c.get("mode_transitions", 0),
            "fallbackEvents": c.get("fallback_events", 0), "finalMode": c.get("mode")}


def _make_injector_class():
    """Deferred import: injector.py pulls in frida; the CLI client must not."""
    import frida

    from lanetrace.injector import DRAIN_TIMEOUT_S, Injector, Target, TargetError

    class DaemonInjector(Injector):
        """The injector of a daemon: targets come and go by control command;
        each is finished (drained, TraceEnd, segment removed) when it ends,
        while the others keep being traced."""

        def __init__(self, run_dir: RunDir, spec: dict):
            super().__init__(run_dir, spec)
            self.ctl_sub = self.bus.subscriber("ctl.req.", "metrics.")
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
                verb = req.get("verb") or topic[len("ctl.req."):]
                try:
                    result = getattr(self, f"cmd_{verb}")(req.get("args") or {}) \
                        if verb in ("ping", "attach", "detach", "status") else None
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
            if stale and target.segment is not None and hasattr(target.segment, "mode_policy"):
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
            target = Target(pid=pid, spawned=True, argv=argv)
            self.targets.append(target)
            try:
                self.instrument(target, attached=False)
            except TargetError as exc:
                from lanetrace.children import untraced_root
                # Nothing to hook in the root (make, sh): follow its children.
                if not follow or not untraced_root(self, target, exc):
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

        # -- follow children -----------------------------------------------------
        def follow(self, target) -> None:
            from lanetrace.children import follow_target
            follow_target(self, target)

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
                if topic == "target.drained":
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
            if hasattr(self, "flight_tick"):
                self.flight_tick(target)
            drops = segment.drops()
            target.control = control_counters(segment)
            header = {
                "pid": target.pid,
                "exitCode": target.exit_code if target.exit_code is not None else 0,
                "signal": target.signal, "detached": target.detached,
                "endNs": target.end_ns or time.monotonic_ns(), "drops": drops,
                "control": target.control,
            }
            if hasattr(segment, "drops_by_thread"):
                header["dropsByThread"] = segment.drops_by_thread()
            self.writer.request("target_end", header, deadline_s=SHUTDOWN_DRAIN_S
                                if self.stop_requested.is_set() else 60.0)
            self.run_dir.unregister_target(target.pid)
            segment.unlink()
            segment.close()
            target.segment = None
            self.bus.publish("target.ended", {"pid": target.pid, "exitCode": target.exit_code,
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
            result["control"] = getattr(target, "control", {})
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
                    if topic.startswith("metrics."):
                        self.metrics[topic[len("metrics."):]] = payload
                    else:
                        self.handle(topic, payload)
                    msg = receive(self.ctl_sub, 0)
                for t in list(self.targets):
                    if t.ended.is_set() and t.pid not in self.ending:
                        self.begin_finish(t)
                if hasattr(self, "flight_tick"):
                    for t in list(self.targets):
                        if t.pid not in self.ending:
                            try:
                                self.flight_tick(t)
                            except Exception:
                                log.exception("pid %d: flight recorder tick", t.pid)
                self.pump_drained()
                self.answer_deferred()
                children = getattr(self, "children", None)
                if children is not None:
                    children.pump()
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
            self.write_session()
            return 0

        def answer_deferred(self) -> None:
            for req_id, (pid, reply_to) in list(self.deferred.items()):
                if pid in self.done:
                    del self.deferred[req_id]
                    reply = {"id": req_id, "ok": True, "result": self.done[pid]}
                    self.replies[req_id] = reply
                    self.bus.publish(reply_to, reply)

    return DaemonInjector


def cmd_injector(args) -> int:
    run_dir = RunDir(args.run_dir).create()
    logging.basicConfig(filename=os.path.join(run_dir.logs_dir, "injector.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_daemon_config(run_dir)
    spec = {"sessionId": cfg["sessionId"], "traceRoot": cfg["traceRoot"], "drainers": args.shards,
            "selection": cfg.get("selection") or {}, "slots": cfg.get("slots", 64),
            "ringBytes": cfg.get("ringBytes", 256 * 1024), "ringsPerLane": cfg.get("ringsPerLane", 8),
            "agentStaleMs": cfg.get("agentStaleMs", DEFAULT_AGENT_STALE_MS)}
    cls = _make_injector_class()
    injector = cls(run_dir, spec)
    finish_orphans(injector)
    signal.signal(signal.SIGTERM, lambda *_: injector.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: injector.stop_requested.set())
    return injector.serve()


def finish_orphans(injector) -> None:
    """Targets registered by an injector that died (SIGKILL): their Frida
    sessions are gone; finalize their traces so nothing stays half done."""
    from lanetrace.injector import Target
    from lanetrace.shm import SegmentError, TargetSegment
    for pid, info in injector.run_dir.registered_targets().items():
        try:
            seg = TargetSegment.open(info["shm"])
        except (SegmentError, KeyError):
            injector.run_dir.unregister_target(pid)
            continue
        t = Target(pid=pid, spawned=False, argv=info.get("argv") or [], segment=seg)
        t.hooks = {"orphan": True}
        t.end_reason = "injector restarted"
        t.detached = True
        t.error = "the injector was restarted while tracing; trace ends there"
        log.warning("pid %d: finishing the trace of a previous injector", pid)
        t.ended.set()
        injector.targets.append(t)
        injector.begin_finish(t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanetrace.control")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec", help="start one daemon service from daemon.json")
    ex.add_argument("service", choices=("broker", "writer", "drainer", "injector", "watchdog",
                                        "query"))
    ex.add_argument("--run-dir", default=default_daemon_dir())
    ex.add_argument("--shard", type=int)
    ex.add_argument("--shards", type=int)
    ex.add_argument("--standalone", action="store_true",
                    help="watchdog without supervisord events (Procfile)")
    ex.set_defaults(func=cmd_exec)
    ren = sub.add_parser("render", help="print the shipped supervisord.conf (or --procfile)")
    ren.add_argument("--procfile", action="store_true")
    ren.set_defaults(func=lambda a: print(
        render_procfile(DEFAULT_DAEMON_DIR, ".venv/bin/python", 2) if a.procfile
        else render_supervisord_conf(DEFAULT_DAEMON_DIR, SHIPPED_PYTHON, 2, 1), end="") or 0)
    inj = sub.add_parser("injector", help="the daemon's injector (control server)")
    inj.add_argument("--run-dir", default=default_daemon_dir())
    inj.add_argument("--shards", type=int, default=2)
    inj.set_defaults(func=cmd_injector)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ControlError as exc:
        print(f"lanetrace.control: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
