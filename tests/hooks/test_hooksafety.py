"""Hook safety: which entries may be patched, decided from a live process'
code (tests/hooks/shapes.S has one function per shape), and the relocated
bytes checked by decoding them again."""
import os
import subprocess
import time

import capstone
import pytest

from lanetrace.injector import hooksafety as hs

HERE = os.path.dirname(os.path.abspath(__file__))
MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def disasm(code: bytes, address: int) -> list[tuple[str, str]]:
    return [(i.mnemonic, i.op_str) for i in MD.disasm(code, address)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("shapes") / "shapes")
    subprocess.run(["gcc", "-nostartfiles", "-no-pie", "-e", "main", "-o", exe,
                    os.path.join(HERE, "shapes.S")], check=True)
    proc = subprocess.Popen([exe])
    try:
        for _ in range(200):  # until it sits in pause()
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().split(") ")[1].startswith("S"):
                    break
            time.sleep(0.01)
        nm = subprocess.run(["nm", "-S", exe], capture_output=True, text=True, check=True).stdout
        functions, fid = [], 1
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "Tt":
                functions.append({"id": fid, "name": parts[3], "module": "shapes", "modulePath": exe,
                                  "address": hex(int(parts[0], 16)), "size": int(parts[1], 16)})
                fid += 1
        with hs.ProcessMemory(proc.pid) as mem:
            plan = hs.ModulePlan("shapes", 0x400000, 0x3000,
                                 [int(f["address"], 16) for f in functions], 0x500000, len(functions))
            scanner = hs.BranchScanner()
            try:
                verdicts = hs.decide_module(mem, scanner, plan, functions)
            finally:
                scanner.close()
        yield {f["name"]: (f, verdicts[f["id"]]) for f in functions}
    finally:
        proc.kill()
        proc.wait()


def test_decide__plain_function_after_endbr64__then_fast_patch_after_the_endbr(shapes):
    f, v = shapes["fast_plain"]
    assert v.kind == "fast"
    assert v.patch_off == 4 and v.patch_len >= 5
    addr = int(f["address"], 16)
    code = disasm(v.code, v.slot + hs.STUB_BYTES)
    assert code[-1] == ("jmp", hex(addr + 4 + v.patch_len))  # back behind the moved bytes


def test_decide__loop_jumps_back_to_first_instruction__then_skipped_branch_into_patch(shapes):
    assert (shapes["loop_to_entry"][1].kind, shapes["loop_to_entry"][1].reason) == ("skip", hs.BRANCH_INTO_PATCH)


def test_decide__loop_lands_inside_5_bytes_with_padding_before__then_short_patch_via_the_padding(shapes):
    f, v = shapes["branch_into_patch"]
    addr = int(f["address"], 16)
    assert v.kind == "fast"
    assert v.patch_len == 2  # xor eax, eax: the loop's target at +2 stays untouched
    assert addr - 128 < v.tramp <= addr - hs.PATCH_LEN
    assert set(v.tramp_expect) <= {0x90, 0x66, 0x0f, 0x1f, 0x00, 0x84, 0x40, 0x44, 0x80, 0x2e}  # nops
    assert disasm(v.code, v.slot + hs.STUB_BYTES) == [("xor", "eax, eax"), ("jmp", hex(addr + 2))]


def test_decide__loop_lands_inside_patched_bytes_and_no_padding_before__then_skipped_branch_into_patch(shapes):
    v = shapes["packed_branch_into_patch"][1]
    assert (v.kind, v.reason) == ("skip", hs.BRANCH_INTO_PATCH)


def test_decide__single_ret_followed_by_padding__then_fast_without_jump_back(shapes):
    f, v = shapes["ret_then_padding"]
    assert v.kind == "fast"
    assert disasm(v.code, 0) == [("ret", "")]


def test_decide__single_ret_followed_by_code__then_skipped_too_short(shapes):
    assert (shapes["ret_then_code"][1].kind, shapes["ret_then_code"][1].reason) == ("skip", hs.TOO_SHORT)


