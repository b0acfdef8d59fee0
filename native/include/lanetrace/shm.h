/*
 * lanetrace/shm.h — layout of a target's shared-memory segment
 * (/lanetrace-<session>-<pid>-lanes) and the producer/consumer primitives.
 *
 * Segment layout (all positions are byte offsets from the segment base; the
 * segment holds no absolute pointers, every process materializes its own):
 *
 *   [lt_ctl]            control block incl. mark array, 4 KiB aligned
 *   [lt_slot x N]       thread registry; an index lane and a detail lane per slot
 *   [index rings]       N * rings_per_lane * ring_bytes of lt_index_record
 *   [lt_global]         global multi-producer lane header + cells
 *   [drop log]          LT_DROP_LOG_ENTRIES x lt_drop_entry (per-thread drops)
 *   [pool table]        pool_rings x (next, fill) of the shared ring pool
 *   [detail rings]      N * detail_rings_per_lane * detail_ring_bytes: the
 *                       agent prefaults everything before them and leaves
 *                       the detail rings untouched while the lane is off
 *   [pool rings]        pool_rings * ring_bytes of lt_index_record: the
 *                       target's shared reserve of index rings, never
 *                       prefaulted (tmpfs pages exist once a burst used them)
 *
 * Ownership:
 *   - Config fields of lt_ctl are written once by the creator (injector)
 *     before registry_ready is published; everybody else only reads them.
 *   - Runtime policy fields (detail_on, stack_bytes, auto_mode, stale_ns,
 *     no_drop, block_timeout_ns) are
 *     written by the injector/CLI at any time; producers re-read them at their
 *     periodic check (every LT_CHECK_EVENTS events and at each ring swap).
 *   - registry_mode and shard_fallback[] are written by the injector/watchdog
 *     (lt_shm_set_*) and by the agent's own policy (auto_mode): every writer
 *     uses CAS/exchange so that each transition is counted exactly once.
 *     shard_fallback[k] = 1 set by the watchdog, 2 set by the agent itself;
 *     the agent only clears the flags it set.
 *   - A slot is owned by the thread that CASed it FREE->ACTIVE until it
 *     stores RETIRING (at thread exit; its partial rings stay active and
 *     published). A RETIRING slot is either taken over by a new thread
 *     (CAS RETIRING->ACTIVE; it continues the same lanes, so slot reuse never
 *     waits for a drainer) or, once everything was collected and acked, by
 *     the drainer of shard (slot % shard_count): CAS RETIRING->RESETTING,
 *     check the generation did not move (no takeover+retire in between) and
 *     the detail lane is empty, reset the lanes, store FREE.
 *   - Index lane: the producer owns `active`, `submit_tail`, `free_head`,
 *     the fill of its active ring and the bytes of its active ring; the
 *     drainer owns `submit_head`, `free_tail`, `ack_ring/ack_off` and every
 *     ring between submit and free. A ring index is in exactly one place at
 *     a time (active, submit queue, free queue, held by the drainer), so
 *     neither SPSC queue can overflow its rings_per_lane entries.
 *   - Detail lane: same, except that `submit_head` is advanced by CAS by
 *     both sides: the drainer claims the oldest submitted ring to copy it
 *     (and frees it right after the memcpy, no writer ack), and a producer
 *     that finds no free ring claims ("steals") the oldest submitted ring
 *     and overwrites it (flight recorder: the oldest undrained detail data
 *     goes first; its records are counted as detail_overwritten).
 *     `dpos` is the drainer's read position in a partially read ring
 *     (tag:30 | ring:8 | off:26, see LT_DPOS_*); every steal bumps the tag,
 *     so a drainer copy of the active ring that raced with a steal fails its
 *     CAS on dpos and is discarded (never delivered torn or twice).
 *   - Shared ring pool: an index lane whose own free queue is empty borrows
 *     a ring from the target's pool (a lock-free LIFO stack, Treiber with a
 *     tag against ABA: producers pop, drainers push). Ring ids below
 *     rings_per_lane are the lane's own, id rings_per_lane + j is pool ring
 *     j. A borrowed ring travels like an own ring (active, submit queue,
 *     drainer) and goes back to the pool, not to the lane's free queue, when
 *     the writer acked it (or when its retired slot is reset). A lane holds
 *     at most LT_SUBMIT_QCAP - rings_per_lane pool rings (lane.pool_held,
 *     +1 by the producer, -1 by the drainer), so its submit queue, of
 *     LT_SUBMIT_QCAP entries, cannot overflow; its free queue holds own
 *     rings only.
 *   - Backpressure: a detail lane without a free ring overwrites its oldest
 *     undrained ring (detail_overwritten) and drops the new record only if
 *     every ring is in the drainer's hands (detail_pool_exhausted). An index
 *     lane without a free own ring and nothing left to borrow drops the new
 *     record (pool_exhausted): its older rings may already be on their way
 *     to the writer and cannot be taken back. With ctl.no_drop set the
 *     producer waits for a ring instead (spins, then sleeps in small steps;
 *     it holds no lock), up to ctl.block_timeout_ns, then drops and counts
 *     blocked_timeout; it keeps dropping without waiting until a ring is
 *     free again, so a stalled pipeline costs one timeout, not one per
 *     event. Every drop is counted per thread and lane in the drop log;
 *     index seq gaps == index drops.
 *   - Routing: a producer caches mode, its shard's fallback flag and the
 *     detail switch as `route`, re-read at its periodic check (every
 *     LT_CHECK_EVENTS events and at each index ring swap), where it also
 *     runs the agent's mode machine (auto_mode). So the hot path reads no
 *     control-block field at all, and detail off costs nothing there.
 *   - lt_shard_state[k] belongs to the drainer of shard k.
 *   - Marks: appended by anyone (agent triggers, injector) via fetch_add on
 *     mark_claim; entry i is owned by whoever claimed i.
 *   - Drop log: entry i is owned by whoever claimed it via drop_log_claim
 *     (key fields written once); counts are added by any producer.
 *
 * Memory ordering (every atomic and its pairing):
 *   ctl.registry_ready   release by creator after init | acquire by open()
 *   ctl.registry_mode    release CAS/exchange by writers (after mode_since_ns)
 *                        | acquire by the agent's policy check (sees a
 *                        mode_since_ns at least as new as the mode). Producers
 *                        only use it to select a lane; no data is published
 *                        through it.
 *   ctl.shard_fallback,
 *   ctl.detail_on,
 *   ctl.stack_bytes      relaxed values; registry_epoch is bumped (release)
 *                        after every change, and a producer re-reads them
 *                        after an acquire load of the epoch.
 *   ctl.registry_epoch   release fetch_add by every writer of the selectors
 *                        above | acquire by producers (periodic check).
 *   ctl.mode_since_ns,
 *   ctl.fallback_since_ns  relaxed; ordered by the mode/fallback CAS above.
 *   ctl.heartbeat_ns[k]  relaxed: freshness hint only.
 *   ctl.auto_mode, ctl.stale_ns  relaxed config knobs.
 *   ctl.target_exited    release by injector | acquire by drainers.
 *   ctl.clock            release by lt_tsc_enable after tsc_base, tsc_base_ns,
 *                        tsc_mult | acquire by lt_init and by drainers before
 *                        they read those (tsc.h).
 *   ctl.counters/drops   relaxed: statistics, no ordering needed.
 *   ctl.mark_claim       relaxed fetch_add (claims an index, no data);
 *   mark.ready           release by the claimer after the mark fields |
 *                        acquire by readers (lt_shm_marks).
 *   ctl.drop_log_claim   relaxed fetch_add (claims an index);
 *   drop_entry.ready     release by the claimer after tid/lane/reason |
 *                        acquire by readers before the key fields.
 *   drop_entry.count     relaxed fetch_add: statistics.
 *   slot.state           claim CAS (FREE|RETIRING)->ACTIVE acquire: pairs with
 *                        the drainer's release store of FREE after it reset the
 *                        lanes, or the previous owner's release of RETIRING
 *                        (lane state, fills). Release store of RETIRING by the
 *                        producer pairs with the drainer's acquire load / CAS
 *                        (final fills, submits, generation visible).
 *   slot.generation      release fetch_add by each new owner right after its
 *                        claim | acquire load by the drainer BEFORE it loads
 *                        state (so a generation it sees is never newer than
 *                        the owner whose RETIRING it sees); re-read after the
 *                        drainer's acquire CAS RETIRING->RESETTING, which pairs
 *                        with the last owner's RETIRING release.
 *   lane.fill[r]         release store by producer after writing record bytes
 *                        | acquire load by drainer before copying them.
 *   lane.submit_tail     release by producer after submit_q[] entry and final
 *                        fill | acquire by drainer.
 *   lane.active          release by producer (NONE before a submit, new ring
 *                        after fill[new]=0) | acquire by drainer. Drainer
 *                        loads active BEFORE submit_tail, so a ring it sees as
 *                        active is either still active or was submitted since
 *                        and appears in submit_q[pos, tail); then it is read
 *                        only there, never twice.
 *   lane.free_tail       release by drainer after it finished reading the ring
 *                        and wrote free_q[] | acquire by producer.
 *   lane.submit_head     index lane: relaxed, drainer-owned. Detail lane:
 *                        acq_rel CAS by drainer (claim before copy) and
 *                        producer (steal); the CAS winner owns the ring.
 *   lane.free_head       relaxed: only the producer reads it.
 *   lane.dpos            acq_rel CAS by drainer (after copying, from the
 *                        value it loaded before copying) and by the stealing
 *                        producer (tag+1 before it rewrites the stolen ring);
 *                        the drainer loads it (acquire) before active/fill.
 *   global cell.seq      Vyukov bounded MPMC: producer release after writing
 *                        the record | drainer acquire; drainer release-CAS
 *                        pos+1 -> pos+capacity after the writer acked (CAS so a
 *                        stale claim never moves a reused cell) | producer
 *                        acquire. A shard records each claim [lo, hi) in
 *                        lt_shard_state before the deq_pos CAS, so a restarted
 *                        drainer re-collects it.
 *   global enq_pos/deq_pos  relaxed CAS; the cell sequence carries the data.
 *   pool.head            tag:32 | (ring + 1):32, 0 ring = empty. Pop: acquire
 *                        load, read next[ring], CAS (acquire) to tag+1|next;
 *                        push: next[ring] = old, release CAS to tag+1|ring.
 *                        The pusher (drainer) finished reading the ring before
 *                        the release; the popper (producer) writes it after.
 *                        A stale next read by a loser is never used: the tag
 *                        moved, its CAS fails.
 *   pool fill[j]         as lane.fill, for pool ring j.
 *   lane.pool_held       relaxed fetch_add/sub: a bound, carries no data.
 *   ctl.no_drop, ctl.block_timeout_ns  relaxed, re-read after the epoch.
 *   Plain fields: ack_ring/ack_off, submit_q/free_q entries (published by the
 *   tail stores above), lt_shard_state: owned by one role at a time (a
 *   restarted drainer reads what its dead predecessor wrote).
 */
