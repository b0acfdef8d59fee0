"""Flight-recorder policy (docs/internals.md, "Flight recorder"): what a
trigger is, which hooked functions a symbol trigger names, and how marks
become the windows of detail records that are kept.

Shared by the CLI (parsing, exit 2 on a malformed trigger), the injector
(resolving symbol triggers, time marks, window requests), the drainers (which
held pre-roll data a window claims) and the writer (which detail records it
persists). Pure functions only: no I/O, so every side agrees by construction.
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

NS = 1_000_000_000
DEFAULT_PRE_ROLL_S = 0.5
DEFAULT_POST_ROLL_S = 0.2
DEFAULT_STACK_BYTES = 128
MAX_STACK_BYTES = 512
DEFAULT_BUFFER_MB = 64
# A mark reaches the drainers a little after the moment it stands for (the
# injector's time marks and crash reports travel through Frida). Held data is
# kept this much longer than the pre-roll, so a late-seen mark still finds it.
MARK_LATENCY_S = 0.25
MARK_KINDS = ("symbol", "crash", "time", "manual")


class TriggerError(ValueError):
    """A trigger the user wrote cannot be used; the message says why."""


@dataclass(frozen=True)
class Trigger:
    kind: str             # "symbol", "crash", "time"
    text: str             # as written, for messages and window labels
    name: str = ""        # symbol=: function name (glob-free)
    module: str = ""      # symbol=MODULE!NAME
    pattern: str = ""     # symbol~=: regular expression
    seconds: float = 0.0  # time=

    def matches(self, fn: dict) -> bool:
        """Does this symbol trigger name the hooked function ``fn``
        ({name, module, ...} as the agent plans it)?"""
        if self.kind != "symbol":
            return False
        if self.pattern:
            return re.search(self.pattern, fn.get("name", "")) is not None
        if fn.get("name") != self.name:
            return False
        return not self.module or fnmatch.fnmatchcase(fn.get("module", ""), self.module)

    def to_spec(self) -> dict:
        return {"kind": self.kind, "text": self.text, "name": self.name, "module": self.module,
                "pattern": self.pattern, "seconds": self.seconds}

    @classmethod
    def from_spec(cls, d: dict) -> "Trigger":
        return cls(d["kind"], d["text"], d.get("name", ""), d.get("module", ""),
                   d.get("pattern", ""), float(d.get("seconds", 0.0)))


def parse_trigger(text: str) -> Trigger:
    """``symbol=NAME``, ``symbol=MODULE!NAME``, ``symbol~=REGEX``, ``crash``,
    ``time=SECONDS`` (from the target's start)."""
    raw = text
    text = text.strip()
    if text == "crash":
        return Trigger("crash", "crash")
    if text.startswith("symbol~="):
        pattern = text[len("symbol~="):]
        if not pattern:
            raise TriggerError(f"trigger {raw!r}: symbol~= needs a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TriggerError(f"trigger {raw!r}: bad regular expression: {exc}") from None
        return Trigger("symbol", text, pattern=pattern)
    if text.startswith("symbol="):
        value = text[len("symbol="):]
        module, bang, name = value.rpartition("!")
        if not name or (bang and not module) or any(c.isspace() for c in value):
            raise TriggerError(f"trigger {raw!r}: expected symbol=NAME or symbol=MODULE!NAME")
        return Trigger("symbol", text, name=name, module=module)
    if text.startswith("time="):
        value = text[len("time="):]
        try:
            seconds = float(value)
        except ValueError:
            raise TriggerError(f"trigger {raw!r}: time= needs a number of seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise TriggerError(f"trigger {raw!r}: time= must be a finite number >= 0")
        return Trigger("time", text, seconds=seconds)
    kind = text.split("=", 1)[0].split("~", 1)[0]
    raise TriggerError(f"unknown trigger {raw!r}" + (f" (kind {kind!r})" if kind else "") +
                       ": use symbol=NAME, symbol=MODULE!NAME, symbol~=REGEX, crash or "
                       "time=SECONDS")


def resolve_symbol_triggers(triggers: list[Trigger], functions: list[dict]) -> dict[int, str]:
    """Function id → label of the trigger that names it. Raises TriggerError
    for a symbol trigger that matches no hooked function."""
    ids: dict[int, str] = {}
    unmatched = []
    for trig in triggers:
        if trig.kind != "symbol":
            continue
        hit = [fn for fn in functions if trig.matches(fn)]
        if not hit:
            unmatched.append(trig.text)
        for fn in hit:
            ids.setdefault(int(fn["id"]), trig.text)
    if unmatched:
        raise TriggerError(f"trigger {', '.join(unmatched)} matches no hooked function "
                           f"(hook it with -i, or check the name)")
    return ids


# ---- marks and windows --------------------------------------------------------

def mark_label(mark: dict, function_names: dict[int, str] | None = None) -> str:
    """A window's trigger label for a mark {tsNs, kind, functionId, tid}."""
    kind = mark.get("kind", "manual")
    if kind == "symbol":
        fid = int(mark.get("functionId") or 0)
        name = (function_names or {}).get(fid)
        return f"symbol={name}" if name else f"symbol#{fid}"
    return kind


def window_of(mark: dict, pre_ns: int, post_ns: int, label: str) -> dict:
    ts = int(mark["tsNs"])
    return {"startNs": max(0, ts - pre_ns), "endNs": ts + post_ns, "trigger": label,
            "markNs": ts}


def merge_windows(windows) -> list[dict]:
    """Overlapping (or touching) windows become one; labels are joined in
    order of first appearance, a shortened flag survives the merge."""
    out: list[dict] = []
    for w in sorted(windows, key=lambda w: (int(w["startNs"]), int(w["endNs"]))):
        start, end = int(w["startNs"]), int(w["endNs"])
        labels = [x for x in str(w.get("trigger", "")).split(", ") if x]
        if out and start <= out[-1]["endNs"]:
            cur = out[-1]
            cur["endNs"] = max(cur["endNs"], end)
            have = cur["trigger"].split(", ") if cur["trigger"] else []
            cur["trigger"] = ", ".join(_specific(have + [x for x in labels if x not in have]))
            if w.get("shortened"):
                cur["shortened"] = True
                cur["preRollLostUntilNs"] = max(cur.get("preRollLostUntilNs", 0),
                                                int(w.get("preRollLostUntilNs", 0)))
            continue
        merged = {"startNs": start, "endNs": end, "trigger": ", ".join(_specific(labels))}
        if w.get("shortened"):
            merged["shortened"] = True
            merged["preRollLostUntilNs"] = int(w.get("preRollLostUntilNs", 0))
        out.append(merged)
    return out


def _specific(labels: list[str]) -> list[str]:
    """Drop a bare kind ("time", from a drainer that knows only the mark's
    kind) where the same window has that kind's full label ("time=3.0")."""
    kinds = {x.split("=", 1)[0] for x in labels if "=" in x}
    return [x for x in labels if "=" in x or "#" in x or x not in kinds]


def flat_bounds(windows: list[dict]) -> list[int]:
    """[start0, end0, start1, end1, ...] of merged windows, for the C side."""
    out = []
    for w in windows:
        out.extend((int(w["startNs"]), int(w["endNs"])))
    return out


def seconds_to_ns(s: float) -> int:
    return int(round(s * NS))