def test_decide__call_in_patched_bytes__then_callee_returns_into_the_function_itself(shapes):
    f, v = shapes["calls_first"]
    target = int(shapes["fast_plain"][0]["address"], 16)
    assert v.kind == "fast"
    addr = int(f["address"], 16)
    code = disasm(v.code, v.slot + hs.STUB_BYTES)
    ret_to = addr + 4 + 5  # sub rsp, 8 (4 bytes), then the 5-byte call
    assert code[0] == ("sub", "rsp, 8")
    assert code[1] == ("lea", "rsp, [rsp - 8]")
    assert code[2] == ("mov", f"dword ptr [rsp], {hex(ret_to & 0xffffffff)}")
    assert code[-1] == ("jmp", hex(target))


def test_decide__unmovable_first_instructions__then_fallback_unrelocatable(shapes):
    assert (shapes["jrcxz_first"][1].kind, shapes["jrcxz_first"][1].reason) == ("fallback", hs.UNRELOCATABLE)


def test_decide__more_functions_than_slots__then_fallback_no_memory_near(shapes):
    f, _ = shapes["fast_plain"]
    exe = f["modulePath"]
    proc = subprocess.Popen([exe])
    try:
        time.sleep(0.2)
        with hs.ProcessMemory(proc.pid) as mem:
            scanner = hs.BranchScanner()
            try:
                plan = hs.ModulePlan("shapes", 0x400000, 0x3000, [int(f["address"], 16)], 0, 0)
                v = hs.decide_module(mem, scanner, plan, [f])[f["id"]]
            finally:
                scanner.close()
    finally:
        proc.kill()
        proc.wait()
    assert (v.kind, v.reason) == ("fallback", hs.NO_MEMORY_NEAR)


def test_relocate__rip_relative_load__then_same_absolute_target_from_the_slot():
    # mov rax, [rip + 0x100] at 0x1000 reads 0x1107
    code = bytes.fromhex("488b0500010000") + b"\x90" * 4
    out, covered = hs.relocate(code, 0x1000, 0x9000)
    insn = next(MD.disasm(out, 0x9000))
    assert covered == 7
    assert insn.op_str == f"rax, qword ptr [rip - {hex(0x9007 - 0x1107)}]"


def test_relocate__short_conditional_branch__then_rel32_form_with_the_same_target():
    code = bytes.fromhex("85ff7410") + b"\x48\x89\xf8"  # test edi, edi; je +0x10; mov rax, rdi
    out, covered = hs.relocate(code, 0x2000, 0x8000)
    assert disasm(out, 0x8000)[1] == ("je", hex(0x2004 + 0x10))
    assert covered == 7


def test_relocate__target_beyond_rel32_reach__then_unrelocatable():
    code = bytes.fromhex("488b0500010000")
    assert hs.relocate(code, 0x1000, 0x7f0000000000) == hs.UNRELOCATABLE


def test_relocate__indirect_call_through_rip__then_return_address_pushed_and_jump_through_the_same_slot():
    code = bytes.fromhex("ff1500100000") + b"\x90" * 4  # call [rip + 0x1000] at 0x3000
    out, covered = hs.relocate(code, 0x3000, 0x8000)
    insns = disasm(out, 0x8000)
    assert covered == 6 and len(insns) == 4  # lea, two movs of the return address, jmp
    assert insns[1][1] == "dword ptr [rsp], 0x3006" and insns[2][1] == "dword ptr [rsp + 4], 0"
    jmp = list(MD.disasm(out, 0x8000))[3]
    disp = int.from_bytes(jmp.bytes[2:6], "little", signed=True)  # ff 25 disp32
    assert jmp.bytes[:2] == b"\xff\x25" and jmp.address + jmp.size + disp == 0x3006 + 0x1000


def test_relocate__jrcxz_or_xbegin_at_entry__then_unrelocatable():
    assert hs.relocate(bytes.fromhex("e310") + b"\x90" * 8, 0x1000, 0x8000) == hs.UNRELOCATABLE
    assert hs.relocate(bytes.fromhex("c7f810000000") + b"\x90" * 4, 0x1000, 0x8000) == hs.UNRELOCATABLE


