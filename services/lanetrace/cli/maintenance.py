"""``lanetrace gc``: remove what a crashed session left behind.

A finished session removes its shared memory and run directory itself; only a
``lanetrace`` killed with SIGKILL (or a machine crash) leaves them. A segment
or run directory is stale when the supervisord of its session is gone."""
from __future__ import annotations

import glob
import os
import re
import shutil

from lanetrace.cli import CliError

SHM_DIR = "/dev/shm"
SEGMENT_RE = re.compile(r"^lanetrace-(?P<session>\d{8}-\d{6}-[0-9a-f]{4})-(?P<pid>\d+)-(?P<role>\w+)$")
RUN_DIR_GLOB = "/tmp/lanetrace-run-*"


def register(sub) -> None:
    gc = sub.add_parser("gc", help="remove shared memory and run directories of dead sessions")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.set_defaults(func=cmd_gc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def session_alive(session_id: str) -> bool:
    pidfile = f"/tmp/lanetrace-run-{session_id}/supervisord.pid"
    try:
        with open(pidfile) as f:
            return _alive(int(f.read().strip()))
    except (OSError, ValueError):
        return False


def stale_items() -> list[str]:
    items = []
    for name in sorted(os.listdir(SHM_DIR)):
        m = SEGMENT_RE.match(name)
        if m and not session_alive(m["session"]):
            items.append(os.path.join(SHM_DIR, name))
    for path in sorted(glob.glob(RUN_DIR_GLOB)):
        session_id = os.path.basename(path)[len("lanetrace-run-"):]
        if not session_alive(session_id):
            items.append(path)
    return items


def remove_session_segments(session_id: str) -> list[str]:
    """Unlink every segment of a session whose services are all stopped. The
    injector removes its targets' segments itself; this catches the ones an
    injector that died mid-way could not."""
    removed = []
    for name in os.listdir(SHM_DIR):
        m = SEGMENT_RE.match(name)
        if m and m["session"] == session_id:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def cmd_gc(args) -> int:
    items = stale_items()
    for path in items:
        print(("would remove " if args.dry_run else "removing ") + path)
        if args.dry_run:
            continue
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as exc:
            raise CliError(f"cannot remove {path}: {exc.strerror}", status=1) from None
    if not items:
        print("nothing to clean up")
    return 0
