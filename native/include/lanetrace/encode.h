/*
 * lanetrace/encode.h — the writer's hot path: raw index records → ATF V4
 * length-delimited `Event` frames, with per-thread duplicate/gap accounting.
 *
 * One lt_encoder per trace file (per target pid). It holds everything the
 * writer must know to continue that file: the next event id, the function
 * table (id → runtime address, symbol), per-thread max sequence numbers and
 * open-call counts, and the counters the manifest reports.
 *
 * Ownership:
 *  - lt_encoder_new() returns an encoder owned by the caller; free it with
 *    lt_encoder_free(). Not thread-safe: one thread uses an encoder at a time.
 *  - lt_encoder_set_function() copies the symbol bytes; the caller keeps its
 *    buffer.
 *  - Input record arrays and file buffers are borrowed for the duration of
 *    the call only. Output buffers belong to the caller; size them with
 *    lt_encode_bound().
 *  - lt_encoder_other_frames() returns an array owned by the encoder, valid
 *    until the next lt_encoder_scan() or lt_encoder_free().
 *
 * State changes are made only for records that are encoded into the output,
 * so if the caller then fails to write the output to the file, the encoder is
 * ahead of the file: the caller must discard it and rebuild a fresh one from
 * the file with lt_encoder_scan().
 */
#ifndef LANETRACE_ENCODE_H
#define LANETRACE_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "lanetrace/record.h"

typedef struct lt_encoder lt_encoder;

/* Cumulative counters of one encoder (file), including scanned history. */
typedef struct lt_encode_stats {
    uint64_t next_event_id;    /* id the next event will take (ids start at 1) */
    uint64_t events;           /* call + return events in the file */
    uint64_t calls;
    uint64_t returns;          /* including unwound ones */
    uint64_t unwound;
    uint64_t spans;            /* returns that closed an open call of their thread */
    uint64_t duplicates;       /* records dropped: (tid, seq) already written */
    uint64_t gaps;             /* sequence numbers never seen (agent-side drops) */
    uint64_t unknown_function; /* events written whose function id was never defined */
    uint64_t invalid_records;  /* records dropped: bad kind or seq 0 */
    uint64_t threads;          /* distinct thread ids with call/return events */
    uint64_t functions;        /* defined function ids */
    uint64_t min_ts_ns;        /* UINT64_MAX while no call/return was seen */
    uint64_t max_ts_ns;
    uint64_t late;             /* records written late: seq filled an earlier gap */
    uint64_t detail_events;    /* calls/returns written with the flight recorder's detail */
    uint64_t detail_discarded; /* detail records outside every window, not written */
    uint64_t detail_duplicates;
    uint64_t detail_invalid_bytes; /* malformed tails of detail payloads */
    uint64_t detail_late;      /* detail whose call/return was written before it came */
    uint64_t detail_unmatched; /* detail whose call/return never came */
    uint64_t hold_early;       /* held records written before their time: hold budget full */
} lt_encode_stats;

/* Per-call result of lt_encode_index(). */
typedef struct lt_batch_result {
    uint64_t events;
    uint64_t duplicates;
    uint64_t gaps;
    uint64_t unknown_function;
    uint64_t invalid_records;
    uint64_t late;             /* written after higher numbers of their thread */
} lt_batch_result;

/* Per-call result of lt_encode_detail(). */
typedef struct lt_detail_result {
    uint64_t kept;          /* held, to go into the event of their call/return */
    uint64_t discarded;     /* outside every window */
    uint64_t duplicates;    /* (tid, seq) held already */
    uint64_t invalid_bytes; /* malformed tail, not kept */
    uint64_t late;          /* their call/return is in the file already */
} lt_detail_result;

/* Per-call result of lt_encoder_flush(). */
typedef struct lt_flush_result {
    uint64_t events;           /* calls/returns written */
    uint64_t merged;           /* of them, with the flight recorder's detail */
    uint64_t late;             /* written after higher numbers of their thread */
    uint64_t early;            /* written before the horizon because the budget was full */
    uint64_t detail_unmatched; /* detail records whose call/return never came */
} lt_flush_result;

/* Sequence holes remembered per thread. Beyond this many, the lowest holes
 * are forgotten and a late record for them counts as a duplicate. */
#define LT_ENCODE_MAX_HOLES 4096