#ifndef LANETRACE_SHM_H
#define LANETRACE_SHM_H

#include <stdint.h>
#include <stddef.h>
#include "lanetrace/record.h"

#ifdef __cplusplus
#define LT_ATOMIC(t) t
#else
#include <stdatomic.h>
#define LT_ATOMIC(t) _Atomic t
#endif

#define LT_SHM_MAGIC 0x31454e414c544cull /* "LTLANE1" */
#define LT_SHM_VERSION 2u
#define LT_MAX_SHARDS 16u
#define LT_MAX_RINGS_PER_LANE 64u
/* index lane submit queue: own rings plus borrowed pool rings */
#define LT_SUBMIT_QCAP 4096u
#define LT_MAX_POOL_RINGS (1u << 20)
#define LT_DEFAULT_BLOCK_TIMEOUT_NS 1000000000ull
#define LT_RING_NONE 0xffffffffu
#define LT_MAX_MARKS 16384u    /* 512 KiB; append-only for the target's life */
#define LT_DROP_LOG_ENTRIES 4096u
#define LT_GL_CLAIMS 6u          /* global-lane claims a shard may hold unacked */
#define LT_CHECK_EVENTS 1024u    /* a producer's periodic policy/epoch check */
#define LT_DEFAULT_STALE_NS 500000000ull

