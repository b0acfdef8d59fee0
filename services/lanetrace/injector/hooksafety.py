"""Hook safety: before anything is patched, decide for each selected function
how it may be hooked, and build the relocated copy of the bytes the patch
overwrites.

Our patch is a 5-byte ``jmp rel32`` (after a leading ``endbr64``) into a
per-function slot that the agent allocates within ±2 GiB of the module. The
slot holds the stub that enters the hook, then the overwritten instructions,
relocated, and a jump back. A function is patched only when that is safe, as
uftrace's dynamic patching decides it (libmcount/dynamic.c,
arch/x86_64/mcount-insn.c):

- ``cold-part``: a ``.cold`` split-off part is reached by a jump from the
  middle of its parent, it is not a function entry;
- ``unknown-size`` / ``too-short``: the patch must fit inside the function
  and must not cover its end (a ``ret`` or a jump out);
- ``shared-code``: no other function may start inside the patched bytes;
- ``branch-into-patch``: no direct branch anywhere in the module may land
  inside the patched bytes, and no jump from the function itself may land on
  its patched entry (a loop back to the first instruction would re-enter the
  hook on every iteration);
- ``unrelocatable``: each overwritten instruction must be movable: relative
  calls (their return address would point into the slot, where no unwind
  information is), ``loop``/``jrcxz``/``xbegin`` and RIP-relative operands
  whose target is out of reach from the slot are not. Such functions take
  Frida's own ``Interceptor.attach`` path instead (the fallback), which
  relocates with its own relocator.

Indirect jumps (jump tables) cannot be seen statically and are not checked,
as in uftrace.

Code bytes are read from the target's memory (``/proc/PID/mem``), so what is
analysed is what runs, whatever the file on disk says.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import os
import struct
import threading
import zipfile
from dataclasses import dataclass

import capstone
import numpy as np
from capstone import x86_const as X

from lanetrace import _native
from lanetrace._native import ffi, lib

log = logging.getLogger("lanetrace.injector.hooksafety")

PATCH_LEN = 5           # jmp rel32
SHORT_PATCH_LEN = 2     # jmp rel8 to a jmp rel32 in the padding before the function
SLOT_BYTES = 96         # per function: stub, then relocated code
STUB_BYTES = 32         # agent.c lt_write_stub
ENDBR64 = b"\xf3\x0f\x1e\xfa"

# Reason codes (stable: trace.json and the run summary group by them).
COLD_PART = "cold-part"
UNKNOWN_SIZE = "unknown-size"
TOO_SHORT = "too-short"
SHARED_CODE = "shared-code"
BRANCH_INTO_PATCH = "branch-into-patch"
UNRELOCATABLE = "unrelocatable"
NO_MEMORY_NEAR = "no-memory-near"
NOT_EXECUTABLE = "not-executable"
UNREADABLE = "unreadable"
ALREADY_PATCHED = "already-patched"
BUSY = "busy"


# padding checks only: ids and bytes, no details
_MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CAPSTONE_LIB = os.path.join(os.path.dirname(capstone.__file__), "lib", "libcapstone.so")


@dataclass
class Verdict:
    kind: str                 # "fast" | "fallback" | "skip"
    reason: str = ""
    patch_off: int = 0        # 4 after an endbr64, else 0
    patch_len: int = 0        # bytes of whole instructions moved to the slot (>= 5)
    slot: int = 0
    code: bytes = b""         # relocated instructions + jump back, for slot + STUB_BYTES
    expect: bytes = b""       # the bytes at the patch site that were analysed
    tramp: int = 0            # short form: where the jmp rel32 goes (padding before the function)
    tramp_expect: bytes = b""
    window: tuple[int, int] = (0, 0)  # the r-x mapping the patch lies in, made writable meanwhile


# install.c's record header: fid, role, site, slot, tramp, window lo/hi,
# patch_len, code_len
_RECORD = struct.Struct("<IIQQQQQBB")


def install_request(verdicts: dict[int, Verdict], addresses: dict[int, int],
                    roles: dict[int, int]) -> dict:
    """The agent's ``install()`` argument for ``verdicts``: every verdict's
    kind (and reason), and the fast ones' code as one batch of records that
    native/agent/install.c writes in a single call. ``addresses``: function
    id -> entry; ``roles``: function id -> role, for the role functions."""
    kinds: dict[str, dict] = {}
    fast = []
    for fid, v in verdicts.items():
        if v.kind != "fast":
            kinds[str(fid)] = {"kind": v.kind, "reason": v.reason}
            continue
        kinds[str(fid)] = {"kind": "fast"}
        address, role = addresses[fid], roles.get(fid, 0)
        fast.append((v.window, address, fid, role, v))
    fast.sort(key=lambda r: (r[0], r[1]))  # one writable window per mapping
    records = []
    for (lo, hi), address, fid, role, v in fast:
        if len(v.expect) != v.patch_len or len(v.code) > 255 or (v.tramp and len(v.tramp_expect) != PATCH_LEN):
            raise ValueError(f"function {fid}: inconsistent fast verdict")
        records.append(_RECORD.pack(fid, role, address + v.patch_off, v.slot, v.tramp, lo, hi,
                                    v.patch_len, len(v.code)))
        records.append(v.code + v.expect + (v.tramp_expect if v.tramp else b""))
    return {"verdicts": kinds, "batch": b"".join(records).hex()}


def planned_entries(planned: list[dict]) -> tuple[dict[int, int], dict[int, int]]:
    """(function id -> entry address, function id -> role) of the agent's
    planned functions, as install_request takes them."""
    return ({f["id"]: int(f["address"], 16) for f in planned},
            {f["id"]: int(f["role"]) for f in planned if f.get("role")})


class ProcessMemory:
    """Reads a live process' memory and executable mappings."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        self.exec_ranges = []  # (start, end) of r-x mappings, sorted
        self.anon_exec = []    # (start, end) of executable mappings with no file
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if parts[1][2] == "x" and parts[1][1] != "w":
                    self.exec_ranges.append((lo, hi))
                if parts[1][2] == "x" and (len(parts) < 6 or not parts[5].startswith("/")):
                    self.anon_exec.append((lo, hi))
        self.exec_ranges.sort()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, address: int, size: int) -> bytes:
        try:
            return os.pread(self._fd, size, address)
        except OSError:
            return b""

    def is_anonymous_code(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.anon_exec)

    def exec_range_of(self, address: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.exec_ranges, (address, 1 << 64)) - 1
        if i >= 0 and self.exec_ranges[i][0] <= address < self.exec_ranges[i][1]:
            return self.exec_ranges[i]
        return None


