"""Plan a target's hooks in the injector, from its ELF files, while Frida attaches.

The agent's own plan (agent.js ``planModule``) enumerates every symbol of a
module and matches the selection's globs and the built-in excludes inside
the target, on Frida's JS thread: under load, most of the time to live
hooks. The same plan follows from the module's file on disk and its load
base in /proc/PID/maps, so it is computed here, in a thread started before
the attach, and handed to ``plan()``: the agent then only numbers the
functions and allocates their slots.

It reproduces Frida's symbol enumeration exactly (.symtab when the file has
one, else .dynsym, in table order; exports are the defined GLOBAL/WEAK
FUNC symbols of .dynsym that are not hidden versions) and the agent's
choice of display name, aliases and matching. A module is left to the
agent, which plans it as before, when what is on disk may differ from what
is mapped or when its plan needs the target's loader:

  - its file is gone, replaced or not a file (``(deleted)``, memfd, no
    build-id, or a build-id other than the one in the target's memory);
  - it defines a function whose binding Frida may classify otherwise
    (STB_GNU_UNIQUE);
  - its name, base or size is not the one Frida reports (checked by the
    agent).

A module that defines global IFUNCs (libc, libm) is planned here too, once
the agent has resolved them: only the target's loader knows the
implementation it picked, so their names go to the agent's init()
(``resolve``) and the addresses it returns complete the plan
(``ProcessPlan.finish``).

The built-in excludes and the role functions are read from agent.js, their
one definition.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field

from lanetrace.core.selection import Selection, split_function_glob

log = logging.getLogger("lanetrace.injector.planahead")

PT_LOAD, PT_NOTE = 1, 4
SHT_SYMTAB, SHT_DYNSYM, SHT_GNU_VERSYM = 2, 11, 0x6FFFFFFF
STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
NT_GNU_BUILD_ID = 3
VERSYM_HIDDEN = 0x8000
_SYM = struct.Struct("<IBBHQQ")


class NotPlannable(Exception):
    """This module is planned by the agent; the message says why."""


class NeedsLoader(Exception):
    """The module's plan needs the implementations the target's loader
    picked for these IFUNCs."""

    def __init__(self, names: list[str]):
        super().__init__(f"{len(names)} IFUNCs to resolve in the target")
        self.names = names


# ---- the agent's globs, excludes and roles --------------------------------
def glob_to_regex(glob: str) -> re.Pattern:
    """agent.js globToRegExp, the same expression for Python's re."""
    out, i = "^", 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out += ".*"
        elif c == "?":
            out += "."
        elif c == "[":
            j = glob.find("]", i + 1)
            if j < 0:
                out += "\\["
                i += 1
                continue
            body = glob[i + 1:j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out += "[" + body.replace("\\", "\\\\") + "]"
            i = j
        else:
            out += ("\\" + c) if c in ".+^${}()|\\]" else c
        i += 1
    with warnings.catch_warnings():  # '[[' inside a set: the same as in JS
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(out + "$")


@dataclass
class Pattern:
    text: str
    module: re.Pattern | None
    func: re.Pattern


def compile_patterns(globs: list[str]) -> list[Pattern]:
    out = []
    for g in globs:
        module, func = split_function_glob(g)
        out.append(Pattern(g, glob_to_regex(module) if module is not None else None,
                           glob_to_regex(func)))
    return out


def _js_pairs(source: str, const: str) -> list[tuple[str, str]]:
    start = source.index(f"const {const} = [")
    body = source[start:source.index("];", start)]
    return re.findall(r"\[\s*'([^']*)',\s*'?([^'\]]*?)'?\s*\]", body)


@dataclass
class AgentRules:
    """What agent.js excludes by itself and hooks for C++ exceptions."""
    modules: list[tuple[re.Pattern, str]]
    functions: list[tuple[re.Pattern, str]]
    roles: list[tuple[str, int]]
    any_function: re.Pattern = field(init=False)

    def __post_init__(self):
        self.any_function = re.compile("^(?:" + "|".join(p.pattern[1:-1] for p, _ in self.functions)
                                       + ")$")

    @classmethod
    def from_agent_source(cls, source: str) -> "AgentRules":
        rules = cls([(glob_to_regex(g), why) for g, why in _js_pairs(source, "BUILTIN_EXCLUDE_MODULES")],
                    [(glob_to_regex(g), why) for g, why in _js_pairs(source, "BUILTIN_EXCLUDE_FUNCTIONS")],
                    [(name, int(role)) for name, role in _js_pairs(source, "ROLE_FUNCTIONS")])
        if len(rules.functions) < 50 or not rules.modules or not rules.roles:
            raise ValueError("agent.js: built-in exclude lists not found")
        return rules

    def module_excluded(self, name: str, path: str, agent_lib: str) -> bool:
        if name == os.path.basename(agent_lib) or "frida-agent" in path:
            return True
        return any(p.match(name) for p, _ in self.modules)


# ---- ELF ------------------------------------------------------------------
@dataclass
class Symbol:
    name: str
    value: int
    type: int
    bind: int
    shndx: int
    size: int


@dataclass
class ElfImage:
    first_vaddr: int      # of the first PT_LOAD, page-aligned: the load base maps it
    span: int             # Frida's module size: the PT_LOADs' extent
    build_id: bytes
    build_id_vaddr: int
    symbols: list[Symbol]  # what Frida enumerates: .symtab, else .dynsym
    exports: list[Symbol]  # defined GLOBAL/WEAK FUNC of .dynsym, default versions


def read_elf(path: str) -> ElfImage:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise NotPlannable(f"cannot read {path}: {exc.strerror}") from None
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise NotPlannable("not a 64-bit little-endian ELF file")
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    loads, build_id, build_id_vaddr = [], b"", 0
    for i in range(e_phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_memsz))
        elif p_type == PT_NOTE and not build_id:
            build_id, off = _build_id(data[p_offset:p_offset + p_filesz])
            build_id_vaddr = p_vaddr + off
    if not loads:
        raise NotPlannable("no loadable segment")
    if not build_id:
        raise NotPlannable("no build-id to check the file against memory")
    first = loads[0][0] & ~0xFFF
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
                for i in range(e_shnum)]
    tables = {}
    for idx, (_, sh_type, _, _, off, size, link, _, _, entsize) in enumerate(sections):
        if sh_type in (SHT_SYMTAB, SHT_DYNSYM):
            tables[sh_type] = (idx, off, size, sections[link][4], sections[link][5])
        elif sh_type == SHT_GNU_VERSYM:
            tables[sh_type] = (idx, off, size, 0, 0)
    symtab = _symbols(data, tables[SHT_SYMTAB]) if SHT_SYMTAB in tables else None
    dynsym = _symbols(data, tables[SHT_DYNSYM]) if SHT_DYNSYM in tables else []
    versym = ()
    if SHT_GNU_VERSYM in tables:
        _, off, size, _, _ = tables[SHT_GNU_VERSYM]
        versym = struct.unpack_from(f"<{size // 2}H", data, off)
    exports = [s for i, s in enumerate(dynsym)
               if s.shndx != 0 and s.bind in (STB_GLOBAL, STB_WEAK) and s.type == STT_FUNC
               and not (i < len(versym) and versym[i] & VERSYM_HIDDEN)]
    # Frida leaves out .dynsym's null entry, not .symtab's (it has no name: no effect)
    symbols = symtab if symtab is not None else dynsym[1:]
    return ElfImage(first, max(v + m for v, m in loads) - first, build_id, build_id_vaddr,
                    symbols, exports)