/* registry_mode */
#define LT_MODE_GLOBAL_ONLY 0u
#define LT_MODE_DUAL_WRITE 1u
#define LT_MODE_PER_THREAD_ONLY 2u

/* shard_fallback[k] values */
#define LT_FALLBACK_OFF 0u
#define LT_FALLBACK_WATCHDOG 1u
#define LT_FALLBACK_AGENT 2u

/* slot.state */
#define LT_SLOT_FREE 0u
#define LT_SLOT_ACTIVE 1u
#define LT_SLOT_RETIRING 2u  /* owner exited; data may still wait for the drainer */
#define LT_SLOT_RESETTING 3u /* drainer owns it while resetting the lanes */

/* lanes */
#define LT_LANE_INDEX 0u
#define LT_LANE_DETAIL 1u

/* drop reasons (index into drops[]); the lane is implied by the reason */
#define LT_DROP_NO_SLOT 0        /* more threads alive than registry slots */
#define LT_DROP_POOL_EXHAUSTED 1 /* every ring of the index lane waits for the drainer */
#define LT_DROP_DEPTH_OVERFLOW 2 /* shadow stack full: ENTRY not recorded, return not hooked */
#define LT_DROP_GLOBAL_FULL 3    /* global lane full (GLOBAL_ONLY / fallback) */
#define LT_DROP_THREAD_EXITING 4 /* event after the thread's slot was retired */
#define LT_DROP_ALLOC_FAILED 5   /* per-thread state could not be allocated */
#define LT_DROP_DETAIL_POOL_EXHAUSTED 6 /* detail: no free ring and none to overwrite (all held by the drainer) */
#define LT_DROP_DETAIL_NO_SLOT 7        /* detail: thread has no registry slot */
#define LT_DROP_DETAIL_OVERWRITTEN 8    /* detail: oldest undrained ring overwritten */
#define LT_DROP_MARKS_OVERFLOW 9        /* mark array full (not a record drop) */
#define LT_DROP_BLOCKED_TIMEOUT 10      /* no_drop: waited block_timeout_ns for a ring, none came */
#define LT_DROP_MAX 16

