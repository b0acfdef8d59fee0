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
    uint64_t ts_ns;   /* CLOCK_MONOTONIC nanoseconds */
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

#endif /* LANETRACE_RECORD_H */
