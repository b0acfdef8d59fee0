"""Exact per-function entry counts from valgrind callgrind, the ground truth
the fidelity tests compare a trace with.

How the out file is read (callgrind 3.19, run with ``--dump-instr=yes
--dump-line=no --compress-strings=no --compress-pos=no``):

- ``ob=PATH`` / ``fn=NAME`` set the caller's object and function; ``cob=`` and
  ``cfn=`` name the callee of the next ``calls=`` line only (no ``cob=`` means
  the callee lives in the caller's object). ``fn`` names may carry a
  ``'N`` recursion-level suffix (``--separate-recs``); it is stripped.
- ``calls=N TARGET`` says N transfers landed at instruction address TARGET;
  the cost line after it starts with the address of the call site. Addresses
  are offsets in the object file, the same numbers as ``nm`` prints, so
  counts are keyed by (object path, offset), never by name: aliases,
  ``@plt`` stubs and demangling cannot confuse the match.
- Callgrind also calls a jump a call when it crosses into another function
  (tail calls, PLT stubs jumping to their target, ``jmp *reg``), and even when
  a function jumps to its own first instruction (a loop). A tracer that hooks
  a function's entry sees exactly: transfers whose TARGET is the function's
  first instruction (a jump into the middle of a function, or callgrind's
  pseudo-call for a return that lands somewhere unexpected, is not an entry),
  minus the function's own jumps back to its start (a loop, not a call; a real
  recursive ``call`` instruction still counts). "Its own" means the call site
  lies inside the function's symbol extent (``nm -S``), not that callgrind
  gives caller and callee one name: in a stripped library callgrind names a
  static function after the export before it, so a tail call from it looks
  like a self-call. A site inside the extent is disassembled with objdump to
  tell a ``call`` from a jump.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections import Counter

CALLGRIND_ARGS = ["--tool=callgrind", "--dump-instr=yes", "--dump-line=no",
                  "--compress-strings=no", "--compress-pos=no"]
_RECURSION_SUFFIX = re.compile(r"'\d+$")


def run(argv: list[str], out_file: str, *, cwd: str | None = None, env=None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run argv under callgrind; its output is what the program printed."""
    return subprocess.run(["valgrind", *CALLGRIND_ARGS, f"--callgrind-out-file={out_file}",
                           "--log-file=/dev/null", *argv],
                          capture_output=True, timeout=timeout, cwd=cwd, env=env)


def _base_name(fn: str) -> str:
    return _RECURSION_SUFFIX.sub("", fn)


def _is_call_instruction(obj: str, address: int) -> bool:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={address:#x}",
                          f"--stop-address={address + 16:#x}", obj],  # room for the whole instruction
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)", line)
        if m and int(m.group(1), 16) == address:
            return m.group(2).startswith("call")
    raise AssertionError(f"objdump found no instruction at {address:#x} in {obj}")


def entry_counts(out_file: str, extents: dict[str, dict[int, int]]) -> Counter:
    """(object path, offset of the entered instruction) -> entries.

    extents: object path -> {function offset: size} (see symbol_table), for
    the objects whose loops must not count as entries."""
    counts: Counter = Counter()
    ob = fn = None
    callee_ob = callee_fn = None
    pending = None  # (count, target) of a calls= line, waiting for its call site
    with open(out_file) as f:
        for line in f:
            if pending is not None:
                count, target = pending
                pending = None
                site = int(line.split()[0], 16)
                target_ob = callee_ob or ob
                size = extents.get(target_ob, {}).get(target, 0)
                inside = target <= site < target + size if size else callee_fn == fn
                if not (target_ob == ob and inside and not _is_call_instruction(ob, site)):
                    counts[(target_ob, target)] += count
                callee_ob = callee_fn = None
                continue
            if line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fn="):
                fn = _base_name(line[3:].strip())
            elif line.startswith("cob="):
                callee_ob = line[4:].strip()
            elif line.startswith("cfn="):
                callee_fn = _base_name(line[4:].strip())
            elif line.startswith("calls="):
                fields = line[6:].split()
                pending = (int(fields[0]), int(fields[1], 16))
    return counts


def symbol_table(path: str) -> dict[str, tuple[int, int]]:
    """Function name -> (offset in the file, size), from the symbol table, or
    from the dynamic one when the file is stripped (Debian's libraries)."""
    table = {}
    for args in (["nm", "-S", "--defined-only"], ["nm", "-S", "-D", "--defined-only"]):
        out = subprocess.run([*args, path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "tTiWw":
                table.setdefault(parts[3].split("@")[0], (int(parts[0], 16), int(parts[1], 16)))
            elif len(parts) == 3 and parts[1] in "tTiWw":  # no size
                table.setdefault(parts[2].split("@")[0], (int(parts[0], 16), 0))
        if table:
            return table
    raise AssertionError(f"{path} has no function symbols")


def extents_of(table: dict[str, tuple[int, int]]) -> dict[int, int]:
    return {offset: size for offset, size in table.values()}


def symbol_offsets(path: str) -> dict[str, int]:
    return {name: offset for name, (offset, _) in symbol_table(path).items()}


def objects(out_file: str) -> dict[str, str]:
    """File name -> path of every object the run touched."""
    paths = {}
    with open(out_file) as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                path = line.split("=", 1)[1].strip()
                paths.setdefault(os.path.basename(path), path)
    return paths
