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
#endif
