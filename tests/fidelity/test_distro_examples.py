"""The example programs built as distributions build (examples/src/distro_*):
clones, sibling calls, CET entries, hand-written shapes, longjmp, C++
exceptions and AVX vector arguments on a thread's first call. Traced with the
default selection (every function of the executable), each must print and exit as untraced, close every call, match
callgrind's count for every function the trace reports, and report what it
did not hook."""
import os
import re
import subprocess

import pytest

from conftest import example
from fidelity import callgrind
from fidelity.fidelity import (calls_by_function, compare_with_callgrind, describe_difference,
                               hook_report_problems, load_trace, lost_records, once, run_pair,
                               shared_dir, skipped_functions, unbalanced)

pytestmark = pytest.mark.frida

# program -> frames left by longjmp or a throw in its default run
UNWOUND = {"distro_clones": 0, "distro_shapes": 0, "distro_longjmp": 60, "distro_throw": 20,
           "distro_vector": 0}
# crt code that runs before main, possibly before the hooks are in
CRT = frozenset({"_start", "_init", "_fini", "frame_dummy", "register_tm_clones",
                 "deregister_tm_clones", "__do_global_dtors_aux"})


def _symbols(path: str) -> dict[str, int]:
    return callgrind.symbol_offsets(path)


def _disassembly(path: str, symbol: str) -> list[tuple[int, str]]:
    """(address, instruction text) of one function."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={symbol}", path],
                         capture_output=True, text=True, check=True).stdout
    return [(int(m.group(1), 16), m.group(2).strip())
            for m in re.finditer(r"^\s+([0-9a-f]+):\s+(.+)$", out, re.M)]


def test_distro_examples__built__then_they_contain_the_shapes_they_claim():
    clones = example("distro_clones")
    names = set(_symbols(clones))
    for kind in (".constprop.", ".isra.", ".part.", ".cold"):
        assert any(kind in n for n in names), f"gcc emitted no {kind} clone: {sorted(names)}"
    # sibling calls: step_a ends in a jmp to step_b; via_ptr in jmp *reg
    assert any(re.match(r"jmp\s+[0-9a-f]+ <step_b>", i) for _, i in _disassembly(clones, "step_a"))
    assert any(re.match(r"jmp\s+\*%r", i) for _, i in _disassembly(clones, "via_ptr"))
    # -fcf-protection: CET entries
    assert _disassembly(clones, "main")[0][1] == "endbr64"
    assert any(n.endswith(".cold") and "thrower" in n for n in _symbols(example("distro_throw")))

    shapes = example("distro_shapes")
    offsets = _symbols(shapes)
    loop = _disassembly(shapes, "loop_to_entry")
    assert any(re.match(rf"jne\s+{offsets['loop_to_entry']:x} <loop_to_entry>", i)
               for _, i in loop), loop
    assert [i for _, i in _disassembly(shapes, "ret_only")] == ["ret"]
    assert len(_disassembly(shapes, "jmp_only")) == 1
    # tail_first jumps into tail_shared's first bytes
    target = offsets["tail_shared"] + 3
    assert any(re.match(rf"jmp\s+{target:x} <tail_shared\+0x3>", i)
               for _, i in _disassembly(shapes, "tail_first"))


def _pair(tmp_path_factory, program: str) -> dict:
    path = example(program)
    return once(shared_dir(tmp_path_factory, f"example-{program}"),
                lambda d: run_pair(d, [path], [], cwd=d))


def _callgrind(tmp_path_factory, program: str) -> dict:
    path = example(program)

    def produce(directory):
        out_file = os.path.join(directory, "callgrind.out")
        proc = callgrind.run([path], out_file, cwd=directory)
        assert proc.returncode == 0, proc.stderr[-2000:]
        table = callgrind.symbol_table(path)
        counts = callgrind.entry_counts(out_file, {path: callgrind.extents_of(table)})
        offsets = {name: offset for name, (offset, _) in table.items()}
        return {"offsets": offsets, "stdout": proc.stdout.decode("latin-1"),
                "calls": {str(o): counts[(path, o)] for o in set(offsets.values())}}
    return once(shared_dir(tmp_path_factory, f"callgrind-{program}"), produce)


@pytest.mark.parametrize("program", list(UNWOUND))
def test_distro_example__traced__then_stdout_and_exit_status_unchanged(tmp_path_factory, program):
    pair = _pair(tmp_path_factory, program)
    assert pair["untraced"]["returncode"] == 0
    assert describe_difference(pair) == []


@pytest.mark.parametrize("program", list(UNWOUND))
def test_distro_example__traced__then_every_call_returns_and_abandoned_frames_are_unwound(
        tmp_path_factory, program):
    trace = load_trace(_pair(tmp_path_factory, program))
    assert lost_records(trace) == []
    assert unbalanced(trace) == []
    assert trace.manifest["unwoundCount"] == UNWOUND[program]
    assert sum(trace.entries.values()) >= 40


@pytest.mark.parametrize("program", list(UNWOUND))
def test_distro_example__traced__then_every_traced_function_count_equals_callgrind(
        tmp_path_factory, program):
    pair = _pair(tmp_path_factory, program)
    truth = _callgrind(tmp_path_factory, program)
    assert truth["stdout"] == pair["untraced"]["stdout"]
    trace = load_trace(pair)
    traced = calls_by_function(trace)
    assert sum(traced.values()) > 0, "nothing traced"
    assert compare_with_callgrind(traced, truth["offsets"],
                                  {int(k): v for k, v in truth["calls"].items()},
                                  skipped_functions(trace.manifest), not_required=CRT) == []


@pytest.mark.parametrize("program", list(UNWOUND))
def test_distro_example__traced__then_cold_parts_are_skipped_and_every_shape_is_reported(
        tmp_path_factory, program):
    trace = load_trace(_pair(tmp_path_factory, program))
    assert hook_report_problems(trace.manifest) == []
    skipped = skipped_functions(trace.manifest)
    traced = calls_by_function(trace)
    names = _symbols(example(program))
    cold = sorted(n for n in names if n.endswith(".cold") or ".cold." in n)
    assert [n for n in cold if n in traced] == [], "a .cold part was hooked as a function"
    assert {n: skipped.get(n) for n in cold} == {n: "cold-part" for n in cold}
    if program == "distro_shapes":
        # each is called 40 times: it is in the trace, or skipped with a reason
        for name in ("loop_to_entry", "ret_only", "jmp_only", "tail_first", "tail_shared",
                     "enter_by_jump", "jump_entered"):
            assert name in traced or name in skipped, f"{name} neither traced nor reported"