def test_relocate__ud2_before_five_bytes__then_too_short():
    assert hs.relocate(bytes.fromhex("0f0b") + b"\x90" * 8, 0x1000, 0x8000) == hs.TOO_SHORT


def test_summarize__skips_and_fallbacks__then_grouped_by_reason_with_every_function_named():
    functions = [{"id": i, "module": "m", "name": f"f{i}"} for i in (1, 2, 3, 4)]
    verdicts = {1: hs.Verdict("fast"), 2: hs.Verdict("skip", hs.TOO_SHORT),
                3: hs.Verdict("fallback", hs.UNRELOCATABLE), 4: hs.Verdict("skip", hs.TOO_SHORT)}
    out = hs.summarize(functions, verdicts, {"replaced": 1, "attached": 1, "failed": []},
                       [{"name": "m!g", "reason": "excluded by -x g"}])
    assert (out["fast"], out["fallback"], out["skipped"]) == (1, 1, 3)
    assert out["skippedByReason"] == {hs.TOO_SHORT: 2, "excluded": 1}
    assert out["fallbackByReason"] == {hs.UNRELOCATABLE: 1}
    assert {s["name"] for s in out["skippedFunctions"]} == {"m!f2", "m!f4", "m!g"}


def test_decide__entry_already_hooked_by_another_frida_session__then_skipped_already_patched():
    import frida
    from conftest import example
    exe = example("sleeper")
    proc = subprocess.Popen([exe, "30"], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert "pid" in proc.stdout.readline()
        session = frida.attach(proc.pid)
        script = session.create_script("""
            const m = Process.getModuleByName('sleeper');
            const f = m.findExportByName('heartbeat_tick') || m.findSymbolByName('heartbeat_tick');
            Interceptor.attach(f, { onEnter() {} });
            Interceptor.flush();
            rpc.exports = { info: () => ({ base: m.base.toString(), size: m.size, f: f.toString() }) };""")
        script.load()
        info = script.exports_sync.info()
        f = {"id": 1, "name": "heartbeat_tick", "module": "sleeper", "modulePath": exe,
             "address": info["f"], "size": 32}
        with hs.ProcessMemory(proc.pid) as mem:
            scanner = hs.BranchScanner()
            try:
                plan = hs.ModulePlan("sleeper", int(info["base"], 16), info["size"],
                                     [int(info["f"], 16)], int(info["base"], 16) - (1 << 20), 1)
                v = hs.decide_module(mem, scanner, plan, [f])[1]
            finally:
                scanner.close()
    finally:
        if session is not None:
            session.detach()
        proc.kill()
        proc.wait()
    assert (v.kind, v.reason) == ("skip", hs.ALREADY_PATCHED)


def test_branch_cache__large_range_swept_twice_and_cache_file_corrupted__then_same_branches_each_time(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hs, "_BRANCH_CACHE", {})
    with open("/usr/bin/python3.11", "rb") as f:  # any code-like bytes over the size limit
        code = f.read()[:2 * hs._BRANCH_CACHE_MIN_BYTES]
    base, starts = 0x7f0000000000, [0x7f0000000000 + o for o in range(0, len(code), 4096)]
    scanner = hs.BranchScanner()
    try:
        direct = hs._by_target(*scanner.branches(code, base, starts))  # the cache keeps this order
        assert len(direct[0]) > 1000
        first = hs._cached_branches(scanner, code, base, starts)
        [cached] = os.listdir(hs.branch_cache_dir())
        hs._BRANCH_CACHE.clear()
        from_disk = hs._cached_branches(scanner, code, base + 4096, [s + 4096 for s in starts])
        with open(os.path.join(hs.branch_cache_dir(), cached), "wb") as f:
            f.write(b"not a cache file")
        hs._BRANCH_CACHE.clear()
        after_corruption = hs._cached_branches(scanner, code, base, starts)
    finally:
        scanner.close()
    for a, b in zip(direct, first):
        assert (a == b).all()
    assert (from_disk[0] == direct[0] + 4096).all() and (from_disk[1] == direct[1] + 4096).all()
    for a, b in zip(direct, after_corruption):
        assert (a == b).all()
