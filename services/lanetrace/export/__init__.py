"""Exporters of ATF V4 traces to other tools' formats, trace comparison, and
DWARF source locations.

``export_trace(trace_dir, fmt, out_path, options)`` streams a trace into
Perfetto protobuf, Chrome Trace Event JSON, folded stacks or JSON lines;
``lanetrace.export.diff.diff_traces`` compares two traces and
``lanetrace.export.dwarf`` maps functions to file:line.

The names below load on first use: the injector imports ``.dwarf`` at hook
time and should not pay for the exporters (and their protobuf descriptors).
"""
import importlib

__all__ = ["FORMATS", "ExportError", "ExportOptions", "ExportStats", "export_trace"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("lanetrace.export.run"), name)
    raise AttributeError(f"module 'lanetrace.export' has no attribute {name!r}")