class BranchScanner:
    """Direct branches of a code range, decoded by native/src/hookscan.c."""

    def __init__(self):
        err = ffi.new("char[256]")
        self._s = lib.lt_scan_open(_CAPSTONE_LIB.encode(), err, 256)
        if self._s == ffi.NULL:
            raise RuntimeError(ffi.string(err).decode())

    def close(self) -> None:
        if self._s is not None:
            lib.lt_scan_close(self._s)
            self._s = None

    def branches(self, code: bytes, base: int, starts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        st = np.asarray(sorted(s for s in starts if base <= s < base + len(code)), dtype=np.uint64)
        cap = max(1024, len(code) // 8)  # about one branch per 12-16 bytes of code: one call
        while True:
            src = np.empty(cap, dtype=np.uint64)
            dst = np.empty(cap, dtype=np.uint64)
            kind = np.empty(cap, dtype=np.uint8)
            n = lib.lt_scan_branches(
                self._s, ffi.from_buffer(code), len(code), base,
                ffi.cast("uint64_t *", st.ctypes.data), len(st),
                ffi.cast("uint64_t *", src.ctypes.data), ffi.cast("uint64_t *", dst.ctypes.data),
                ffi.cast("uint8_t *", kind.ctypes.data), cap)
            if n < 0:
                raise RuntimeError("instruction decoder failed")
            if n <= cap:
                return src[:n], dst[:n], kind[:n]
            cap = int(n)


# The sweep of a large module costs seconds on a busy machine; its result
# depends only on the bytes and the function starts, so it is kept, relative
# to the range's base, in memory and under the user's cache directory.
_BRANCH_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_BRANCH_CACHE_MIN_BYTES = 1 << 17  # smaller ranges are swept in milliseconds
BRANCH_CACHE_VERSION = 2  # 2: kept sorted by target


def _decoder_identity() -> str:
    """Changes with every build of the decoder (native/src/hookscan.c)."""
    st = os.stat(_native.__file__)
    return f"{st.st_size}-{st.st_mtime_ns}"


def branch_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lanetrace", "branches")


def _cached_branches(scanner: BranchScanner, code: bytes, base: int, starts: list[int]):
    if len(code) < _BRANCH_CACHE_MIN_BYTES:
        return _by_target(*scanner.branches(code, base, starts))
    rel = np.asarray([s - base for s in starts if base <= s < base + len(code)], dtype=np.uint64)
    h = hashlib.blake2b(code, digest_size=20)
    h.update(rel.tobytes())
    h.update(_decoder_identity().encode())
    key = f"v{BRANCH_CACHE_VERSION}-{h.hexdigest()}"
    hit = _BRANCH_CACHE.get(key)
    path = os.path.join(branch_cache_dir(), key + ".npz")
    if hit is None:
        try:
            with np.load(path) as z:
                hit = (z["src"], z["dst"], z["kind"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            src, dst, kind = _by_target(*scanner.branches(code, base, starts))
            hit = (src - np.uint64(base), dst - np.uint64(base), kind)
            _store(path, hit)
        _BRANCH_CACHE[key] = hit
    src, dst, kind = hit
    return src + np.uint64(base), dst + np.uint64(base), kind


def sweep_ahead(pid: int, ranges: list[tuple[int, int]], starts: list[int]) -> None:
    """Sweeps the code ranges of a module of ``pid`` for branches with
    these function starts and keeps the result in the branch cache, where
    decide_module finds it if the agent reports the same starts."""
    scanner = BranchScanner()
    try:
        with ProcessMemory(pid) as mem:
            for lo, hi in ranges:
                code = mem.read(lo, hi - lo)
                if code:
                    _cached_branches(scanner, code, lo, starts)
    finally:
        scanner.close()


def _by_target(src, dst, kind):
    order = np.argsort(dst, kind="stable")
    return src[order], dst[order], kind[order]


def _store(path: str, branches) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    src, dst, kind = branches
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, src=src, dst=dst, kind=kind)
        os.replace(tmp, path)
    except OSError as exc:
        log.info("branch cache not written (%s)", exc)


_JCC_REL32 = {
    X.X86_INS_JO: 0x80, X.X86_INS_JNO: 0x81, X.X86_INS_JB: 0x82, X.X86_INS_JAE: 0x83,
    X.X86_INS_JE: 0x84, X.X86_INS_JNE: 0x85, X.X86_INS_JBE: 0x86, X.X86_INS_JA: 0x87,
    X.X86_INS_JS: 0x88, X.X86_INS_JNS: 0x89, X.X86_INS_JP: 0x8A, X.X86_INS_JNP: 0x8B,
    X.X86_INS_JL: 0x8C, X.X86_INS_JGE: 0x8D, X.X86_INS_JLE: 0x8E, X.X86_INS_JG: 0x8F,
}
_UNMOVABLE = {X.X86_INS_LOOP, X.X86_INS_LOOPE, X.X86_INS_LOOPNE, X.X86_INS_JRCXZ,
              X.X86_INS_JECXZ, X.X86_INS_XBEGIN}


def _padding_flags(code: bytes, address: int):
    """(address, size, is_padding) of each instruction decoded from code
    until the first undecodable byte: nop, int3 or ``00 00``."""
    for at, size, mnemonic, _ in _MD.disasm_lite(code, address):
        yield at, size, mnemonic in ("nop", "int3") or code[at - address:at - address + size] == b"\x00\x00"


def _hooked_elsewhere(mem: ProcessMemory, at: int, code: bytes) -> bool:
    """The entry is a patch of some tracer: a jmp (directly, or through a
    short jmp to a jmp) into executable memory that belongs to no file."""
    for _ in range(2):
        if code[:1] == b"\xe9" and len(code) >= 5:
            return mem.is_anonymous_code(at + 5 + struct.unpack_from("<i", code, 1)[0])
        if code[:1] != b"\xeb" or len(code) < 2:
            return False
        at = at + 2 + struct.unpack_from("<b", code, 1)[0]
        code = mem.read(at, 5)
    return False


def _only_padding(code: bytes, address: int) -> bool:
    n = 0
    for _, size, pad in _padding_flags(code, address):
        if not pad:
            return False
        n += size
    return n == len(code)


def _capstone_layout():
    """Where capstone (this build of its Python binding) keeps the details
    that lt_relocate reads: taken from the binding's own ctypes structures."""
    import ctypes

    insn, detail, x86 = capstone._cs_insn, capstone._cs_detail, capstone.x86.CsX86
    op = capstone.x86.X86Op
    lay = ffi.new("lt_cs_layout *")
    lay.insn_detail = insn.detail.offset
    lay.det_groups = detail.groups.offset
    lay.det_groups_count = detail.groups_count.offset
    lay.det_x86 = detail.arch.offset  # a union: every member starts there
    lay.x86_op_count = x86.op_count.offset
    lay.x86_operands = x86.operands.offset
    enc = x86.encoding.offset
    lay.x86_disp_offset = enc + capstone.x86.CsX86Encoding.disp_offset.offset
    lay.x86_disp_size = enc + capstone.x86.CsX86Encoding.disp_size.offset
    lay.op_size = ctypes.sizeof(op)
    lay.op_type = op.type.offset
    lay.op_value = op.value.offset
    lay.op_mem_base = op.value.offset + capstone.x86.X86OpMem.base.offset
    lay.op_mem_kind, lay.reg_rip = X.X86_OP_MEM, X.X86_REG_RIP
    lay.grp_jump, lay.grp_call, lay.grp_ret = capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET
    lay.grp_int, lay.grp_iret = capstone.CS_GRP_INT, capstone.CS_GRP_IRET
    lay.grp_branch_relative = capstone.CS_GRP_BRANCH_RELATIVE
    lay.ins_jmp, lay.ins_ud2, lay.ins_hlt = X.X86_INS_JMP, X.X86_INS_UD2, X.X86_INS_HLT
    lay.ins_nop, lay.ins_int3 = X.X86_INS_NOP, X.X86_INS_INT3
    for i, ins in enumerate(sorted(_UNMOVABLE)):
        lay.unmovable[i] = ins
    for ins, opcode in _JCC_REL32.items():
        lay.jcc[opcode - 0x80] = ins
    return lay


_relocators = threading.local()


def _relocator():
    """This thread's scanner with details on (Frida's message thread analyses
    modules loaded later while the main thread may analyse others)."""
    s = getattr(_relocators, "scanner", None)
    if s is None:
        s = BranchScanner()
        if lib.lt_scan_set_layout(s._s, _capstone_layout()) != 0:
            raise RuntimeError("capstone cannot decode with details")
        _relocators.scanner = s
    return s


_RELOC_REASONS = {lib.LT_RELOC_TOO_SHORT: TOO_SHORT, lib.LT_RELOC_UNRELOCATABLE: UNRELOCATABLE}


def relocate(code: bytes, address: int, new_address: int,
             min_len: int = PATCH_LEN) -> tuple[bytes, int] | str:
    """Relocates whole instructions of ``code`` (the bytes at ``address``)
    until at least ``min_len`` bytes are covered, for execution at
    ``new_address``, followed by a jump back. A function that ends (ret,
    jmp) before PATCH_LEN bytes may still be patched when only alignment
    padding follows it: the padding is overwritten, never run. A relative
    call is moved as a push of the original return address and a jump (the
    callee returns into the function itself, where the unwinder finds its
    frame); ``loop``/``jrcxz``/``xbegin``, an indirect call, and anything
    whose target is out of rel32 reach from the slot are unrelocatable.
    Returns (bytes, covered) or a reason code. Decoded and rewritten by
    native/src/hookscan.c (lt_relocate)."""
    out = ffi.new("uint8_t[256]")
    covered = ffi.new("uint32_t *")
    n = lib.lt_relocate(_relocator()._s, ffi.from_buffer(code), len(code), address, new_address,
                        min_len, out, 256, covered)
    if n < 0:
        reason = _RELOC_REASONS.get(n)
        if reason is None:
            raise RuntimeError("instruction decoder failed")
        return reason
    return bytes(ffi.buffer(out, n)), covered[0]


class _Branches:
    """Direct branches of a module, sorted by target, for range queries."""

    def __init__(self, src, dst, kind):
        if len(dst) > 1 and not bool((dst[1:] >= dst[:-1]).all()):  # several ranges
            src, dst, kind = _by_target(src, dst, kind)
        self.src, self.dst, self.kind = src, dst, kind

    def into(self, lo: int, hi: int):
        """(source, target, kind) of every branch with lo <= target < hi."""
        a, b = self.dst.searchsorted(np.array((lo, hi), dtype=np.uint64)).tolist()
        if a == b:
            return []
        return list(zip(self.src[a:b].tolist(), self.dst[a:b].tolist(), self.kind[a:b].tolist()))

    def lands_in_patch(self, addr: int, size: int, off: int, p_lo: int, p_hi: int) -> bool:
        """A branch would run patched bytes: one into (p_lo, p_hi), one from
        anywhere to p_lo after an endbr64, or a jump from the function itself
        back to its entry (a loop would re-enter the hook every iteration;
        a call is recursion, an entry)."""
        for s, t, k in self.into(p_lo, p_hi):
            if t > p_lo or off or (addr <= s < addr + size and k != lib.LT_BR_CALL):
                return True
        if off:
            return any(addr <= s < addr + size and k != lib.LT_BR_CALL for s, t, k in self.into(addr, addr + 1))
        return False


def _padding_before(mem: ProcessMemory, prev_start: int, addr: int) -> list[int]:
    """Instruction boundaries b (nearest first) such that [b, addr) is only
    alignment padding, decoding from the previous function's start; empty
    when the decoder does not land exactly on ``addr``."""
    code = mem.read(prev_start, addr - prev_start)
    bounds, kinds, pc = [], [], prev_start
    for at, size, pad in _padding_flags(code, prev_start):
        bounds.append(at)
        kinds.append(pad)
        pc = at + size
    if pc != addr:
        return []
    out = []
    for b, pad in zip(reversed(bounds), reversed(kinds)):
        if not pad:
            break
        out.append(b)
    return out


def _short_patch(mem, branches, starts, slot, addr, size, off, head) -> Verdict | None:
    """The short form, for an entry whose 5-byte patch would cover a branch
    target: a 2-byte ``jmp rel8`` at the entry to a ``jmp rel32`` written in
    the alignment padding just before the function (padding that is either
    never run, or run only to fall through into this very function, which
    is then an entry too)."""
    p_lo = addr + off
    if p_lo % 64 == 63:
        return None  # a 2-byte store across a cache line is not atomic for instruction fetch
    rel = relocate(head[off:], p_lo, slot + STUB_BYTES, SHORT_PATCH_LEN)
    if isinstance(rel, str):
        return None
    code, covered = rel
    if p_lo + covered > addr + size or branches.lands_in_patch(addr, size, off, p_lo, p_lo + covered):
        return None
    i = bisect.bisect_left(starts, addr) - 1
    if i < 0 or addr - starts[i] > 8192:
        return None
    for b in _padding_before(mem, starts[i], addr):
        if addr - b < PATCH_LEN:
            continue
        if p_lo + SHORT_PATCH_LEN - b > 128:
            return None
        if any(t > b for _, t, _ in branches.into(b, addr)):
            return None  # something jumps into the middle of the padding
        tramp_expect = mem.read(b, PATCH_LEN)
        if len(tramp_expect) != PATCH_LEN:
            return None
        return Verdict("fast", patch_off=off, patch_len=covered, slot=slot, code=code,
                       expect=head[off:off + covered], tramp=b, tramp_expect=tramp_expect)
    return None


@dataclass
class ModulePlan:
    """What the agent reports of one module: its functions (all starts, for
    resynchronising the decoder) and the slot area it allocated."""
    name: str
    base: int
    size: int
    starts: list[int]
    slot_base: int
    slot_count: int


def decide_module(mem: ProcessMemory, scanner: BranchScanner, module: ModulePlan,
                  functions: list[dict]) -> dict[int, Verdict]:
    """Verdicts for ``functions`` (the agent's planned functions of this
    module: id, name, address, size)."""
    verdicts: dict[int, Verdict] = {}
    starts = sorted(set(module.starts) | {int(f["address"], 16) for f in functions})
    # Direct branches of every executable range of the module that holds a
    # selected function.
    ranges = sorted({r for f in functions if (r := mem.exec_range_of(int(f["address"], 16)))})
    srcs, dsts, kinds = [], [], []
    for lo, hi in ranges:
        lo, hi = max(lo, module.base), min(hi, module.base + module.size)
        if hi <= lo:
            continue
        code = mem.read(lo, hi - lo)
        s, d, k = _cached_branches(scanner, code, lo, starts)
        srcs.append(s), dsts.append(d), kinds.append(k)
    if srcs:
        branches = _Branches(np.concatenate(srcs), np.concatenate(dsts), np.concatenate(kinds))
    else:
        none = np.empty(0, dtype=np.uint64)
        branches = _Branches(none, none, np.empty(0, dtype=np.uint8))

    next_slot = 0
    for f in sorted(functions, key=lambda f: int(f["address"], 16)):
        fid, addr, size = f["id"], int(f["address"], 16), int(f.get("size") or 0)
        name = f["name"]
        if ".cold" in name:
            verdicts[fid] = Verdict("skip", COLD_PART)
            continue
        if mem.exec_range_of(addr) is None:
            verdicts[fid] = Verdict("skip", NOT_EXECUTABLE)
            continue
        j = bisect.bisect_right(starts, addr)  # next function
        if size <= 0:
            if not f.get("ifunc"):
                verdicts[fid] = Verdict("skip", UNKNOWN_SIZE)
                continue
            # an IFUNC implementation has no symbol of its own: its end is
            # where the next known function starts (the decoder stops at ret)
            size = starts[j] - addr if j < len(starts) else 64
        # the code, and what follows it up to the next function (padding)
        room = (starts[j] if j < len(starts) else addr + size + 16) - addr
        head = mem.read(addr, max(1, min(max(size, room), 64)))
        if not head:
            verdicts[fid] = Verdict("skip", UNREADABLE)
            continue
        off = 4 if head.startswith(ENDBR64) else 0
        if _hooked_elsewhere(mem, addr + off, head[off:off + 5]):
            verdicts[fid] = Verdict("skip", ALREADY_PATCHED)
            continue
        if next_slot >= module.slot_count or not module.slot_base:
            verdicts[fid] = Verdict("fallback", NO_MEMORY_NEAR)
            continue
        slot = module.slot_base + next_slot * SLOT_BYTES
        why = _full_patch_problem(branches, starts, slot, addr, size, off, head)
        if why in (TOO_SHORT, SHARED_CODE, BRANCH_INTO_PATCH):
            why = _short_patch(mem, branches, starts, slot, addr, size, off, head) or why
        if isinstance(why, Verdict):
            why.window = mem.exec_range_of(addr)
            verdicts[fid] = why
            next_slot += 1
        else:
            verdicts[fid] = Verdict("fallback" if why == UNRELOCATABLE else "skip", why)
    return verdicts


def _full_patch_problem(branches, starts, slot, addr, size, off, head) -> Verdict | str:
    """The 5-byte patch at the entry: its verdict, or the reason it is unsafe."""
    rel = relocate(head[off:], addr + off, slot + STUB_BYTES)
    if isinstance(rel, str):
        return rel
    code, covered = rel
    if len(code) > SLOT_BYTES - STUB_BYTES:
        return UNRELOCATABLE
    p_lo, p_hi = addr + off, addr + off + covered
    if p_hi > addr + size and not _only_padding(head[size:p_hi - addr], addr + size):
        return TOO_SHORT  # the patch would reach past the function
    j = bisect.bisect_right(starts, addr)
    if j < len(starts) and starts[j] < p_hi:
        return SHARED_CODE  # another function starts inside the patched bytes
    if branches.lands_in_patch(addr, size, off, p_lo, p_hi):
        return BRANCH_INTO_PATCH
    return Verdict("fast", patch_off=off, patch_len=covered, slot=slot, code=code,
                   expect=head[off:off + covered])


def decide(pid: int, modules: list[dict], functions: list[dict]) -> dict[int, Verdict]:
    """Verdicts for every planned function of a target, keyed by function id.
    ``modules`` is the agent's plan()['modules']."""
    by_module: dict[str, list[dict]] = {}
    for f in functions:
        by_module.setdefault(f["modulePath"], []).append(f)
    out: dict[int, Verdict] = {}
    scanner = BranchScanner()
    try:
        with ProcessMemory(pid) as mem:
            for m in modules:
                fns = by_module.pop(m["path"], [])
                if not fns:
                    continue
                plan = ModulePlan(m["name"], int(m["base"], 16), int(m["size"]),
                                  [int(s, 16) for s in m.get("starts", [])],
                                  int(m.get("slotBase") or "0", 16), int(m.get("slotCount", 0)))
                out.update(decide_module(mem, scanner, plan, fns))
    finally:
        scanner.close()
    for fns in by_module.values():  # a module the agent did not describe
        for f in fns:
            out[f["id"]] = Verdict("skip", NOT_EXECUTABLE)
    return out


def patch_ranges(verdicts: dict[int, Verdict], addresses: dict[int, int]) -> list[tuple[int, int, int]]:
    """(function id, lo, hi) of the bytes each fast verdict overwrites: a
    thread strictly inside one of them must not run while it is written."""
    out = []
    for fid, v in verdicts.items():
        if v.kind != "fast" or fid not in addresses:
            continue
        site = addresses[fid] + v.patch_off
        out.append((fid, site, site + (PATCH_LEN if not v.tramp else SHORT_PATCH_LEN)))
        if v.tramp:
            out.append((fid, v.tramp, v.tramp + PATCH_LEN))
    return out


def summarize(functions: list[dict], verdicts: dict[int, Verdict], install: dict,
              selection_skips: list[dict]) -> dict:
    """The ``hooks`` block of the run summary and trace.json: how every
    selected function was hooked, and why each one that was not, was not."""
    skipped_fns = []
    for s in selection_skips:
        reason = "excluded" if s.get("reason", "").startswith("excluded") else "builtin-exclude"
        skipped_fns.append({"name": s["name"], "reason": reason})
    names = {f["id"]: f"{f['module']}!{f['name']}" for f in functions}
    verdicts = {fid: v for fid, v in verdicts.items() if fid in names}  # traced ones only
    for fid, v in verdicts.items():
        if v.kind == "skip":
            skipped_fns.append({"name": names.get(fid, str(fid)), "reason": v.reason})
    for f in install.get("failed", []):
        skipped_fns.append({"name": f["name"], "reason": f.get("code", "install-failed")})
    by_reason: dict[str, int] = {}
    for s in skipped_fns:
        by_reason[s["reason"]] = by_reason.get(s["reason"], 0) + 1
    fallback_by_reason: dict[str, int] = {}
    for fid, v in verdicts.items():
        if v.kind == "fallback":
            fallback_by_reason[v.reason] = fallback_by_reason.get(v.reason, 0) + 1
    for r, n in install.get("demoted", {}).items():
        fallback_by_reason[r] = fallback_by_reason.get(r, 0) + n
    return {
        "fast": int(install.get("replaced", 0)),
        "fallback": int(install.get("attached", 0)),
        "skipped": len(skipped_fns),
        "skippedByReason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "fallbackByReason": dict(sorted(fallback_by_reason.items(), key=lambda kv: -kv[1])),
        "skippedFunctions": skipped_fns,
    }
