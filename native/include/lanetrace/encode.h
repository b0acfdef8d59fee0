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
    uint64_t detail_events;    /* flight-recorder detail events in the file */
    uint64_t detail_discarded; /* detail records outside every window, not written */
    uint64_t detail_duplicates;
    uint64_t detail_invalid_bytes; /* malformed tails of detail payloads */
} lt_encode_stats;

/* Per-call result of lt_encode_index(). */
typedef struct lt_batch_result {
    uint64_t events;
    uint64_t duplicates;
    uint64_t gaps;
    uint64_t unknown_function;
    uint64_t invalid_records;
    uint64_t late;
} lt_batch_result;

/* Per-call result of lt_encode_detail(). */
typedef struct lt_detail_result {
    uint64_t kept;          /* written as Events with detail = true */
    uint64_t discarded;     /* outside every window */
    uint64_t duplicates;    /* (tid, seq) at or below the thread's last detail seq */
    uint64_t invalid_bytes; /* malformed tail, not written */
} lt_detail_result;

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

/* Encode `count` records into `out` as framed Events. Duplicates (seq not
 * above the thread's max and not in a remembered gap) and invalid records
 * are skipped and counted; late records (seq inside a remembered gap of
 * their thread) are written and counted.
 * Returns the number of bytes written, or -1 if out_cap < lt_encode_bound()
 * (nothing changed then). `res` may be NULL. */
int64_t lt_encode_index(lt_encoder *enc, const lt_index_record *recs, size_t count,
                        uint8_t *out, size_t out_cap, lt_batch_result *res);

/* Upper bound of the bytes lt_encode_detail() writes for `len` payload bytes. */
size_t lt_encode_detail_bound(const lt_encoder *enc, size_t len);

/* Encode a stream of lt_detail_record (record.h) as framed Events with
 * detail = true, keeping only records whose ts lies in one of the nwin
 * closed windows win[2i]..win[2i+1] (sorted, disjoint), or all of them with
 * keep_all. Records at or below their thread's last detail seq are
 * duplicates (a resent request) and skipped. Parsing stops at the first
 * malformed record. Returns bytes written, or -1 if out_cap is below
 * lt_encode_detail_bound() (nothing changed then). */
int64_t lt_encode_detail(lt_encoder *enc, const uint8_t *buf, size_t len, const uint64_t *win,
                         size_t nwin, int keep_all, uint8_t *out, size_t out_cap,
                         lt_detail_result *res);

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