lt_encoder *lt_encoder_new(int inline_symbols);
void lt_encoder_free(lt_encoder *enc);

/* Define (or redefine) a function id. Returns 0, or -1 on allocation failure
 * (the table is unchanged then). Call counts of an existing id are kept. */
int lt_encoder_set_function(lt_encoder *enc, uint32_t id, uint64_t address,
                            const char *symbol, size_t symbol_len);

/* Reserve n consecutive event ids for events the caller encodes itself
 * (TraceStart, SymbolDefinition, TraceEnd); returns the first. */
uint64_t lt_encoder_take_event_ids(lt_encoder *enc, uint64_t n);

/* Upper bound of the bytes lt_encode_index() writes for `count` records. */
size_t lt_encode_bound(const lt_encoder *enc, size_t count);

/* Encode `count` records into `out` as framed compact Events (docs/format.md),
 * or, once lt_encoder_set_hold() was called, hold them for lt_encoder_flush()
 * and write nothing. Duplicates (seq not above the thread's max and not in a
 * remembered gap) and invalid records are skipped and counted; records that
 * fill a remembered gap are written (counted late when higher numbers of
 * their thread are in the file already).
 * Returns the number of bytes written, or -1 if out_cap < lt_encode_bound()
 * (nothing changed then). `res` may be NULL. */
int64_t lt_encode_index(lt_encoder *enc, const lt_index_record *recs, size_t count,
                        uint8_t *out, size_t out_cap, lt_batch_result *res);

/* Hold calls and returns until lt_encoder_flush() releases them, so that the
 * flight recorder's detail, which comes later, goes into the same event, and
 * each thread's events are written in sequence order. `budget_bytes` bounds
 * what is held (32 B per record plus the detail records' own size); past it,
 * the next flush writes everything held, counted as hold_early. */
void lt_encoder_set_hold(lt_encoder *enc, size_t budget_bytes);
size_t lt_encoder_held_bytes(const lt_encoder *enc);

/* Hold the detail records (lt_detail_record, record.h) of buf whose ts lies
 * in one of the nwin closed windows win[2i]..win[2i+1] (sorted, disjoint), or
 * all of them with keep_all, for the event of their call/return. Without a
 * hold, or when that event was written already, a record is counted late and
 * dropped. Parsing stops at the first malformed record.
 * Returns 0, or -1 out of memory (res then counts what was handled). */
int lt_encode_detail(lt_encoder *enc, const uint8_t *buf, size_t len, const uint64_t *win,
                     size_t nwin, int keep_all, lt_detail_result *res);

/* Upper bound of the bytes lt_encoder_flush() writes. */
size_t lt_encoder_flush_bound(const lt_encoder *enc);

/* Write the held records with ts below horizon_ns (all with UINT64_MAX, and
 * all when the hold is over its budget), thread by thread in sequence order,
 * each with its held detail. Returns bytes written, or -1 if out_cap is below
 * lt_encoder_flush_bound() (nothing changed then). */
int64_t lt_encoder_flush(lt_encoder *enc, uint64_t horizon_ns, uint8_t *out, size_t out_cap,
                         lt_flush_result *res);

/* Rebuild state from an existing events.bin image (fresh encoder expected).
 * Sets *valid_len to the end of the last whole frame (a torn tail after it
 * must be cut). Frames that are not call/return (TraceStart, TraceEnd,
 * SymbolDefinition, SignalDelivery) are listed for the caller; symbol
 * definitions are also applied to the function table.
 * Returns 0, -1 if a whole frame does not parse as an Event (*valid_len is
 * then that frame's offset), -2 on allocation failure. */
int lt_encoder_scan(lt_encoder *enc, const uint8_t *buf, size_t len, size_t *valid_len);

/* Offsets (frame start) of the non-call/return frames found by the last scan. */
size_t lt_encoder_other_frames(const lt_encoder *enc, const uint64_t **offsets);

void lt_encoder_stats(const lt_encoder *enc, lt_encode_stats *out);

/* Copy up to `cap` (id, calls) pairs of defined functions; returns how many
 * functions are defined (may exceed cap). */
size_t lt_encoder_function_calls(const lt_encoder *enc, uint32_t *ids, uint64_t *calls,
                                 size_t cap);

#endif /* LANETRACE_ENCODE_H */
