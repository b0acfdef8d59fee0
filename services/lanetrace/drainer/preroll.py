"""A drainer's pre-roll buffer for one target (docs/internals.md, "Flight
recorder"): copies of detail records taken out of shared memory at once (so
rings go back to the producer at the speed of a memcpy), held until a window
claims them or they are too old for any window to come.

Accounting: every record that enters is, in the end, exactly one of sent,
discarded (no window, aged out), over budget (the oldest data went first
because the budget was full) or still held. The counts are cumulative for
this drainer instance, so the writer can take the latest report as is.
"""
from __future__ import annotations

from collections import deque

from lanetrace._native import ffi, lib
from lanetrace.core.flightrec import MARK_LATENCY_S, flat_bounds, seconds_to_ns

U64_MAX = (1 << 64) - 1


class _Chunk:
    __slots__ = ("data", "records", "min_ts", "max_ts")

    def __init__(self, data: bytes, records: int, min_ts: int, max_ts: int):
        self.data = data
        self.records = records
        self.min_ts = min_ts
        self.max_ts = max_ts


def summarize(data) -> tuple[int, int, int, int]:
    """(records, min_ts, max_ts, valid_bytes) of a detail-record stream."""
    s = ffi.new("lt_detail_summary *")
    src = ffi.from_buffer(data)
    try:
        lib.lt_detail_summarize(ffi.cast("const uint8_t *", src), len(data), s)
    finally:
        ffi.release(src)
    return s.records, s.min_ts, s.max_ts, s.valid_bytes


class PreRoll:
    def __init__(self, budget_bytes: int, pre_roll_s: float, full: bool = False,
                 latency_s: float = MARK_LATENCY_S):
        self.budget = max(0, int(budget_bytes))
        self.pre_ns = seconds_to_ns(pre_roll_s)
        self.latency_ns = seconds_to_ns(latency_s)
        self.full = full
        self.chunks: deque[_Chunk] = deque()
        self.held_bytes = 0
        self.held_records = 0
        self.counts = {"received": 0, "sent": 0, "discarded": 0, "budget": 0, "invalid": 0,
                       "lost": 0}
        # newest timestamp among records dropped for the budget: a window
        # starting before it lost part of its pre-roll
        self.budget_lost_until = 0
        self.peak_bytes = 0

    # -- in -----------------------------------------------------------------
    def add(self, data: bytes) -> None:
        if not data:
            return
        records, lo, hi, valid = summarize(data)
        if valid < len(data):
            # cannot happen with a sane producer; never guess at a size
            self.counts["invalid"] += 1
            data = data[:valid]
        if not records:
            return
        self.counts["received"] += records
        self.chunks.append(_Chunk(bytes(data), records, lo, hi))
        self.held_bytes += len(data)
        self.held_records += records
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def enforce_budget(self) -> None:
        """Oldest data goes first; call after release() so a window gets its
        data before the budget is applied."""
        while self.held_bytes > self.budget and self.chunks and not self.full:
            old = self.chunks.popleft()
            self._forget(old)
            self.counts["budget"] += old.records
            self.budget_lost_until = max(self.budget_lost_until, old.max_ts)

    def _forget(self, c: _Chunk) -> None:
        self.held_bytes -= len(c.data)
        self.held_records -= c.records

    # -- out ----------------------------------------------------------------
    def release(self, windows: list[dict], now_ns: int | None, final: bool = False) -> bytes:
        """Records inside ``windows`` (merged, sorted) to send now, in order.
        Records no window can claim any more (older than now − pre-roll −
        mark latency; everything when ``final``) are discarded."""
        if self.full:
            out = b"".join(c.data for c in self.chunks)
            self.counts["sent"] += self.held_records
            self.chunks.clear()
            self.held_bytes = self.held_records = 0
            return out
        horizon = U64_MAX if final or now_ns is None else \
            max(0, now_ns - self.pre_ns - self.latency_ns)
        bounds = flat_bounds(windows)
        win = ffi.new("uint64_t[]", bounds or [0])
        nwin = len(bounds) // 2
        send_parts = []
        kept: deque[_Chunk] = deque()
        for c in self.chunks:
            overlaps = any(c.min_ts <= w["endNs"] and c.max_ts >= w["startNs"] for w in windows)
            if not overlaps:
                # Whole chunks only: a chunk the horizon cuts through waits
                # until all of it is old, so no window means no copying.
                if c.max_ts < horizon:
                    self.counts["discarded"] += c.records
                    self._forget(c)
                else:
                    kept.append(c)
                continue
            sent, keep, keep_records, discarded = self._split(c, win, nwin, horizon)
            self._forget(c)
            if sent:
                send_parts.append(sent)
            self.counts["discarded"] += discarded
            if keep:
                _, lo, hi, _ = summarize(keep)
                rest = _Chunk(keep, keep_records, lo, hi)
                kept.append(rest)
                self.held_bytes += len(keep)
                self.held_records += keep_records
        self.chunks = kept
        return b"".join(send_parts)

    def _split(self, c: _Chunk, win, nwin: int, horizon: int):
        n = len(c.data)
        send = ffi.new("uint8_t[]", n)
        keep = ffi.new("uint8_t[]", n)
        res = ffi.new("lt_detail_split_result *")
        src = ffi.from_buffer(c.data)
        try:
            lib.lt_detail_split(ffi.cast("const uint8_t *", src), n, win, nwin,
                                horizon, send, keep, res)
        finally:
            ffi.release(src)
        self.counts["sent"] += res.send_records
        return (ffi.buffer(send, res.send_bytes)[:], ffi.buffer(keep, res.keep_bytes)[:],
                res.keep_records, res.discard_records)

    def drop_all(self) -> None:
        """The drainer is going away with data it could not place: count it."""
        self.counts["lost"] += self.held_records
        self.chunks.clear()
        self.held_bytes = self.held_records = 0

    def annotate(self, windows: list[dict]) -> list[dict]:
        """The windows, flagged where the budget cost them pre-roll data."""
        out = []
        for w in windows:
            w = dict(w)
            if self.budget_lost_until and self.budget_lost_until >= w["startNs"]:
                w["shortened"] = True
                w["preRollLostUntilNs"] = min(self.budget_lost_until, w["endNs"])
            out.append(w)
        return out
