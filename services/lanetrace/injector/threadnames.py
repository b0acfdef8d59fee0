"""Thread names of a traced process, read from ``/proc/<pid>/task/<tid>/comm``
(the kernel's name: what ``pthread_setname_np`` set, or the executable's
name), for the writer's ``threads`` request. Only live threads can be read,
so the injector polls often; a thread that lived and died between two polls
keeps no name (the trace still has its tid)."""
from __future__ import annotations

import os
import time

POLL_INTERVAL_S = 0.5


class ThreadNames:
    def __init__(self, interval_s: float = POLL_INTERVAL_S):
        self.interval_s = interval_s
        self._known: dict[int, dict[int, str]] = {}
        self._last: dict[int, float] = {}

    def due(self, pid: int) -> bool:
        return time.monotonic() - self._last.get(pid, 0.0) >= self.interval_s

    def poll(self, pid: int) -> list[dict]:
        """Threads seen for the first time or renamed since the last poll."""
        self._last[pid] = time.monotonic()
        known = self._known.setdefault(pid, {})
        changed = []
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return changed  # the process is gone
        for entry in tids:
            try:
                with open(f"/proc/{pid}/task/{entry}/comm", "rb") as f:
                    name = f.read().rstrip(b"\n").decode("utf-8", "replace")
            except OSError:
                continue  # exited meanwhile
            tid = int(entry)
            if known.get(tid) != name:
                known[tid] = name
                changed.append({"threadId": tid, "name": name})
        return changed
