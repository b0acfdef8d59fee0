"""``--follow-children``: trace the processes a target forks and execs,
each as a target of its own (its own ``pid_<pid>`` trace), with Frida's
child gating.

* ``session.enable_child_gating()`` on every followed process: Frida holds
  each new child suspended and announces it on the device's
  ``child-added`` signal (origin ``fork``, ``exec`` or ``spawn``).
* ``exec`` and ``spawn`` children (a new program image) are instrumented
  like any target, gated in turn, then resumed.
* ``fork`` children that have not exec'd yet are a copy of their parent (its
  patched code included); they are gated and resumed untraced, and traced
  from their ``exec`` on, which is what ``make -j2`` or a shell does. A
  child whose image has nothing to hook (a stripped ``sh``) is followed
  untraced too, so its own children are still found.
* Every child gets ``parent_pid``; the session file records the tree.

Frida delivers ``child-added`` on its own thread; the children are queued
and handled by ``pump()`` on the injector's main thread, where the ZeroMQ
sockets live.
"""
from __future__ import annotations

import logging
import queue

import frida

from lanetrace.injector.traced import TargetError, TracedProcess

log = logging.getLogger("lanetrace.injector.children")


class ChildFollower:
    def __init__(self, injector):
        self.injector = injector
        self.pending: "queue.Queue" = queue.Queue()
        self.followed: set[int] = set()     # pids whose children we gate
        self.passthrough: dict[int, object] = {}  # pid -> frida session (untraced)
        self.tree: dict[int, int | None] = injector.tree
        injector.device.on("child-added", self._on_child_added)

    def _on_child_added(self, child) -> None:
        if child.parent_pid in self.followed or child.pid in self.followed:
            self.pending.put(child)

    def enable(self, target) -> None:
        """Gate the children of an instrumented target (before resuming it)."""
        self.tree.setdefault(target.pid, target.parent_pid)
        target.session.enable_child_gating()
        self.followed.add(target.pid)

    def pump(self) -> int:
        """Handle the children announced so far; returns how many."""
        n = 0
        while True:
            try:
                child = self.pending.get_nowait()
            except queue.Empty:
                return n
            n += 1
            try:
                self._handle(child)
            except Exception:
                log.exception("child %d of %d", child.pid, child.parent_pid)
            finally:
                try:
                    self.injector.device.resume(child.pid)
                except (frida.InvalidArgumentError, frida.ProcessNotFoundError,
                        frida.InvalidOperationError):
                    pass

    def _handle(self, child) -> None:
        inj = self.injector
        parent = child.parent_pid
        if child.origin == "exec":
            # Same pid, new image: the parent entry is whoever ran before.
            parent = self.tree.get(child.pid, child.parent_pid)
        self.tree[child.pid] = parent
        argv = list(child.argv or []) or ([child.path] if child.path else [])
        log.info("child %d of %d (%s): %s", child.pid, parent, child.origin, argv)
        if child.origin == "fork":
            self._passthrough(child.pid)
            return
        old = self.passthrough.pop(child.pid, None)
        if old is not None:
            try:
                old.detach()
            except Exception:
                pass
        target = TracedProcess(pid=child.pid, spawned=False, argv=argv)
        target.parent_pid = parent
        inj.targets.append(target)
        try:
            inj.instrument(target, attached=True)
        except TargetError as exc:
            log.info("child %d not traced (%s); following its children", child.pid, exc)
            self.injector.discard_target(target)
            self._passthrough(child.pid)
            return
        self.enable(target)
        inj.write_session()

    def _passthrough(self, pid: int) -> None:
        try:
            session = self.injector.device.attach(pid)
            session.enable_child_gating()
        except (frida.ProcessNotFoundError, frida.TransportError,
                frida.InvalidOperationError) as exc:
            log.info("child %d gone before it could be followed: %s", pid, exc)
            return
        self.passthrough[pid] = session
        self.followed.add(pid)

    def close(self) -> None:
        for session in self.passthrough.values():
            try:
                session.detach()
            except Exception:
                pass
        self.passthrough.clear()

    def adopt_untraced_root(self, target: TracedProcess, exc: TargetError) -> bool:
        """A target run with --follow-children whose own image has nothing to
        hook (``make``, a stripped ``sh``): instead of failing, keep it as an
        untraced participant (its exit still ends the run; its lifecycle script
        still reports the exit code) and follow its children."""
        try:
            if target.agent is not None:
                target.agent.unload()
        except Exception:
            pass
        target.agent = None
        if target.segment is not None:
            self.injector.run_dir.unregister_target(target.pid)
            try:
                target.segment.unlink()
            finally:
                target.segment.close()
                target.segment = None
        target.functions = []
        target.hooks = {}
        target.error = f"not traced itself ({exc}); its children were followed"
        self.tree.setdefault(target.pid, target.parent_pid)
        try:
            target.session.enable_child_gating()
        except frida.InvalidOperationError:
            return False
        self.followed.add(target.pid)
        return True
