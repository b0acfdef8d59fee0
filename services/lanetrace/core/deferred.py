"""Modules imported on first use, or ahead of it on a thread.

A process that needs a heavy library (numpy, capstone, protobuf) only after
a long native call that releases the GIL (Frida spawning and attaching a
target) can import it during that call instead of before it:
``preload(name, ...)`` imports on a daemon thread, and a ``Deferred`` stands
for the module in the meantime: its first attribute access imports the
module (waiting for a preload under way, Python's import lock keeps one
import of it)."""
from __future__ import annotations

import importlib
import threading


class Deferred:
    """Stands for the module ``name``; attribute access imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def preload(*names: str) -> threading.Thread:
    """Import ``names`` on a daemon thread; a failure is left for the first
    use to raise where it is handled."""
    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:
                pass

    thread = threading.Thread(target=run, name="preload", daemon=True)
    thread.start()
    return thread