/* control-block counters (index into counters[]) */
#define LT_CTR_MODE_TRANSITIONS 0
#define LT_CTR_FALLBACK_EVENTS 1    /* shard fallback flag switched on */
#define LT_CTR_THREADS_REGISTERED 2 /* successful slot claims */
#define LT_CTR_THREADS_RETIRED 3    /* slots marked RETIRING */
#define LT_CTR_SLOTS_FREED 4        /* slots reset to FREE by drainers */
#define LT_CTR_RINGS_SUBMITTED 5
#define LT_CTR_REENTRANT_SKIPS 6    /* hooked calls made from inside our handler */
#define LT_CTR_IGNORED_THREADS 7    /* Frida/agent threads that passed through */
#define LT_CTR_GLOBAL_RECORDS 8     /* records written to the global lane */
#define LT_CTR_UNWOUND 9            /* frames closed by RETURN_UNWOUND */
#define LT_CTR_FALLBACK_CLEARS 10   /* shard fallback flag switched off */
#define LT_CTR_DETAIL_RECORDS 11    /* detail records written (added at each check,
                                       ring swap and thread exit, not per record) */
#define LT_CTR_DETAIL_RINGS_STOLEN 12 /* detail rings overwritten by their producer */
#define LT_CTR_MARKS 13             /* marks appended (incl. overflowed) */
#define LT_CTR_DROP_LOG_OVERFLOW 14 /* drops counted only in ctl.drops (log full) */
#define LT_CTR_AGENT_FALLBACKS 15   /* of FALLBACK_EVENTS: set by the agent itself */
#define LT_CTR_MAX 16

/* mark kinds */
#define LT_MARK_SYMBOL 1u
#define LT_MARK_CRASH 2u
#define LT_MARK_TIME 3u
#define LT_MARK_MANUAL 4u

/* producer route bits (process-local cache of mode/fallback/detail) */
#define LT_ROUTE_LANE 1u
#define LT_ROUTE_GLOBAL 2u
#define LT_ROUTE_DETAIL 4u

/* dpos: tag (30 bits) | ring (8 bits, 0xff = none) | off (26 bits) */
#define LT_DPOS_NONE_RING 0xffu
#define LT_DPOS_MAKE(tag, ring, off) \
    ((((uint64_t)(tag) & 0x3fffffffu) << 34) | (((uint64_t)(ring) & 0xffu) << 26) | ((uint64_t)(off) & 0x3ffffffu))
#define LT_DPOS_TAG(v) ((uint32_t)((v) >> 34))
#define LT_DPOS_RING(v) ((uint32_t)(((v) >> 26) & 0xffu))
#define LT_DPOS_OFF(v) ((uint32_t)((v) & 0x3ffffffu))

/* Config chosen by the injector (0 = default). */
typedef struct lt_shm_config {
    uint32_t slot_count;     /* default 64 */
    uint32_t shard_count;    /* default 1, max LT_MAX_SHARDS */
    uint32_t ring_bytes;     /* default 65536, multiple of 32, >= 1024 */
    uint32_t rings_per_lane; /* default 8, 2..LT_MAX_RINGS_PER_LANE */
    uint32_t global_records; /* default 16384, power of two */
    uint32_t detail_ring_bytes;     /* default 65536, multiple of 8, 4096..64MiB */
    uint32_t detail_rings_per_lane; /* default 4, 2..LT_MAX_RINGS_PER_LANE */
    uint32_t pool_rings;     /* shared pool of index rings; 0 = none, ..LT_MAX_POOL_RINGS */
} lt_shm_config;

/* Drainer-owned (shard k) progress on the global lane: cells [lo, hi) of
 * each claim were taken by this shard and are released back to producers at
 * commit (lo advances). A claim entry is free when lo == hi. */
typedef struct lt_shard_state {
    uint64_t gl_lo[LT_GL_CLAIMS];
    uint64_t gl_hi[LT_GL_CLAIMS];
    uint64_t reserved[4];
} lt_shard_state;

typedef struct lt_mark {
    uint64_t ts_ns;
    uint32_t func_id;
    uint32_t tid;
    uint16_t kind; /* LT_MARK_* */
    uint16_t pad;
    LT_ATOMIC(uint32_t) ready;
    uint64_t reserved;
} lt_mark;

typedef struct lt_drop_entry {
    LT_ATOMIC(uint64_t) count;
    LT_ATOMIC(uint32_t) ready;
    uint32_t tid;
    uint16_t lane;
    uint16_t reason;
    uint32_t pad;
} lt_drop_entry;

