"""Sweep a target's code for branches while Frida attaches, instead of after.

The hook-safety analysis (hooksafety.py) needs every direct branch of each
module that holds a selected function, found by a linear sweep that restarts
at every function start. On a cold cache that sweep is most of the time to
live hooks (1.6 s for python3.11's 3 MiB of code). It needs only the code,
read from the target's memory as always, and the function starts, which the
module's ELF symbol tables give without the agent: so it starts right before
Frida attaches, in a thread, and leaves its result in hooksafety's branch
cache. When the agent's plan arrives, the analysis looks the branches up
under the key of the agent's own starts: the same set (as for python3.11,
libcrypto, libsqlite3) finds them; a module whose starts differ (the IFUNC
implementations of libc, which only the loader resolves) is swept again
there, so a wrong guess costs time, never a wrong verdict.

Only modules the selection names can be swept ahead: the main executable
for the default selection, and modules matched by -I or by the module part
of -i MODULE!FUNCTION. A bare -i FUNCTION may match any module; those are
swept after the plan.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import struct
import threading

from lanetrace.core.selection import Selection, split_function_glob

log = logging.getLogger("lanetrace.injector.sweepahead")

PT_LOAD = 1
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC, STT_GNU_IFUNC = 2, 10


def elf_function_starts(path: str, load_base: int) -> list[int] | None:
    """Addresses of the function symbols (.symtab and .dynsym, functions and
    IFUNC resolvers, also the canonical PLT entries of undefined ones) of
    the ELF file at ``path`` loaded at ``load_base``, as Frida's symbol
    enumeration gives them; None for a file that is not a 64-bit ELF."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    first_vaddr = None
    for i in range(e_phnum):
        p_type, _, _, p_vaddr = struct.unpack_from("<IIQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            first_vaddr = p_vaddr & ~0xFFF
            break
    if first_vaddr is None:
        return None
    bias = load_base - first_vaddr
    starts = set()
    for i in range(e_shnum):
        sh_type, sh_offset, sh_size, sh_entsize = (
            struct.unpack_from("<I", data, e_shoff + i * e_shentsize + 4)
            + struct.unpack_from("<QQ", data, e_shoff + i * e_shentsize + 24)
            + struct.unpack_from("<Q", data, e_shoff + i * e_shentsize + 56))
        if sh_type not in (SHT_SYMTAB, SHT_DYNSYM) or sh_offset + sh_size > len(data):
            continue
        for off in range(sh_offset, sh_offset + sh_size, sh_entsize or 24):
            st_info = data[off + 4]
            st_value = struct.unpack_from("<Q", data, off + 8)[0]
            if st_value and (st_info & 0xF) in (STT_FUNC, STT_GNU_IFUNC):
                starts.add(bias + st_value)
    return sorted(starts)


def _mapped_files(pid: int) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """(path, load base) -> the r-x ranges of that loaded instance of the
    file. Its load base is the start of the nearest mapping of the file's
    offset 0 below the range (a file may be mapped more than once)."""
    heads: dict[str, list[int]] = {}
    code: list[tuple[str, int, int]] = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].rstrip("\n")
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if int(parts[2], 16) == 0:
                heads.setdefault(path, []).append(lo)
            if parts[1][2] == "x" and parts[1][1] != "w":
                code.append((path, lo, hi))
    files: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for path, lo, hi in code:
        below = [h for h in heads.get(path, ()) if h <= lo]
        if below:
            files.setdefault((path, max(below)), []).append((lo, hi))
    return files


def modules_to_sweep(pid: int, selection: Selection) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """(path, load base, r-x ranges) of the modules the selection names."""
    globs = list(selection.include_modules)
    globs += [m for m, _ in map(split_function_glob, selection.include) if m is not None]
    default = not selection.include and not selection.include_modules
    try:
        exe = os.path.realpath(f"/proc/{pid}/exe") if default else None
        files = _mapped_files(pid)
    except OSError:
        return []
    out = []
    for (path, base), ranges in files.items():
        name = os.path.basename(path)
        if any(fnmatch.fnmatchcase(name, x) for x in selection.exclude_modules):
            continue
        if path == exe or any(fnmatch.fnmatchcase(name, g) for g in globs):
            out.append((path, base, ranges))
    return out


class SweepAhead:
    """Sweeps the modules the selection names in a thread (the decoder runs
    without the GIL); ``wait()`` before the analysis."""

    def __init__(self, pid: int, selection: Selection):
        self.pid = pid
        self.selection = selection
        self.swept: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sweep-ahead-{pid}")
        self._thread.start()

    def _run(self) -> None:
        try:
            # imported here: the injector defers it (capstone, numpy) off its start
            from lanetrace.injector import hooksafety

            for path, base, ranges in modules_to_sweep(self.pid, self.selection):
                starts = elf_function_starts(path, base)
                if starts is not None:
                    hooksafety.sweep_ahead(self.pid, ranges, starts)
                    self.swept.append(path)
        except Exception as exc:  # only a head start: the analysis sweeps what is missing
            log.info("pid %d: sweep ahead stopped: %s", self.pid, exc)

    def wait(self) -> None:
        self._thread.join()
