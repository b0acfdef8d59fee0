"""What /proc says of a process or one of its threads."""
from __future__ import annotations


def status_fields(pid: int, tid: int | None = None) -> dict[str, str]:
    """/proc/PID/status (or the thread TID's) as name -> value, stripped.
    Raises OSError (FileNotFoundError: the process is gone)."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        return {name: value.strip() for name, _, value in
                (line.partition(":") for line in f) if value}


def parent_pid(pid: int) -> int:
    """The parent of pid (from /proc/PID/stat). Raises OSError or ValueError."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
