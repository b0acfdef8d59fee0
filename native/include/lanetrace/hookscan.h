/*
 * hookscan.h — the out-of-target half of hook safety: a linear sweep over a
 * module's code that lists every direct branch (jmp, jcc, call, loop,
 * jrcxz, xbegin) with its target, so the injector can refuse to patch bytes
 * that some branch lands in. Decoding is capstone's (loaded at run time from
 * the capstone Python package), with details off: the target is computed
 * from the instruction's own trailing displacement.
 *
 * Ownership: every buffer belongs to the caller; nothing is retained between
 * calls except the capstone handle, owned by lt_scan_open/lt_scan_close.
 * No atomics: used by one Python thread at a time.
 *
 * It also relocates a function's first instructions into its hook slot
 * (lt_relocate), with a second capstone handle that has details on.
 */
#ifndef LANETRACE_HOOKSCAN_H
#define LANETRACE_HOOKSCAN_H
#include <stddef.h>
#include <stdint.h>

typedef struct lt_scanner lt_scanner;

/* kinds of lt_branch.kind */
enum { LT_BR_JMP = 1, LT_BR_JCC = 2, LT_BR_CALL = 3, LT_BR_OTHER = 4 };

/* Opens a scanner on capstone at `libpath`; NULL with err filled on failure. */
lt_scanner *lt_scan_open(const char *libpath, char *err, size_t errlen);
void lt_scan_close(lt_scanner *s);

/* Decodes code[0..len) (the bytes at address `base`) linearly, restarting at
 * each of the sorted `starts` (function entries) so that data between
 * functions cannot desynchronize the next one; undecodable bytes are skipped
 * one at a time. Writes up to `cap` branches as parallel arrays src[] (the
 * branch instruction's address), dst[] (its target) and kind[]. Returns the
 * number of branches found (may exceed cap: call again with more room), or
 * -1 on a decoder failure. */
int64_t lt_scan_branches(lt_scanner *s, const uint8_t *code, size_t len, uint64_t base,
                         const uint64_t *starts, size_t nstarts, uint64_t *src, uint64_t *dst,
                         uint8_t *kind, size_t cap);

/* Where capstone keeps what the relocator reads in an instruction's details,
 * and the ids it gives the instructions that matter here. Capstone's ABI
 * changes between versions; the injector fills this from the Python
 * binding's own ctypes declarations (hooksafety.py), so the two always
 * agree. */
typedef struct lt_cs_layout {
    uint32_t insn_detail;      /* offsetof(cs_insn, detail) */
    uint32_t det_groups;       /* offsetof(cs_detail, groups) */
    uint32_t det_groups_count;
    uint32_t det_x86;          /* offsetof(cs_detail, x86) */
    uint32_t x86_op_count;     /* offsets inside cs_x86 */
    uint32_t x86_operands;
    uint32_t x86_disp_offset;  /* encoding.disp_offset */
    uint32_t x86_disp_size;
    uint32_t op_size;          /* sizeof(cs_x86_op) */
    uint32_t op_type;
    uint32_t op_value;         /* offsetof(cs_x86_op, imm) */
    uint32_t op_mem_base;      /* offsetof(cs_x86_op, mem.base) */
    uint32_t op_mem_kind, reg_rip;
    uint32_t grp_jump, grp_call, grp_ret, grp_int, grp_iret, grp_branch_relative;
    uint32_t ins_jmp, ins_ud2, ins_hlt, ins_nop, ins_int3;
    uint32_t unmovable[6];     /* loop, loope, loopne, jrcxz, jecxz, xbegin */
    uint32_t jcc[16];          /* ids of jo..jg, in the order of their 0f 8x opcodes */
} lt_cs_layout;

/* reasons lt_relocate gives (negative returns) */
enum { LT_RELOC_TOO_SHORT = -1, LT_RELOC_UNRELOCATABLE = -2, LT_RELOC_NO_DECODER = -3 };

/* Turns on instruction details for lt_relocate, with capstone's layout. 0 or -1. */
int lt_scan_set_layout(lt_scanner *s, const lt_cs_layout *layout);

/* Relocates whole instructions of code[0..len) (the bytes at `address`)
 * until at least `min_len` bytes are covered, for execution at
 * `new_address`, followed by a jump back (hooksafety.relocate documents the
 * rules). Writes the relocated bytes to out (up to cap) and the bytes
 * covered to *covered. Returns the number of bytes written, or an
 * LT_RELOC_* reason. */
int lt_relocate(lt_scanner *s, const uint8_t *code, size_t len, uint64_t address,
                uint64_t new_address, uint32_t min_len, uint8_t *out, size_t cap,
                uint32_t *covered);
#endif
