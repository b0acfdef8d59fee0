/*
 * lanetrace/detail.h — reading streams of lt_detail_record (record.h) outside
 * the target: the drainer's pre-roll buffer (detail.c) and the writer's
 * encoder (encode.c) walk the same variable-size records and must agree on
 * what a well-formed record is.
 *
 * Ownership: every function borrows the caller's buffers for the duration of
 * the call; nothing is retained. Not thread-safe only in the sense that two
 * threads must not write the same output buffer.
 */
#ifndef LANETRACE_DETAIL_H
#define LANETRACE_DETAIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lanetrace/record.h"

/* Validate the record at buf[off..len). Returns its size (> 0), or 0 if the
 * bytes there are not a whole, well-formed record. A stream cannot be
 * resynchronized after a bad size, so callers stop at the first 0. The
 * header is copied into *out (payloads need not be aligned). */
static inline uint32_t lt_detail_at(const uint8_t *buf, size_t len, size_t off,
                                    lt_detail_record *out)
{
    if (len < off || len - off < LT_DETAIL_HEADER_SIZE)
        return 0;
    memcpy(out, buf + off, LT_DETAIL_HEADER_SIZE);
    uint32_t padded = (out->stack_len + 7u) & ~7u;
    if (out->size % 8u || out->size > len - off || out->stack_len > LT_DETAIL_MAX_STACK ||
        out->size != LT_DETAIL_HEADER_SIZE + padded || out->reg_count > LT_DETAIL_MAX_REGS ||
        out->seq == 0 || (out->kind != LT_KIND_ENTRY && out->kind != LT_KIND_RETURN &&
                          out->kind != LT_KIND_RETURN_UNWOUND))
        return 0;
    return out->size;
}

/* Is ts inside one of the closed intervals win[2i]..win[2i+1] (sorted by
 * start, disjoint)? */
static inline int lt_detail_in_windows(uint64_t ts, const uint64_t *win, size_t nwin)
{
    size_t lo = 0, hi = nwin;
    while (lo < hi) { /* first window whose end >= ts */
        size_t mid = (lo + hi) / 2;
        if (win[2 * mid + 1] < ts)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nwin && win[2 * lo] <= ts;
}

typedef struct lt_detail_summary {
    uint64_t records;
    uint64_t min_ts;   /* UINT64_MAX when records == 0 */
    uint64_t max_ts;
    uint64_t valid_bytes; /* prefix made of well-formed records */
} lt_detail_summary;

/* Count the well-formed prefix of a stream and its time span. */
void lt_detail_summarize(const uint8_t *buf, size_t len, lt_detail_summary *out);

typedef struct lt_detail_split_result {
    uint64_t send_bytes, send_records;   /* inside a window */
    uint64_t keep_bytes, keep_records;   /* outside, but at or after the horizon */
    uint64_t discard_records;            /* outside every window, before the horizon */
    uint64_t invalid_bytes;              /* malformed tail, not copied */
} lt_detail_split_result;

/* Split a stream into records inside a window (→ send), records that a later
 * window could still claim (ts >= horizon → keep) and the rest (discarded,
 * only counted). Order is preserved in both outputs; each must hold len
 * bytes. */
void lt_detail_split(const uint8_t *buf, size_t len, const uint64_t *win, size_t nwin,
                     uint64_t horizon, uint8_t *send, uint8_t *keep,
                     lt_detail_split_result *res);

#endif /* LANETRACE_DETAIL_H */
