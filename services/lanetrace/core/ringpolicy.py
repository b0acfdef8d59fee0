"""How a target's index rings behave under pressure, from the session spec:
the shared ring pool a busy thread borrows from (its memory budget) and the
drop policy (drop and count, or --no-drop: wait for a ring up to a timeout).
Plain values only, so the CLI can import it without the native extension."""
from __future__ import annotations

import os

# A hot thread offers ~30 M events/s (~1 GB/s of 32-byte records) and the
# drainers of a 2-core machine move about half of that: 1 GiB holds a couple
# of seconds of the difference. Pages are touched only by a burst that needs
# them, so an idle or moderate target costs none of it.
DEFAULT_RING_BUDGET_MB = 1024
DEFAULT_BLOCK_TIMEOUT_MS = 1000.0
# == LT_MAX_POOL_RINGS in shm.h
MAX_POOL_RINGS = 1 << 20


def pool_rings(spec: dict, ring_bytes: int, shm_dir: str = "/dev/shm") -> int:
    """Rings of ring_bytes that fit in the spec's ring budget, and in half of
    what the shared-memory filesystem has free: a page of the pool is
    allocated when a thread first writes it, and a write that finds tmpfs full
    kills the program with SIGBUS."""
    budget = max(0, int(spec.get("ringBudgetBytes", DEFAULT_RING_BUDGET_MB << 20)))
    try:
        st = os.statvfs(shm_dir)
        budget = min(budget, st.f_bavail * st.f_frsize // 2)
    except OSError:
        pass
    return min(budget // ring_bytes, MAX_POOL_RINGS)


def drop_policy(spec: dict) -> dict:
    """Keyword arguments of TargetSegment.drop_policy()."""
    return {"no_drop": bool(spec.get("noDrop", False)),
            "block_timeout_ms": float(spec.get("blockTimeoutMs", DEFAULT_BLOCK_TIMEOUT_MS))}
