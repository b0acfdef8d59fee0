"""How many parameters each function of a binary declares (DWARF
``DW_TAG_formal_parameter`` children of its subprogram), so that a call's
argument registers show as many ``argN`` as the function takes.

Binaries without debug info give {}; a variadic function counts its named
parameters. Results are cached per (path, mtime, size).
"""
from __future__ import annotations

import functools
import os

from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile


def parameter_counts(binary_path: str) -> dict[str, int]:
    """Function name -> number of declared parameters; {} when unknown."""
    try:
        st = os.stat(binary_path)
    except OSError:
        return {}
    return _load(os.path.realpath(binary_path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load(path: str, _mtime: int, _size: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return {}
            for cu in elf.get_dwarf_info().iter_CUs():
                for die in cu.get_top_DIE().iter_children():
                    if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                        continue
                    name = die.attributes["DW_AT_name"].value.decode(errors="replace")
                    n = sum(1 for c in die.iter_children() if c.tag == "DW_TAG_formal_parameter")
                    if "DW_AT_low_pc" in die.attributes or name not in out:
                        out[name] = n
    except (OSError, ELFError, DWARFError, ValueError, KeyError, IndexError, AssertionError):
        return {}
    return out


def for_trace(t):
    """fidx -> parameter count (None when DWARF does not say) for an opened
    trace: a module is looked up as the executable itself or a file of that
    name next to it (where the program's own libraries usually are)."""
    exe = t.manifest.get("executablePath") or (t.idx.meta.get("traceStart") or {}).get(
        "executablePath") or ""
    here = os.path.dirname(exe)
    by_module: dict[str, dict] = {}

    def counts(module):
        got = by_module.get(module)
        if got is None:
            got = {}
            if module and exe:
                path = exe if module == os.path.basename(exe) else os.path.join(here, module)
                got = parameter_counts(path)
            by_module[module] = got
        return got

    def count(fidx):
        if fidx < 0 or fidx >= len(t.names):
            return None
        return counts(t.modules[fidx]).get(t.names[fidx])

    return functools.lru_cache(maxsize=4096)(count)