typedef struct lt_ctl {
    uint64_t magic;
    uint32_t version;
    uint32_t ctl_size;
    uint64_t total_size;
    uint32_t target_pid;
    uint32_t creator_pid;
    char session[64];
    /* config: immutable once registry_ready is published */
    uint32_t slot_count, shard_count, ring_bytes, ring_records;
    uint32_t rings_per_lane, global_records;
    uint64_t slots_off, slot_stride, rings_off, global_off;
    uint64_t created_ns;
    uint32_t detail_ring_bytes, detail_rings_per_lane;
    uint64_t drings_off, drop_log_off;
    /* record clock (tsc.h). tsc_created is written with created_ns at
     * creation; tsc_base, tsc_base_ns and tsc_mult once by lt_tsc_enable,
     * then clock (release) | acquire by lt_init and by each drainer batch
     * before the tsc_* fields. 40 bytes, where a pad was: no offset moved. */
    LT_ATOMIC(uint32_t) clock;   /* LT_CLOCK_*: what record timestamps count */
    uint32_t tsc_reserved;
    uint64_t tsc_created;        /* TSC read together with created_ns */
    uint64_t tsc_base;           /* TSC read together with tsc_base_ns */
    uint64_t tsc_base_ns;        /* CLOCK_MONOTONIC ns */
    uint64_t tsc_mult;           /* ns per tick << LT_TSC_SHIFT */

    LT_ATOMIC(uint32_t) registry_ready;
    LT_ATOMIC(uint32_t) registry_mode;
    LT_ATOMIC(uint64_t) registry_epoch;
    LT_ATOMIC(uint32_t) target_exited;
    LT_ATOMIC(uint32_t) agent_state; /* 0 none, 1 attached, 2 detached (info) */
    LT_ATOMIC(uint32_t) shard_fallback[LT_MAX_SHARDS];
    LT_ATOMIC(uint32_t) detail_on;
    LT_ATOMIC(uint32_t) stack_bytes;
    LT_ATOMIC(uint32_t) auto_mode; /* agent advances modes / falls back by itself */
    LT_ATOMIC(uint32_t) mark_claim;
    LT_ATOMIC(uint64_t) stale_ns;  /* heartbeat older than this = stale */
    LT_ATOMIC(uint64_t) mode_since_ns;
    LT_ATOMIC(uint32_t) drop_log_claim;
    uint8_t pad1[20];
    LT_ATOMIC(uint64_t) heartbeat_ns[LT_MAX_SHARDS];
    LT_ATOMIC(uint64_t) fallback_since_ns[LT_MAX_SHARDS];
    LT_ATOMIC(uint64_t) counters[LT_CTR_MAX];
    LT_ATOMIC(uint64_t) drops[LT_DROP_MAX]; /* drops not in the drop log */
    lt_shard_state shard[LT_MAX_SHARDS];
    lt_mark marks[LT_MAX_MARKS];
    /* shared ring pool: config immutable once registry_ready is published */
    uint64_t pool_off;       /* pool rings */
    uint64_t pool_table_off; /* uint32 next[pool_rings], then fill[pool_rings] */
    uint32_t pool_rings;
    uint32_t pool_pad;
    uint8_t pad2[40];
    LT_ATOMIC(uint64_t) pool_head; /* own cache line: producers and drainers CAS it */
    LT_ATOMIC(uint64_t) pool_borrows;   /* statistics: rings taken from the pool */
    LT_ATOMIC(uint32_t) pool_out;       /* rings out of the pool now */
    LT_ATOMIC(uint32_t) pool_peak;      /* most rings out at once */
    uint8_t pad3[40];
    /* runtime policy (see Ownership) */
    LT_ATOMIC(uint32_t) no_drop;
    uint32_t pad4;
    LT_ATOMIC(uint64_t) block_timeout_ns;
    LT_ATOMIC(uint64_t) blocked_ns;     /* statistics: time producers waited */
    LT_ATOMIC(uint64_t) blocked_waits;  /* statistics: waits that ended with a ring */
} lt_ctl;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(offsetof(lt_ctl, registry_ready) == 224, "the record-clock fields must stay inside the old pad");
#endif

typedef struct lt_lane {
    /* producer-written line */
    LT_ATOMIC(uint32_t) active;
    uint32_t pad1;
    LT_ATOMIC(uint64_t) submit_tail;
    LT_ATOMIC(uint64_t) free_head;
    LT_ATOMIC(uint64_t) dpos; /* detail lane only (see above) */
    uint8_t pad2[32];
    /* drainer-written line */
    LT_ATOMIC(uint64_t) submit_head;
    LT_ATOMIC(uint64_t) free_tail;
    uint32_t ack_ring; /* acked progress in a ring not yet freed (restart point) */
    uint32_t ack_off;
    LT_ATOMIC(uint32_t) pool_held; /* index lane: pool rings it holds (see Shared ring pool) */
    uint8_t pad3[36];
    uint32_t free_q[LT_MAX_RINGS_PER_LANE];
    LT_ATOMIC(uint32_t) fill[LT_MAX_RINGS_PER_LANE]; /* own rings; index: records; detail: bytes */
    uint32_t submit_q[LT_SUBMIT_QCAP]; /* index lane: % LT_SUBMIT_QCAP; detail: % its rings */
} lt_lane;

