/*
 * lanetrace/record.h — raw event records as they travel from a target's
 * shared-memory rings, through a drainer, to the writer.
 *
 * Ownership: records are plain values. A producer (the agent inside the
 * target) writes them into a ring it owns at that moment; after the ring is
 * published (see shm.h) the bytes are read-only until the drainer returns the
 * ring to the producer's free queue. Drainers copy records verbatim into
 * ZeroMQ batches; the writer decodes them with the same struct layout, so the
 * layout is fixed-size, little-endian, with no pointers and no padding holes.
 *
 * No atomics live here; the memory ordering of ring publication is in shm.h.
 */
#ifndef LANETRACE_RECORD_H
#define LANETRACE_RECORD_H

#include <stdint.h>

/* kind values */
#define LT_KIND_ENTRY 1u
#define LT_KIND_RETURN 2u
/* A frame that was left without returning (longjmp, exception unwind) is
 * closed by a synthesized RETURN when the shadow stack notices it. */
#define LT_KIND_RETURN_UNWOUND 3u

/* One index-lane record: 32 bytes, naturally aligned. */
typedef struct lt_index_record {
    uint64_t ts_ns;   /* CLOCK_MONOTONIC ns once collected; in the rings, the
                         segment's record clock (tsc.h) */
    uint64_t seq;     /* per-thread sequence number: 1, 2, 3, ... Every record
                         a thread produces takes the next number, also the ones
                         that are then dropped, so gaps == drops. */
    uint32_t tid;     /* OS thread id (gettid), cached per thread */
    uint32_t func_id; /* id in the target's function table */
    uint16_t kind;    /* LT_KIND_* */
    uint16_t depth;   /* call depth at entry, 0 = outermost hooked frame; a
                         RETURN carries the depth of its ENTRY */
    uint32_t flags;   /* reserved, 0 */
} lt_index_record;

#define LT_INDEX_RECORD_SIZE 32u

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(lt_index_record) == LT_INDEX_RECORD_SIZE,
               "lt_index_record must stay 32 bytes: drainer and writer rely on it");
#endif

/*
 * Detail-lane record (flight recorder): variable size, 8-byte aligned, one per
 * ENTRY/RETURN while the detail lane is on. It belongs to the index record
 * with the same (tid, seq) and repeats its ts/func_id/kind, so it can be
 * matched, windowed and dropped on its own.
 *
 * regs on ENTRY (x86_64): rdi, rsi, rdx, rcx, r8, r9, rsp  (reg_count 7)
 * regs on RETURN (x86_64): rax, rdx                        (reg_count 2)
 * Then stack_len bytes copied from the stack pointer at entry (0..512),
 * padded with zeros to a multiple of 8; size covers header + padded stack.
 */
#define LT_DETAIL_MAX_REGS 8u
#define LT_DETAIL_MAX_STACK 512u

typedef struct lt_detail_record {
    uint64_t ts_ns;
    uint64_t seq;        /* the index record's per-thread seq */
    uint32_t tid;
    uint32_t func_id;
    uint16_t kind;       /* LT_KIND_ENTRY or LT_KIND_RETURN */
    uint16_t reg_count;
    uint32_t size;       /* total bytes of this record, multiple of 8 */
    uint64_t regs[LT_DETAIL_MAX_REGS];
    uint32_t stack_len;
    uint32_t reserved;
    /* uint8_t stack[stack_len], zero-padded to 8 */
} lt_detail_record;

#define LT_DETAIL_HEADER_SIZE 104u

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(lt_detail_record) == LT_DETAIL_HEADER_SIZE,
               "lt_detail_record header must stay 104 bytes");
#endif

#endif /* LANETRACE_RECORD_H */