def _build_id(notes: bytes) -> tuple[bytes, int]:
    off = 0
    while off + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, off)
        desc = off + 12 + ((namesz + 3) & ~3)
        if ntype == NT_GNU_BUILD_ID and notes[off + 12:off + 12 + namesz] == b"GNU\0":
            return notes[desc:desc + descsz], desc
        off = desc + ((descsz + 3) & ~3)
    return b"", 0


def _symbols(data: bytes, table) -> list[Symbol]:
    _, off, size, str_off, str_size = table
    strtab = data[str_off:str_off + str_size]
    out = []
    for st_name, st_info, _, st_shndx, st_value, st_size in _SYM.iter_unpack(data[off:off + size]):
        end = strtab.index(b"\0", st_name)
        try:
            name = strtab[st_name:end].decode()
        except UnicodeDecodeError:
            raise NotPlannable("a symbol name is not UTF-8") from None
        out.append(Symbol(name, st_value, st_info & 0xF, st_info >> 4, st_shndx, st_size))
    return out


# ---- one module -----------------------------------------------------------
@dataclass
class Function:
    name: str
    address: int
    size: int
    score: int
    aliases: list[str]
    ifunc: bool = False


def global_ifuncs(image: ElfImage) -> list[str]:
    """The IFUNCs the agent resolves (dlsym) when it enumerates the module."""
    return [s.name for s in image.symbols
            if s.type == STT_GNU_IFUNC and s.bind != STB_LOCAL and s.shndx != 0]