typedef struct lt_slot {
    /* registry line: state handoff between producer and drainer */
    LT_ATOMIC(uint32_t) state;
    LT_ATOMIC(uint32_t) tid;
    LT_ATOMIC(uint64_t) generation; /* +1 by each new owner */
    LT_ATOMIC(uint64_t) last_seq;   /* producer's seq at its last ring submit (diagnostics) */
    uint8_t pad0[40];
    lt_lane lane[2]; /* LT_LANE_INDEX, LT_LANE_DETAIL */
} lt_slot;

typedef struct lt_global_cell {
    LT_ATOMIC(uint64_t) seq;
    lt_index_record rec;
} lt_global_cell;

typedef struct lt_global {
    LT_ATOMIC(uint64_t) enq_pos;
    uint8_t pad0[56];
    LT_ATOMIC(uint64_t) deq_pos;
    uint8_t pad1[56];
    /* lt_global_cell cells[global_records] follow at offset 128 */
} lt_global;

/* A process-local view of a mapped segment. */
typedef struct lt_shm_map {
    void *base;
    size_t size;
    int fd;
} lt_shm_map;

/* ---- segment management (shm.c) ---- */
/* Returns 0 or -errno; err gets a human-readable message. */
int lt_shm_create(const char *name, const lt_shm_config *cfg, uint32_t target_pid,
                  const char *session, lt_shm_map *out, char *err, size_t errlen);
int lt_shm_open(const char *name, lt_shm_map *out, char *err, size_t errlen);
/* populate: prefault the mapping up to the detail rings (the agent does, so
 * the traced program takes no page faults on its first pass through each
 * index ring; detail rings are faulted in only if the lane is used) */
int lt_shm_open_ex(const char *name, lt_shm_map *out, char *err, size_t errlen, int populate);
/* that prefault alone, for a mapping opened without it */
void lt_shm_populate(const lt_shm_map *m);
void lt_shm_close(lt_shm_map *m);
int lt_shm_unlink(const char *name);

/* Plain copy of the immutable header fields (for cffi). */
typedef struct lt_shm_info {
    uint32_t target_pid, creator_pid;
    char session[64];
    uint32_t slot_count, shard_count, ring_bytes, rings_per_lane, global_records;
    uint64_t total_size, created_ns;
    uint32_t detail_ring_bytes, detail_rings_per_lane;
    uint32_t pool_rings;
    uint64_t prefault_bytes; /* the part of the segment the agent populates */
} lt_shm_info;

/* Plain rows for cffi readers. */
typedef struct lt_mark_row {
    uint64_t ts_ns;
    uint32_t func_id, tid, kind;
} lt_mark_row;
typedef struct lt_drop_row {
    uint64_t count;
    uint32_t tid, lane, reason;
} lt_drop_row;

/* control-block accessors (shm.c); orderings as documented above */
void lt_shm_info_get(const lt_shm_map *m, lt_shm_info *out);
int lt_shm_set_mode(const lt_shm_map *m, uint32_t mode);
uint32_t lt_shm_mode(const lt_shm_map *m);
uint64_t lt_shm_epoch(const lt_shm_map *m);
int lt_shm_set_shard_fallback(const lt_shm_map *m, uint32_t shard, uint32_t on);
uint32_t lt_shm_shard_fallback(const lt_shm_map *m, uint32_t shard);
int lt_shm_heartbeat_set(const lt_shm_map *m, uint32_t shard, uint64_t ns);
uint64_t lt_shm_heartbeat_get(const lt_shm_map *m, uint32_t shard);
void lt_shm_mark_exited(const lt_shm_map *m);
uint32_t lt_shm_target_exited(const lt_shm_map *m);
void lt_shm_set_agent_state(const lt_shm_map *m, uint32_t st);
uint32_t lt_shm_agent_state(const lt_shm_map *m);
void lt_shm_drops(const lt_shm_map *m, uint64_t out[LT_DROP_MAX]);   /* drop log + control */
void lt_shm_counters(const lt_shm_map *m, uint64_t out[LT_CTR_MAX]);
void lt_shm_slot_census(const lt_shm_map *m, uint32_t out[4]); /* FREE, ACTIVE, RETIRING, RESETTING */
/* detail lane switch; stack_bytes 0..LT_DETAIL_MAX_STACK. -EINVAL otherwise */
int lt_shm_set_detail(const lt_shm_map *m, uint32_t on, uint32_t stack_bytes);
void lt_shm_detail(const lt_shm_map *m, uint32_t out[2]); /* on, stack_bytes */
/* agent policy: auto (0/1), stale_ns (0 = keep) */
void lt_shm_set_policy(const lt_shm_map *m, uint32_t auto_mode, uint64_t stale_ns);
void lt_shm_policy(const lt_shm_map *m, uint64_t out[3]); /* auto, stale_ns, mode_since_ns */
/* drop policy: no_drop 0/1, block timeout (0 = keep) */
void lt_shm_set_drop_policy(const lt_shm_map *m, uint32_t no_drop, uint64_t block_timeout_ns);
/* no_drop, block_timeout_ns, blocked_ns, blocked_waits, pool_rings,
 * pool_out, pool_peak, pool_borrows */
