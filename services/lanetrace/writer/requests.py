"""Validation of the data channel's request headers (proto/datachannel.proto):
every field the writer uses is checked for presence, type and range, and a
bad one refuses the request with a message that names it."""
from __future__ import annotations

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
I32 = (-(1 << 31), (1 << 31) - 1)


class RequestError(Exception):
    """The request is refused (nack); the message says why."""



def field(header: dict, key: str, kind, default=..., lo=None, hi=None):
    if key not in header or header[key] is None:
        if default is ...:
            raise RequestError(f"header field {key!r} is required")
        return default
    value = header[key]
    # bool is an int subclass; a JSON true is never a valid number here
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"header field {key!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise RequestError(f"header field {key!r} must be {kind.__name__}, got {value!r}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise RequestError(f"header field {key!r} = {value} is out of range [{lo}, {hi}]")
    return value


def window(raw) -> dict:
    if not isinstance(raw, dict):
        raise RequestError(f"window must be an object, got {raw!r}")
    start = field(raw, "startNs", int, lo=0, hi=U64)
    end = field(raw, "endNs", int, lo=0, hi=U64)
    if end < start:
        raise RequestError(f"window endNs {end} is before startNs {start}")
    w = {"startNs": start, "endNs": end, "trigger": field(raw, "trigger", str, "")}
    if field(raw, "shortened", bool, False):
        w["shortened"] = True
        w["preRollLostUntilNs"] = field(raw, "preRollLostUntilNs", int, 0, lo=0, hi=U64)
    return w


def function_entry(raw) -> dict:
    if not isinstance(raw, dict):
        raise RequestError(f"functions entry must be an object, got {raw!r}")
    try:
        entry = {
            "id": field(raw, "id", int, lo=1, hi=U32),
            "name": field(raw, "name", str),
            "module": field(raw, "module", str, ""),
            "address": field(raw, "address", int, 0, lo=0, hi=U64),
            "size": field(raw, "size", int, 0, lo=0, hi=U64),
        }
        source_file = field(raw, "sourceFile", str, "")
        source_line = field(raw, "sourceLine", int, 0, lo=0, hi=U32)
    except RequestError as exc:
        raise RequestError(f"functions entry {raw!r}: {exc}") from None
    if source_file:
        entry["sourceFile"] = source_file
    if source_line:
        entry["sourceLine"] = source_line
    return entry