def module_functions(image: ElfImage, base: int,
                     resolved: dict[str, int | None]) -> tuple[list[Function], list[int]]:
    """agent.js moduleFunctions: the functions, deduplicated by address,
    with every alias and the display name the agent picks, and every
    function start. ``resolved``: the address the target's loader gives
    each global IFUNC (None: not found)."""
    bias, end = base - image.first_vaddr, base + image.span
    by_addr: dict[int, Function] = {}
    starts: dict[int, None] = {}

    def add(name: str, address: int, size: int, score: int) -> None:
        if not name or address == 0 or address < base or address >= end:
            return
        if not name.startswith("_"):
            score += 1
        cur = by_addr.get(address)
        if cur is None:
            by_addr[address] = Function(name, address, size, score, [name])
            return
        if not cur.size and size:
            cur.size = size
        if name not in cur.aliases:
            cur.aliases.append(name)
        if score > cur.score:
            cur.name, cur.score = name, score

    for s in image.symbols:
        if s.bind not in (STB_LOCAL, STB_GLOBAL, STB_WEAK) and s.type in (STT_FUNC, STT_NOTYPE,
                                                                      STT_GNU_IFUNC):
            raise NotPlannable(f"function {s.name} has binding {s.bind}")
        address = bias + s.value if s.value else 0
        is_global = s.bind != STB_LOCAL
        if s.type == STT_FUNC:
            add(s.name, address, s.size, 2 if is_global else 0)
            starts[address] = None
        elif s.type in (STT_NOTYPE, STT_GNU_IFUNC) and is_global:
            # NOTYPE: dlsym finds this same definition, or one in another module
            starts[address] = None
            impl = resolved.get(s.name) if s.type == STT_GNU_IFUNC and s.shndx != 0 else None
            if impl is not None and impl != address:
                add(s.name, impl, 0, 3)
                if impl in by_addr:
                    by_addr[impl].ifunc = True
    for e in image.exports:
        address = bias + e.value
        add(e.name, address, 0, 4)
        starts[address] = None
    fns = list(by_addr.values())
    for f in fns:
        starts[f.address] = None
    return fns, list(starts)


@dataclass
class ModulePlan:
    """What the agent needs of one module planned here (``given`` of plan())."""
    name: str
    path: str
    base: int
    size: int
    functions: list[dict]
    skipped: list[dict]
    roles: list[dict]
    starts: list[int]

    def to_agent(self) -> dict:
        return {"name": self.name, "size": self.size, "functions": self.functions,
                "skipped": self.skipped, "roles": self.roles}


def plan_module(image: ElfImage, name: str, path: str, base: int, is_main: bool,
                sel: dict, rules: AgentRules,
                resolved: dict[str, int | None] | None = None) -> ModulePlan | None:
    """agent.js planModule and planRoles for one module; None when the
    selection takes nothing of it (the agent still looks for its roles).
    Raises NeedsLoader for a module with IFUNCs and no ``resolved``."""
    include_modules, exclude_modules = sel["includeModules"], sel["excludeModules"]
    if any(p.func.match(name) for p in exclude_modules):
        return None
    whole = any(p.func.match(name) for p in include_modules) or (
        not sel["include"] and not include_modules and is_main)
    inc = [p for p in sel["include"] if p.module is None or p.module.match(name)]
    if not whole and not inc:
        return None
    ifuncs = global_ifuncs(image)
    if ifuncs and resolved is None:
        raise NeedsLoader(ifuncs)
    fns, starts = module_functions(image, base, resolved or {})
    exclude = [p for p in sel["exclude"] if p.module is None or p.module.match(name)]
    functions, skipped = [], []
    for f in fns:
        def alias_match(regex):
            return next((a for a in f.aliases if regex.match(a)), None)
        shown = f.name
        if not whole:
            hit = None
            for p in inc:
                hit = alias_match(p.func)
                if hit is not None:
                    break
            if hit is None:
                continue
            shown = hit
        ex = next((p for p in exclude if alias_match(p.func) is not None), None)
        if ex is not None:
            skipped.append({"name": f"{name}!{shown}", "reason": f"excluded by -x {ex.text}"})
            continue
        if alias_match(rules.any_function) is not None:
            why = next(w for r, w in rules.functions if alias_match(r) is not None)
            skipped.append({"name": f"{name}!{shown}", "reason": f"built-in exclude: {why}"})
            continue
        functions.append({"name": shown, "address": hex(f.address), "size": f.size,
                          **({"ifunc": True} if f.ifunc else {})})
    sizes = {f.address: f.size for f in fns}
    bias = base - image.first_vaddr
    exported = {}
    for e in image.exports:
        exported.setdefault(e.name, bias + e.value)
    roles = [{"name": n, "address": hex(exported[n]), "size": sizes.get(exported[n], 0), "role": role}
             for n, role in rules.roles if n in exported]
    return ModulePlan(name, path, base, image.span, functions, skipped, roles, starts)


