"""The run directory of a session: where its sockets, supervisord files,
target registrations and logs live (docs/internals.md, "Run directory")."""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

import orjson


def new_session_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{secrets.token_hex(2)}"


def default_run_dir(session_id: str) -> str:
    return os.environ.get("LANETRACE_RUN_DIR") or f"/tmp/lanetrace-run-{session_id}"


@dataclass(frozen=True)
class RunDir:
    path: str

    def create(self) -> "RunDir":
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.makedirs(self.targets_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        return self

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def ipc(self, name: str) -> str:
        return "ipc://" + self.file(name)

    @property
    def targets_dir(self) -> str:
        return self.file("targets")

    @property
    def logs_dir(self) -> str:
        return self.file("logs")

    @property
    def broker_pub(self) -> str:
        """Publishers connect here (the broker's XSUB side)."""
        return self.ipc("broker-pub.sock")

    @property
    def broker_sub(self) -> str:
        """Subscribers connect here (the broker's XPUB side)."""
        return self.ipc("broker-sub.sock")

    @property
    def writer(self) -> str:
        return self.ipc("writer.sock")

    # Target registrations: the injector announces each live target's
    # segment here; drainers scan the folder, so a restarted drainer finds
    # every target without having heard any broadcast.
    def target_file(self, pid: int) -> str:
        return os.path.join(self.targets_dir, f"{pid}.json")

    def register_target(self, pid: int, info: dict) -> None:
        self.write_json(self.target_file(pid), info)

    @staticmethod
    def write_json(path: str, obj) -> None:
        """Replace a run-directory file whole (temp file, rename): readers
        never see half of it. Not fsynced: the run directory lives as long
        as its session."""
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(obj))
        os.replace(tmp, path)

    def unregister_target(self, pid: int) -> None:
        try:
            os.unlink(self.target_file(pid))
        except FileNotFoundError:
            pass

    def registered_targets(self) -> dict[int, dict]:
        found = {}
        try:
            names = os.listdir(self.targets_dir)
        except FileNotFoundError:
            return found
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.targets_dir, name), "rb") as f:
                    info = orjson.loads(f.read())
                found[int(info["pid"])] = info
            except (OSError, ValueError, KeyError):
                continue  # being replaced right now; seen on the next scan
        return found
