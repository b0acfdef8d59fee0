"""Times for people: durations with units and times relative to the trace
start (``+1.25s``). ``--json`` output keeps raw nanoseconds everywhere."""
from __future__ import annotations

import argparse
import re

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_STEPS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"))


def duration(ns) -> str:
    """850 -> '850 ns', 12345 -> '12.345 us', 1_250_000_000 -> '1.250 s'."""
    if ns is None:
        return ""
    ns = int(ns)
    for scale, unit in _STEPS:
        if abs(ns) >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns} ns"


def relative(ns, origin) -> str:
    """Time since ``origin`` as '+1.25s', '+12.5ms', '+850ns', to the
    microsecond at least (trailing zeros dropped)."""
    if ns is None:
        return "-"
    if origin is None:
        return str(ns)
    d = int(ns) - int(origin)
    sign = "+" if d >= 0 else "-"
    d = abs(d)
    for scale, unit in _STEPS:
        if d >= scale:
            digits = 6 if unit == "s" else 3
            text = f"{d / scale:.{digits}f}".rstrip("0").rstrip(".")
            return f"{sign}{text}{unit}"
    return f"{sign}{d}ns"


def relative_fixed(ns, origin) -> str:
    """Time since ``origin`` in seconds to the microsecond ('+1.250312s'):
    one width for a column of many close times."""
    d = int(ns) - int(origin)
    return f"{'+' if d >= 0 else '-'}{abs(d) / 1e9:.6f}s"


def parse_duration(text: str) -> int:
    """'1ms', '250us', '2s', '1.5ms', '300' (ns) -> nanoseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1ms, 250us, 2s)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2) or "ns"]))


def parse_time(text: str) -> tuple[str, int]:
    """A time option: '+1.2s' / '1.2s' / '300ms' (relative to the trace
    start) -> ('rel', ns); a bare integer stays ambiguous -> ('num', value),
    absolute with --absolute, else nanoseconds after the start."""
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        return "num", int(t)
    if t.startswith("+"):
        t = t[1:]
    try:
        return "rel", parse_duration(t)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (e.g. +1.2s, +350ms relative to the trace start, "
            "or nanoseconds with --absolute)") from None


def resolve_time(value, origin: int, absolute: bool) -> int | None:
    """A parsed time option as an absolute timestamp (ns)."""
    if value is None:
        return None
    kind, ns = value
    if kind == "num" and absolute:
        return ns
    return (origin or 0) + ns