void lt_shm_pool_stats(const lt_shm_map *m, uint64_t out[8]);
/* marks: 0, or -ENOSPC when the array is full (counted as marks_overflow) */
int lt_shm_add_mark(const lt_shm_map *m, uint64_t ts, uint32_t kind, uint32_t func_id, uint32_t tid);
/* marks [start, ...) in append order, at most max; stops before the first
 * claimed-but-unwritten mark, so a reader that continues at start+n misses
 * nothing */
uint32_t lt_shm_marks(const lt_shm_map *m, uint32_t start, lt_mark_row *out, uint32_t max);
uint32_t lt_shm_drop_log(const lt_shm_map *m, lt_drop_row *out, uint32_t max);

static inline lt_ctl *lt_ctl_of(const lt_shm_map *m) { return (lt_ctl *)m->base; }
static inline lt_slot *lt_slot_at(lt_ctl *c, uint32_t i)
{
    return (lt_slot *)((char *)c + c->slots_off + (uint64_t)i * c->slot_stride);
}
/* Index ring `ring` of a slot: its own (ring < rings_per_lane) or pool ring
 * ring - rings_per_lane. */
static inline lt_index_record *lt_ring_at(lt_ctl *c, uint32_t slot, uint32_t ring)
{
    if (ring >= c->rings_per_lane)
        return (lt_index_record *)((char *)c + c->pool_off + (uint64_t)(ring - c->rings_per_lane) * c->ring_bytes);
    return (lt_index_record *)((char *)c + c->rings_off +
                               ((uint64_t)slot * c->rings_per_lane + ring) * c->ring_bytes);
}
static inline uint32_t *lt_pool_next(lt_ctl *c) { return (uint32_t *)((char *)c + c->pool_table_off); }
/* fill counter of index ring `ring` of lane L (see lt_ring_at) */
static inline LT_ATOMIC(uint32_t) *lt_fill_at(lt_ctl *c, lt_lane *L, uint32_t ring)
{
    if (ring >= c->rings_per_lane)
        return (LT_ATOMIC(uint32_t) *)(lt_pool_next(c) + c->pool_rings) + (ring - c->rings_per_lane);
    return &L->fill[ring];
}
static inline uint8_t *lt_dring_at(lt_ctl *c, uint32_t slot, uint32_t ring)
{
    return (uint8_t *)c + c->drings_off +
           ((uint64_t)slot * c->detail_rings_per_lane + ring) * c->detail_ring_bytes;
}
static inline lt_global *lt_global_of(lt_ctl *c) { return (lt_global *)((char *)c + c->global_off); }
/* After changing a route selector (mode, shard fallback, detail, policy);
 * pairs with the producers' acquire of the epoch at their check. */
static inline void lt_bump_epoch(lt_ctl *c)
{
    atomic_fetch_add_explicit(&c->registry_epoch, 1, memory_order_release);
}
static inline lt_global_cell *lt_global_cells(lt_ctl *c)
{
    return (lt_global_cell *)((char *)lt_global_of(c) + 128);
}
static inline lt_drop_entry *lt_drop_log(lt_ctl *c)
{
    return (lt_drop_entry *)((char *)c + c->drop_log_off);
}

/* Drainer resets a retired slot's lanes (all rings free, queues empty, a
 * pool ring it still held back in the pool). Also used at create. */
void lt_lane_reset(lt_ctl *c, uint32_t slot);
/* Shared ring pool (lanes.c): pop a ring (its lane id, fill 0) for lane L,
 * or LT_RING_NONE; push pool ring `ring` (a lane id >= rings_per_lane) back. */
uint32_t lt_pool_take(lt_ctl *c, lt_lane *L);
void lt_pool_give(lt_ctl *c, lt_lane *L, uint32_t ring);
/* 1 when the detail lane of the slot holds nothing uncollected */
int lt_detail_lane_empty(lt_ctl *c, uint32_t slot);
/* Add n drops of (lane, reason) for thread tid: drop log, or ctl.drops when
 * the log is full. cache (may be NULL) remembers the entry (index + 1). */
void lt_drop_add(lt_ctl *c, uint32_t tid, uint32_t lane, uint32_t reason, uint64_t n, uint16_t *cache);
int lt_mark_add(lt_ctl *c, uint64_t ts, uint32_t kind, uint32_t func_id, uint32_t tid);

/* ---- producer side (shm.c, also linked into the agent) ----
 * A producer is one thread's process-local handle on its slot. Not shared.
 * The first 64 bytes are what the agent's fast path touches. */
