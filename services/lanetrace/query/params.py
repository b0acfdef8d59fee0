"""Strict parameter readers: every bad value becomes Invalid params whose
``data`` names the parameter (dotted path) and says why."""
from __future__ import annotations

from lanetrace.query.errors import invalid_params

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_LIST = 10_000


def obj(value, allowed, where="params") -> dict:
    """A JSON object with only ``allowed`` keys (None/absent → empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_params(f"{where}: must be an object")
    for k in value:
        if k not in allowed:
            raise invalid_params(f"{where}: unknown field {k!r}" if where != "params"
                                 else f"unknown param {k!r}")
    return value


def integer(d, key, default=None, lo=INT64_MIN, hi=INT64_MAX, where=""):
    name = where + key
    v = d.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid_params(f"{name}: must be an integer")
    if v < lo:
        raise invalid_params(f"{name}: must be >= {lo}")
    if v > hi:
        raise invalid_params(f"{name}: must be <= {hi}")
    return v


def boolean(d, key, default, where=""):
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid_params(f"{where}{key}: must be a boolean")
    return v


def string(d, key, default=None, choices=None, where="", required=False):
    name = where + key
    v = d.get(key, default)
    if v is None:
        if required:
            raise invalid_params(f"{name}: required")
        return default
    if not isinstance(v, str):
        raise invalid_params(f"{name}: must be a string")
    if choices is not None and v not in choices:
        raise invalid_params(f"{name}: must be one of {', '.join(choices)}")
    return v


def int_list(d, key, lo=INT32_MIN, hi=INT32_MAX, where=""):
    name = where + key
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise invalid_params(f"{name}: must be an array of integers")
    if len(v) > MAX_LIST:
        raise invalid_params(f"{name}: at most {MAX_LIST} values")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
            raise invalid_params(f"{name}: must be an array of integers in [{lo}, {hi}]")
    return v


def str_list(d, key, choices=None, where=""):
    name = where + key
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list):
        raise invalid_params(f"{name}: must be an array of strings")
    if len(v) > MAX_LIST:
        raise invalid_params(f"{name}: at most {MAX_LIST} values")
    for x in v:
        if not isinstance(x, str):
            raise invalid_params(f"{name}: must be an array of strings")
        if choices is not None and x not in choices:
            raise invalid_params(f"{name}: unknown value {x!r} (one of {', '.join(choices)})")
    return v


def projection(d, defaults: dict, where="projection"):
    """Field → included, from the defaults overridden by ``d``."""
    p = obj(d, defaults, where)
    out = dict(defaults)
    for k, v in p.items():
        if not isinstance(v, bool):
            raise invalid_params(f"{where}.{k}: must be a boolean")
        out[k] = v
    return out
