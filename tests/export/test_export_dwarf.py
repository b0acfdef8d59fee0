import json
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from .atf_builder import TraceBuilder

from lanetrace.export import dwarf, export_trace

SOURCE = """\
#include <stdio.h>

static int helper(int x)
{
    return x * 2;
}

int compute_answer(int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += helper(i);
    return s;
}

int main(void)
{
    printf("%d\\n", compute_answer(10));
    return 0;
}
"""
LINES = {"helper": 3, "compute_answer": 8, "main": 16}

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def build(tmp_path, *flags, name="prog"):
    src = tmp_path / "prog.c"
    src.write_text(SOURCE)
    exe = tmp_path / name
    subprocess.run(["gcc", "-O0", *flags, "-o", str(exe), str(src)], check=True)
    return src, exe


def symbol_address(exe, name):
    with open(exe, "rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return sym["st_value"]


@needs_gcc
@pytest.mark.parametrize("flag", ["-gdwarf-5", "-gdwarf-4"])
def test_dwarf_source_locations__binary_built_with_g__then_file_and_line_of_functions(tmp_path, flag):
    src, exe = build(tmp_path, flag)
    locations = dwarf.source_locations(str(exe))
    for name, line in LINES.items():
        assert locations[name] == (str(src), line)


@needs_gcc
def test_dwarf_lookup__name_and_address__then_same_file(tmp_path):
    src, exe = build(tmp_path, "-g")
    assert dwarf.lookup(str(exe), "compute_answer") == (str(src), 8)
    file_name, line = dwarf.lookup(str(exe), symbol_address(exe, "compute_answer"))
    assert file_name == str(src) and 8 <= line < 16
    assert dwarf.lookup(str(exe), "no_such_function") is None
    assert dwarf.lookup(str(exe), 0) is None


@needs_gcc
def test_dwarf_source_locations__stripped_binary__then_empty_without_error(tmp_path):
    _, exe = build(tmp_path, "-g")
    subprocess.run(["strip", str(exe)], check=True)
    assert dwarf.source_locations(str(exe)) == {}
    assert dwarf.lookup(str(exe), "main") is None


@needs_gcc
def test_dwarf_source_locations__debug_info_in_debuglink_file__then_found(tmp_path):
    src, exe = build(tmp_path, "-g")
    debug = tmp_path / "prog.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-debug", f"--add-gnu-debuglink={debug}", str(exe)],
                   check=True)
    with open(exe, "rb") as f:
        assert not ELFFile(f).has_dwarf_info(strict=True)
    assert dwarf.source_locations(str(exe))["main"] == (str(src), 16)


def test_dwarf_source_locations__not_elf_or_missing__then_dwarf_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(dwarf.DwarfError, match="not a readable ELF file"):
        dwarf.source_locations(str(text))
    with pytest.raises(dwarf.DwarfError, match="cannot read"):
        dwarf.source_locations(str(tmp_path / "missing"))


@needs_gcc
def test_dwarf_to_export__definitions_carry_dwarf_location__then_chrome_shows_file_line(tmp_path):
    """The injector's path: DWARF at hook time -> SymbolDefinition -> export."""
    src, exe = build(tmp_path, "-g")
    locations = dwarf.source_locations(str(exe))
    b = TraceBuilder(tmp_path / "t", executable=str(exe))
    b.start(0)
    b.call(1, 10, "main", module="prog", source=locations["main"])
    b.call(1, 20, "compute_answer", module="prog", source=locations["compute_answer"])
    b.ret(1, 30, "compute_answer").ret(1, 40, "main")
    out = tmp_path / "run.json"
    export_trace(b.close(), "chrome", str(out))
    sources = {e["name"]: e["args"]["source"] for e in json.loads(out.read_text())["traceEvents"]
               if e["ph"] == "X"}
    assert sources == {"main": f"{src}:16", "compute_answer": f"{src}:8"}


CPP_SOURCE = """\
namespace geo {
struct Shape {
    int area(int w) const;
};

int Shape::area(int w) const
{
    return w * w;
}
}

int main()
{
    geo::Shape s;
    return s.area(3) == 9 ? 0 : 1;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_dwarf_source_locations__cpp_member_function__then_plain_and_mangled_names(tmp_path):
    src = tmp_path / "shape.cc"
    src.write_text(CPP_SOURCE)
    exe = tmp_path / "shape"
    subprocess.run(["g++", "-g", "-O0", "-o", str(exe), str(src)], check=True)
    locations = dwarf.source_locations(str(exe))
    # The out-of-line definition (line 6, the code Frida hooks) wins over the
    # declaration in the class (line 3) it refers to by DW_AT_specification.
    assert locations["_ZNK3geo5Shape4areaEi"] == (str(src), 6)
    assert locations["area"] == (str(src), 6)
    assert locations["geo::Shape::area"] == (str(src), 6)
    assert locations["main"] == (str(src), 12)