typedef struct lt_producer {
    lt_ctl *ctl;
    lt_slot *slot;            /* NULL: no slot (claim failed or not yet tried) */
    lt_index_record *ring;    /* active index ring bytes, NULL if none */
    LT_ATOMIC(uint32_t) *ring_fill; /* the active ring's published fill */
    uint32_t ring_idx;
    uint32_t fill;
    uint32_t cap;
    uint32_t tid;
    uint32_t route;           /* LT_ROUTE_* as of the last check */
    uint32_t countdown;       /* events until the next check */
    uint64_t seq;             /* last seq handed out */
    /* cold */
    uint32_t slot_idx;
    uint32_t shard;           /* slot_idx % shard_count, cached */
    uint32_t no_drop;         /* ctl.no_drop as of the last check */
    uint32_t gave_up;         /* no_drop: timed out, drop without waiting until a ring is free */
    uint64_t block_ns;        /* ctl.block_timeout_ns as of the last check */
    uint32_t retired;
    uint32_t stack_bytes;     /* detail stack copy length as of the last check */
    uint64_t no_slot_epoch;   /* SLOTS_FREED+RETIRED value at the last failed claim */
    uint64_t epoch_seen;
    uint8_t *dring;           /* active detail ring, NULL if none */
    uint32_t dring_idx;
    uint32_t dfill;           /* bytes */
    uint32_t dcap;            /* bytes */
    uint32_t dcount;          /* detail records not yet added to the counter */
    uint16_t dlog[2][LT_DROP_MAX]; /* drop-log entry + 1 per (lane, reason) */
} lt_producer;

/* What a detail record carries besides the index fields. */
typedef struct lt_detail_src {
    const uint64_t *regs;  /* ENTRY: rdi rsi rdx rcx r8 r9 rsp; RETURN: rax rdx */
    uint32_t nregs;
    uint32_t stack_len;    /* bytes to copy from `stack` (clamped to 512) */
    const uint8_t *stack;
} lt_detail_src;

/* Try to claim a slot; 0 on success, -1 when all slots are taken (retry later). */
int lt_prod_claim(lt_producer *p, lt_ctl *c, uint32_t tid);
/* Append one record (takes the next seq). Never blocks; drops are counted.
 * Runs the periodic check when due. */
void lt_prod_emit(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth);
/* Same with detail data (used when the detail lane is on; ds may be NULL). */
void lt_prod_emit_detail(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth,
                         const lt_detail_src *ds);
/* The agent's slow path: the caller already decremented countdown. */
void lt_prod_write(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth,
                   const lt_detail_src *ds);
/* Detail record for the index record just written (seq = p->seq); the
 * agent's inline path with the detail lane on. */
void lt_prod_detail(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, const lt_detail_src *ds);
/* Periodic check: agent policy (auto mode, heartbeat fallback), epoch,
 * route. Called when countdown reaches 0 and at ring swaps; now is a record
 * timestamp in the segment's clock (tsc.h). */
void lt_prod_refresh(lt_producer *p, uint64_t now);
/* Count a drop of one index record (its seq is consumed by the caller). */
void lt_prod_drop(lt_producer *p, int reason);
/* Thread exit: publish the partial rings, mark the slot RETIRING. */
void lt_prod_retire(lt_producer *p);
/* Global lane enqueue; returns 0 or -1 when full. */
int lt_global_push(lt_ctl *c, const lt_index_record *r);

uint64_t lt_now_ns(void);

/* ---- consumer side (drain.c; cffi extension only) ----
 * One lt_drain per shard and drainer process; process-local cursors. */
typedef struct lt_drain lt_drain;
lt_drain *lt_drain_open(lt_shm_map *m, uint32_t shard);
void lt_drain_free(lt_drain *d);
/* Copy new committed index records (whole 32-byte records, per-thread lanes
 * of this shard, then claimed cells of the global lane) into buf; never
 * blocks. Every call is a batch: *token (may be NULL) identifies it. */
size_t lt_drain_collect_batch(lt_drain *d, void *buf, size_t max_bytes, uint64_t *token);
size_t lt_drain_collect(lt_drain *d, void *buf, size_t max_bytes);
/* Batches up to and including `token` are acked: return their rings, free
 * retired slots, release global cells. Returns the number of slots freed. */
int lt_drain_commit_upto(lt_drain *d, uint64_t token);
/* Everything collected so far is acked. */
int lt_drain_commit(lt_drain *d);
/* Detail lane: copy whole records of filled rings (and the published part
 * of active ones) and give the rings back at once. max_bytes must be >=
 * detail_ring_bytes to make progress on a full ring. */
size_t lt_drain_collect_detail(lt_drain *d, void *buf, size_t max_bytes);
/* 1 when the target exited and nothing is left to collect or commit. */
int lt_drain_idle_complete(lt_drain *d);
/* batches collected and not yet committed */
uint32_t lt_drain_pending(lt_drain *d);

#endif /* LANETRACE_SHM_H */
