"""What each function of a binary takes and gives back, from DWARF: the
number of ``DW_TAG_formal_parameter`` children of its subprogram and
whether it has a return type, so that a call shows as many ``argN`` as the
function takes and a ``void`` function no return value.

Binaries without debug info give {}; a variadic function counts its named
parameters. Results are cached per (path, mtime, size).
"""
from __future__ import annotations

import functools
import os


def signatures(binary_path: str) -> dict[str, tuple[int, bool]]:
    """Function name -> (declared parameters, returns a value); {} when unknown."""
    try:
        st = os.stat(binary_path)
    except OSError:
        return {}
    return _load(os.path.realpath(binary_path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load(path: str, _mtime: int, _size: int) -> dict[str, tuple[int, bool]]:
    # imported here: only traces with flight-recorder details need it
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.elf.elffile import ELFFile

    out: dict[str, tuple[int, bool]] = {}
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
                        out[name] = (n, "DW_AT_type" in die.attributes)
    except (OSError, ELFError, DWARFError, ValueError, KeyError, IndexError, AssertionError):
        return {}
    return out


def for_trace(t):
    """fidx -> (parameters, returns a value), None when DWARF does not say,
    for an opened trace: a module is looked up as the executable itself or a file of that
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
                got = signatures(path)
            by_module[module] = got
        return got

    def signature(fidx):
        if fidx < 0 or fidx >= len(t.names):
            return None
        return counts(t.modules[fidx]).get(t.names[fidx])

    return functools.lru_cache(maxsize=4096)(signature)
