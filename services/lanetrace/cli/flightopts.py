"""Flight-recorder options of ``lanetrace run``/``attach`` (docs/internals.md,
"Flight recorder"): parsed and checked before anything starts, so a
malformed trigger costs nothing and exits 2; and the flight-recorder lines of
the run summary."""
from __future__ import annotations

import argparse

from lanetrace.cli import CliError, human
from lanetrace.cli.argtypes import int_range
from lanetrace.core import flightrec


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds: {text!r}")
    return value


def add_flight_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "flight recorder (argument registers, return values and a stack copy, kept only "
        "in windows around triggers; the call index is always kept in full)")
    g.add_argument("-t", "--trigger", action="append", default=[], metavar="TRIGGER",
                   help="keep detail around this event (repeatable): symbol=NAME, "
                   "symbol=MODULE!NAME, symbol~=REGEX (on entry of a hooked function), "
                   "crash (a fatal signal), time=SECONDS (after start)")
    g.add_argument("--pre-roll-sec", type=_seconds, default=flightrec.DEFAULT_PRE_ROLL_S,
                   metavar="S", help="detail kept before a trigger (default "
                   f"{flightrec.DEFAULT_PRE_ROLL_S})")
    g.add_argument("--post-roll-sec", type=_seconds, default=flightrec.DEFAULT_POST_ROLL_S,
                   metavar="S", help="detail kept after a trigger (default "
                   f"{flightrec.DEFAULT_POST_ROLL_S})")
    g.add_argument("--stack-bytes", type=int_range(0, flightrec.MAX_STACK_BYTES),
                   default=flightrec.DEFAULT_STACK_BYTES, metavar="N",
                   help="bytes of stack copied at each entry, 0-512 (default "
                   f"{flightrec.DEFAULT_STACK_BYTES})")
    g.add_argument("--detail-buffer-mb", type=int_range(1, 65536, " MiB"),
                   default=flightrec.DEFAULT_BUFFER_MB, metavar="MB",
                   help="pre-roll memory per target in the drainers (default "
                   f"{flightrec.DEFAULT_BUFFER_MB})")
    g.add_argument("--full", action="store_true",
                   help="keep every detail record, not only windows (large traces)")


def flight_spec(args) -> dict:
    """The injector's and drainers' flight-recorder settings; CliError (exit
    2) for a malformed trigger."""
    triggers = []
    for text in args.trigger:
        try:
            triggers.append(flightrec.parse_trigger(text))
        except flightrec.TriggerError as exc:
            raise CliError(str(exc)) from None
    if len({t.text for t in triggers}) != len(triggers):
        raise CliError("the same trigger is given twice")
    return {"triggers": [t.to_spec() for t in triggers], "full": args.full,
            "preRollSec": args.pre_roll_sec, "postRollSec": args.post_roll_sec,
            "stackBytes": args.stack_bytes, "bufferMb": args.detail_buffer_mb}


def describe(spec: dict) -> str | None:
    """One line for the start of a run, or None when the detail lane is off."""
    if not spec["triggers"] and not spec["full"]:
        return None
    if spec["full"]:
        return f"lanetrace: flight recorder: every detail record kept (--full), " \
               f"{spec['stackBytes']} stack bytes per entry"
    names = ", ".join(t["text"] for t in spec["triggers"])
    return (f"lanetrace: flight recorder: triggers {names}; windows -{spec['preRollSec']:g}s/"
            f"+{spec['postRollSec']:g}s; pre-roll buffer {spec['bufferMb']} MiB per target")


def summary_lines(manifest: dict) -> list[str]:
    """Flight-recorder lines of the run summary (empty when it was off)."""
    fr = manifest.get("flightRecorder") or {}
    if not fr.get("config"):
        return []
    windows = manifest.get("windows") or []
    t0 = manifest.get("timeStartNs")
    lines = [f"    flight recorder: {len(windows)} window(s), detail kept "
             f"{manifest.get('detailKept', 0)}, discarded {manifest.get('detailDiscarded', 0)}"]
    for w in windows[:10]:
        ms = (w["endNs"] - w["startNs"]) / 1e6
        short = " (shortened: pre-roll buffer full)" if w.get("shortened") else ""
        at = f" at {human.relative(w['startNs'], t0)}" if isinstance(t0, int) else ""
        lines.append(f"      window {w['trigger']}{at}: {ms:.0f} ms{short}")
    if manifest.get("windowsShortened"):
        lines.append(f"      {manifest['windowsShortened']} window(s) lost pre-roll to the "
                     f"buffer budget (--detail-buffer-mb)")
    return lines
