"""DWARF source locations of functions: name -> (file, line), and address ->
(file, line), read with pyelftools.

The injector calls these at hook time to fill SymbolDefinition.source_file /
source_line. Binaries without debug info (stripped, or system libraries) give
{} / None, not an error; a separate debug file found by build id or
.gnu_debuglink under /usr/lib/debug is used when the binary itself has none.
Addresses are the binary's link-time virtual addresses: subtract the module's
load bias from a runtime address first (for a PIE, runtime - module base).
Results are cached per (path, mtime, size).
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import os

from elftools.common.exceptions import ELFError, DWARFError
from elftools.elf.elffile import ELFFile

DEBUG_ROOT = "/usr/lib/debug"


class DwarfError(Exception):
    """A binary that cannot be read (missing, not ELF, corrupt DWARF)."""


def source_locations(binary_path: str) -> dict[str, tuple[str, int]]:
    """Function name -> (source file, declaration line) for every function
    defined in ``binary_path``'s DWARF, keyed by its DWARF name and, for C++,
    also by its mangled linkage name and its qualified name (``ns::Cls::fn``).
    {} if there is no debug info."""
    return dict(_info(binary_path).functions)


def lookup(binary_path: str, address_or_name: int | str) -> tuple[str, int] | None:
    """(file, line) of a function name, or of the line-table row that covers a
    link-time address; None when unknown."""
    info = _info(binary_path)
    if isinstance(address_or_name, str):
        return info.functions.get(address_or_name)
    if isinstance(address_or_name, bool) or not isinstance(address_or_name, int):
        raise TypeError(f"address_or_name must be int or str, not {type(address_or_name).__name__}")
    return info.line_at(address_or_name)


def _info(binary_path: str) -> "_DebugInfo":
    try:
        st = os.stat(binary_path)
    except OSError as exc:
        raise DwarfError(f"cannot read {binary_path}: {exc.strerror}") from None
    return _load(os.path.realpath(binary_path), st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def _reading(path: str):
    """pyelftools reports bad input with assorted exceptions: one type out."""
    try:
        yield
    except ELFError as exc:
        raise DwarfError(f"{path} is not a readable ELF file: {exc}") from None
    except (DWARFError, ValueError, KeyError, IndexError, AssertionError) as exc:
        raise DwarfError(f"{path}: cannot parse DWARF: {exc!r}") from None
    except OSError as exc:
        raise DwarfError(f"cannot read {path}: {exc.strerror}") from None


@functools.lru_cache(maxsize=64)
def _load(path: str, _mtime_ns: int, _size: int) -> "_DebugInfo":
    with _reading(path), open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info(strict=True):
            debug_file = _separate_debug_file(elf, path)
            if debug_file is None:
                return _DebugInfo(None)
            with open(debug_file, "rb") as g:
                return _DebugInfo(ELFFile(g), debug_file)
        return _DebugInfo(elf, path)


def _separate_debug_file(elf: ELFFile, path: str) -> str | None:
    note = elf.get_section_by_name(".note.gnu.build-id")
    if note is not None:
        for n in note.iter_notes():
            if n["n_type"] == "NT_GNU_BUILD_ID":
                build_id = n["n_desc"]
                candidate = os.path.join(DEBUG_ROOT, ".build-id", build_id[:2], build_id[2:] + ".debug")
                if os.path.isfile(candidate):
                    return candidate
    link = elf.get_section_by_name(".gnu_debuglink")
    if link is not None:
        name = link.data().split(b"\0", 1)[0].decode(errors="replace")
        here = os.path.dirname(path)
        for candidate in (os.path.join(here, name), os.path.join(here, ".debug", name),
                          os.path.join(DEBUG_ROOT, here.lstrip("/"), name)):
            if candidate != path and os.path.isfile(candidate):
                return candidate
    return None


class _DebugInfo:
    """What one binary's DWARF says: function locations (read eagerly) and
    the address -> line table (read on the first address lookup, since only
    address lookups need it and it is the bulk of the work)."""

    # Functions live at CU level or inside these scopes (C++ namespaces and
    # classes); everything else (types, variables, function bodies) is skipped
    # without being walked.
    _SCOPES = frozenset(("DW_TAG_namespace", "DW_TAG_class_type", "DW_TAG_structure_type",
                         "DW_TAG_union_type", "DW_TAG_module"))

    def __init__(self, elf: ELFFile | None, path: str | None = None):
        self.functions: dict[str, tuple[str, int]] = {}
        self._path = path
        self._addresses: list[int] | None = None
        self._rows: list[tuple[str, int] | None] = []
        if elf is None:
            self._addresses = []
            return
        dwarf = elf.get_dwarf_info()
        defined: set[str] = set()
        for cu in dwarf.iter_CUs():
            files, version = self._file_table(dwarf, cu)
            for die in self._subprograms(cu.get_top_DIE()):
                self._add_function(die, files, version, defined)

    def _subprograms(self, scope):
        for die in scope.iter_children():
            if die.tag == "DW_TAG_subprogram":
                yield die
            elif die.tag in self._SCOPES:
                yield from self._subprograms(die)

    @staticmethod
    def _file_table(dwarf, cu) -> tuple[list[str], int]:
        top = cu.get_top_DIE()
        comp_dir_attr = top.attributes.get("DW_AT_comp_dir")
        comp_dir = comp_dir_attr.value.decode(errors="replace") if comp_dir_attr else ""
        lineprog = dwarf.line_program_for_CU(cu)
        if lineprog is None:
            return [], cu["version"]
        header = lineprog.header
        version = header["version"]
        dirs = [d.decode(errors="replace") if isinstance(d, bytes) else str(d)
                for d in header["include_directory"]]
        files = []
        for entry in header["file_entry"]:
            name = entry.name.decode(errors="replace") if isinstance(entry.name, bytes) else str(entry.name)
            index = entry.dir_index
            if version >= 5:
                directory = dirs[index] if index < len(dirs) else ""
            else:
                directory = dirs[index - 1] if 0 < index <= len(dirs) else comp_dir
            path = os.path.join(directory, name)
            if not os.path.isabs(path) and comp_dir:
                path = os.path.join(comp_dir, path)
            files.append(os.path.normpath(path))
        return files, version

    @staticmethod
    def _file(files: list[str], version: int, index: int) -> str:
        # DWARF 5 numbers files from 0, earlier versions from 1.
        i = index if version >= 5 else index - 1
        return files[i] if 0 <= i < len(files) else ""

    def _add_function(self, die, files, version, defined: set[str]) -> None:
        attrs = die.attributes
        if "DW_AT_declaration" in attrs:
            return
        is_definition = "DW_AT_low_pc" in attrs or "DW_AT_ranges" in attrs
        names: list[str] = []
        file_name, line = "", 0
        source, hops = die, 0
        while source is not None and hops < 3:
            a = source.attributes
            for key in ("DW_AT_name", "DW_AT_linkage_name", "DW_AT_MIPS_linkage_name"):
                if key in a:
                    value = a[key].value
                    names.append(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
            # An out-of-line definition often carries only the line that
            # differs from its declaration's: take each attribute from the
            # nearest DIE that has it.
            if not file_name and "DW_AT_decl_file" in a:
                if source.cu is die.cu:
                    file_name = self._file(files, version, a["DW_AT_decl_file"].value)
                else:
                    other_files, other_version = self._file_table(source.dwarfinfo, source.cu)
                    file_name = self._file(other_files, other_version, a["DW_AT_decl_file"].value)
            if not line and "DW_AT_decl_line" in a:
                line = a["DW_AT_decl_line"].value
            ref = next((k for k in ("DW_AT_specification", "DW_AT_abstract_origin") if k in a), None)
            source = source.get_DIE_from_attribute(ref) if ref else None
            hops += 1
        if not file_name:
            return
        qualified = self._qualified_name(die)
        if qualified:
            names.append(qualified)
        for name in names:
            # Prefer a DIE with code over an abstract (inline-only) one.
            if name not in self.functions or (is_definition and name not in defined):
                self.functions[name] = (file_name, line)
                if is_definition:
                    defined.add(name)

    def _qualified_name(self, die) -> str:
        """``ns::Class::method`` for a C++ function (how demanglers and
        debuggers name it, minus the parameters); "" outside any scope."""
        for key in ("DW_AT_specification", "DW_AT_abstract_origin"):
            if key in die.attributes:
                die = die.get_DIE_from_attribute(key)
                break
        name = die.attributes.get("DW_AT_name")
        if name is None:
            return ""
        parts = [name.value.decode(errors="replace")]
        parent = die.get_parent()
        while parent is not None and parent.tag in self._SCOPES:
            scope = parent.attributes.get("DW_AT_name")
            parts.append(scope.value.decode(errors="replace") if scope else "(anonymous namespace)")
            parent = parent.get_parent()
        return "::".join(reversed(parts)) if len(parts) > 1 else ""

    def _line_rows(self, dwarf, cu, files, version):
        lineprog = dwarf.line_program_for_CU(cu)
        if lineprog is None:
            return []
        out = []
        for entry in lineprog.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                out.append((state.address, None))
            else:
                out.append((state.address, (self._file(files, version, state.file), state.line)))
        return out

    def _load_lines(self) -> None:
        rows: list[tuple[int, tuple[str, int] | None]] = []
        with _reading(self._path), open(self._path, "rb") as f:
            dwarf = ELFFile(f).get_dwarf_info()
            for cu in dwarf.iter_CUs():
                files, version = self._file_table(dwarf, cu)
                rows.extend(self._line_rows(dwarf, cu, files, version))
        # A sequence may start where another ends: the row must win the tie
        # against the end marker, so it sorts after it.
        rows.sort(key=lambda r: (r[0], r[1] is not None))
        self._addresses = [a for a, _ in rows]
        self._rows = [r for _, r in rows]

    def line_at(self, address: int) -> tuple[str, int] | None:
        if self._addresses is None:
            self._load_lines()
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0:
            return None
        return self._rows[i]