# ---- a process --------------------------------------------------------------
def mapped_modules(pid: int) -> list[tuple[str, int]]:
    """(path as maps shows it, load base) of each file mapped from its
    offset 0 with code mapped above it, in address order."""
    heads, code = [], []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5].rstrip("\n")
            lo = int(parts[0].split("-")[0], 16)
            if int(parts[2], 16) == 0:
                heads.append((lo, path))
            if parts[1][2] == "x":
                code.append((lo, path))
    out, seen = [], set()
    for lo, path in code:
        below = [h for h, p in heads if p == path and h <= lo]
        if below and (path, max(below)) not in seen:
            seen.add((path, max(below)))
            out.append((path, max(below)))
    return out


def _memory_matches(pid: int, address: int, expected: bytes) -> bool:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.pread(fd, len(expected), address) == expected
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass
class ProcessPlan:
    """The modules planned here, by load base, and why the others were not."""
    modules: dict[int, ModulePlan] = field(default_factory=dict)
    left_to_agent: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: float = 0.0
    # modules whose IFUNCs the agent resolves first: base -> plan_module's arguments
    unresolved: dict[int, tuple] = field(default_factory=dict)

    def given(self) -> dict:
        return {hex(base): m.to_agent() for base, m in self.modules.items()}

    def resolve_requests(self) -> list[dict]:
        """For the agent's init(): the IFUNCs of each module to resolve."""
        return [{"base": hex(base), "name": args[1], "names": global_ifuncs(args[0])}
                for base, args in self.unresolved.items()]

    def finish(self, resolved: dict) -> None:
        """Plan the modules with IFUNCs from init()'s ``resolved`` (base ->
        an address or None per name); a module it lacks is left to the agent."""
        for base, args in self.unresolved.items():
            addresses = resolved.get(hex(base))
            if addresses is None:
                self.left_to_agent[args[2]] = "its IFUNCs were not resolved in the target"
                continue
            names = global_ifuncs(args[0])
            impl = {n: (int(a, 16) if a else None) for n, a in zip(names, addresses)}
            try:
                plan = plan_module(*args, resolved=impl)
            except NotPlannable as exc:
                self.left_to_agent[args[2]] = str(exc)
                continue
            if plan is not None:
                self.modules[base] = plan
        self.unresolved = {}


def plan_process(pid: int, selection: Selection, rules: AgentRules, agent_lib: str) -> ProcessPlan:
    t0 = time.monotonic()
    out = ProcessPlan()
    sel = {"include": compile_patterns(selection.include),
           "exclude": compile_patterns(selection.exclude),
           "includeModules": [Pattern(g, None, glob_to_regex(g)) for g in selection.include_modules],
           "excludeModules": [Pattern(g, None, glob_to_regex(g)) for g in selection.exclude_modules]}
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    for path, base in mapped_modules(pid):
        name = os.path.basename(path)
        if not path.startswith("/") or rules.module_excluded(name, path, agent_lib):
            continue
        try:
            if path.endswith(" (deleted)"):
                raise NotPlannable("its file was deleted or replaced")
            image = read_elf(path)
            if not _memory_matches(pid, base - image.first_vaddr + image.build_id_vaddr,
                                   image.build_id):
                raise NotPlannable("the build-id in memory is not the file's")
            plan = plan_module(image, name, path, base, path == exe, sel, rules)
        except NeedsLoader:
            out.unresolved[base] = (image, name, path, base, path == exe, sel, rules)
            continue
        except NotPlannable as exc:
            out.left_to_agent[path] = str(exc)
            continue
        if plan is not None:
            out.modules[base] = plan
    out.seconds = time.monotonic() - t0
    return out


class PlanAhead:
    """plan_process in a thread, started before Frida attaches; ``result()``
    is None when it failed (the agent then plans everything)."""

    def __init__(self, pid: int, selection: Selection, agent_source: str, agent_lib: str):
        self._plan: ProcessPlan | None = None
        self._args = (pid, selection, agent_source, agent_lib)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"plan-ahead-{pid}")
        self._thread.start()

    def _run(self) -> None:
        pid, selection, source, agent_lib = self._args
        try:
            self._plan = plan_process(pid, selection, AgentRules.from_agent_source(source), agent_lib)
        except Exception as exc:  # only a head start: the agent plans what is missing
            log.info("pid %d: plan ahead stopped: %s", pid, exc)

    def result(self) -> ProcessPlan | None:
        self._thread.join()
        return self._plan
