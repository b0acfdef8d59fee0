/*
 * lanetrace/shm.h — layout of a target's shared-memory segment
 * (/lanetrace-<session>-<pid>-lanes) and the producer/consumer primitives.
 *
 * Segment layout (all positions are byte offsets from the segment base; the
 * segment holds no absolute pointers, every process materializes its own):
 *
 *   [lt_ctl]            control block, 4 KiB aligned
 *   [lt_slot x N]       thread registry; one lane (queues, ring fills) per slot
 *   [rings]             N * rings_per_lane * ring_bytes of lt_index_record
 *   [lt_global]         global multi-producer lane header + cells
 *
 * Ownership:
 *   - Config fields of lt_ctl are written once by the creator (injector)
 *     before registry_ready is published; everybody else only reads them.
 *   - A slot is owned by the thread that CASed it FREE->ACTIVE until it
 *     stores RETIRING (at thread exit; its partial ring stays active and
 *     published). A RETIRING slot is either taken over by a new thread
 *     (CAS RETIRING->ACTIVE; it continues the same lane, so slot reuse never
 *     waits for a drainer) or, once everything was collected and acked, by
 *     the drainer of shard (slot % shard_count): CAS RETIRING->RESETTING,
 *     check the generation did not move (no takeover+retire in between),
 *     reset the lane, store FREE.
 *   - Inside a lane: the producer owns `active`, `submit_tail`, `free_head`,
 *     the fill of its active ring and the ring bytes of its active ring; the
 *     drainer owns `submit_head`, `free_tail`, `ack_ring/ack_off` and every
 *     ring between submit and free.  A ring index is in exactly one place at
 *     a time (active, submit queue, free queue), so neither SPSC queue can
 *     overflow its rings_per_lane entries and no capacity check is needed.
 *   - lt_shard_state[k] belongs to the drainer of shard k.
 *
 * Memory ordering (every atomic and its pairing):
 *   ctl.registry_ready   release by creator after init | acquire by open()
 *   ctl.registry_mode,
 *   ctl.shard_fallback   relaxed: they only select which lane a record goes
 *                        to; no data is published through them. registry_epoch
 *                        is bumped (release) after a change so a reader that
 *                        acquires the epoch sees the new mode.
 *   ctl.heartbeat_ns[k]  relaxed: freshness hint only.
 *   ctl.target_exited    release by injector | acquire by drainers.
 *   ctl.counters/drops,
 *   slot.drops           relaxed: statistics, no ordering needed.
 *   slot.state           claim CAS (FREE|RETIRING)->ACTIVE acquire: pairs with
 *                        the drainer's release store of FREE after it reset the
 *                        lane, or the previous owner's release of RETIRING
 *                        (lane state, fills). Release store of RETIRING by the
 *                        producer pairs with the drainer's acquire load / CAS
 *                        (final fills, submits, generation visible).
 *   slot.generation      release fetch_add by each new owner right after its
 *                        claim | acquire load by the drainer BEFORE it loads
 *                        state (so a generation it sees is never newer than
 *                        the owner whose RETIRING it sees); re-read after the
 *                        drainer's acquire CAS RETIRING->RESETTING, which pairs
 *                        with the last owner's RETIRING release.
 *   ring fill[r]         release store by producer after writing record bytes
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
 *   lane.submit_head,
 *   lane.free_head       relaxed: only their owner reads them for its own
 *                        bookkeeping (no capacity checks, see above).
 *   global cell.seq      Vyukov bounded MPMC: producer release after writing
 *                        the record | drainer acquire; drainer release-CAS
 *                        pos+1 -> pos+capacity after the writer acked (CAS so a
 *                        stale claim never moves a reused cell) | producer
 *                        acquire. A shard records its claim [lo, hi) in
 *                        lt_shard_state before the deq_pos CAS, so a restarted
 *                        drainer re-collects it.
 *   global enq_pos/deq_pos  relaxed CAS; the cell sequence carries the data.
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
#define LT_SHM_VERSION 1u
#define LT_MAX_SHARDS 16u
#define LT_MAX_RINGS_PER_LANE 64u
#define LT_RING_NONE 0xffffffffu

/* registry_mode */
#define LT_MODE_GLOBAL_ONLY 0u
#define LT_MODE_DUAL_WRITE 1u
#define LT_MODE_PER_THREAD_ONLY 2u

/* slot.state */
#define LT_SLOT_FREE 0u
#define LT_SLOT_ACTIVE 1u
#define LT_SLOT_RETIRING 2u  /* owner exited; data may still wait for the drainer */
#define LT_SLOT_RESETTING 3u /* drainer owns it while resetting the lane */

/* drop reasons (index into drops[]) */
#define LT_DROP_NO_SLOT 0        /* more threads alive than registry slots */
#define LT_DROP_POOL_EXHAUSTED 1 /* every ring of the lane waits for the drainer */
#define LT_DROP_DEPTH_OVERFLOW 2 /* shadow stack full: ENTRY not recorded, return not hooked */
#define LT_DROP_GLOBAL_FULL 3    /* global lane full (GLOBAL_ONLY / fallback) */
#define LT_DROP_THREAD_EXITING 4 /* event after the thread's slot was retired */
#define LT_DROP_ALLOC_FAILED 5   /* per-thread state could not be allocated */
#define LT_DROP_MAX 8

/* control-block counters (index into counters[]) */
#define LT_CTR_MODE_TRANSITIONS 0
#define LT_CTR_FALLBACK_EVENTS 1
#define LT_CTR_THREADS_REGISTERED 2 /* successful slot claims */
#define LT_CTR_THREADS_RETIRED 3    /* slots marked RETIRING */
#define LT_CTR_SLOTS_FREED 4        /* slots reset to FREE by drainers */
#define LT_CTR_RINGS_SUBMITTED 5
#define LT_CTR_REENTRANT_SKIPS 6    /* hooked calls made from inside our handler */
#define LT_CTR_IGNORED_THREADS 7    /* Frida/agent threads that passed through */
#define LT_CTR_GLOBAL_RECORDS 8     /* records written to the global lane */
#define LT_CTR_UNWOUND 9            /* frames closed by RETURN_UNWOUND */
#define LT_CTR_MAX 16

/* Config chosen by the injector (0 = default). */
typedef struct lt_shm_config {
    uint32_t slot_count;     /* default 64 */
    uint32_t shard_count;    /* default 1, max LT_MAX_SHARDS */
    uint32_t ring_bytes;     /* default 65536, multiple of 32, >= 1024 */
    uint32_t rings_per_lane; /* default 8, 2..LT_MAX_RINGS_PER_LANE */
    uint32_t global_records; /* default 16384, power of two */
} lt_shm_config;

/* Drainer-owned (shard k) progress on the global lane: cells [lo, hi) were
 * claimed by this shard and are released back to producers at commit. */
typedef struct lt_shard_state {
    uint64_t gl_claim_lo;
    uint64_t gl_claim_hi;
    uint64_t reserved[6];
} lt_shard_state;

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
    uint8_t pad0[64];

    LT_ATOMIC(uint32_t) registry_ready;
    LT_ATOMIC(uint32_t) registry_mode;
    LT_ATOMIC(uint64_t) registry_epoch;
    LT_ATOMIC(uint32_t) target_exited;
    LT_ATOMIC(uint32_t) agent_state; /* 0 none, 1 attached, 2 detached (info) */
    LT_ATOMIC(uint32_t) shard_fallback[LT_MAX_SHARDS];
    uint8_t pad1[56];
    LT_ATOMIC(uint64_t) heartbeat_ns[LT_MAX_SHARDS];
    LT_ATOMIC(uint64_t) counters[LT_CTR_MAX];
    LT_ATOMIC(uint64_t) drops[LT_DROP_MAX]; /* drops not attributable to a slot */
    lt_shard_state shard[LT_MAX_SHARDS];
} lt_ctl;

typedef struct lt_slot {
    /* registry line: state handoff between producer and drainer */
    LT_ATOMIC(uint32_t) state;
    LT_ATOMIC(uint32_t) tid;
    LT_ATOMIC(uint64_t) generation; /* +1 each time the slot is freed */
    /* cumulative over every thread that used this slot, so sums never shrink */
    LT_ATOMIC(uint64_t) drops[LT_DROP_MAX];
    LT_ATOMIC(uint64_t) last_seq; /* producer's seq at its last ring submit (diagnostics) */
    uint8_t pad0[24];
    /* producer-written line */
    LT_ATOMIC(uint32_t) active;
    uint32_t pad1;
    LT_ATOMIC(uint64_t) submit_tail;
    LT_ATOMIC(uint64_t) free_head;
    uint8_t pad2[40];
    /* drainer-written line */
    LT_ATOMIC(uint64_t) submit_head;
    LT_ATOMIC(uint64_t) free_tail;
    uint32_t ack_ring; /* acked progress in a ring not yet freed (restart point) */
    uint32_t ack_off;
    uint8_t pad3[40];
    uint32_t submit_q[LT_MAX_RINGS_PER_LANE];
    uint32_t free_q[LT_MAX_RINGS_PER_LANE];
    LT_ATOMIC(uint32_t) fill[LT_MAX_RINGS_PER_LANE];
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
/* populate: prefault the whole mapping (the agent does, so the traced
 * program takes no page faults on its first pass through each ring) */
int lt_shm_open_ex(const char *name, lt_shm_map *out, char *err, size_t errlen, int populate);
void lt_shm_close(lt_shm_map *m);
int lt_shm_unlink(const char *name);

/* Plain copy of the immutable header fields (for cffi). */
typedef struct lt_shm_info {
    uint32_t target_pid, creator_pid;
    char session[64];
    uint32_t slot_count, shard_count, ring_bytes, rings_per_lane, global_records;
    uint64_t total_size, created_ns;
} lt_shm_info;

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
void lt_shm_drops(const lt_shm_map *m, uint64_t out[LT_DROP_MAX]);   /* slots + control */
void lt_shm_counters(const lt_shm_map *m, uint64_t out[LT_CTR_MAX]);
void lt_shm_slot_census(const lt_shm_map *m, uint32_t out[4]); /* FREE, ACTIVE, RETIRING, RESETTING */

static inline lt_ctl *lt_ctl_of(const lt_shm_map *m) { return (lt_ctl *)m->base; }
static inline lt_slot *lt_slot_at(lt_ctl *c, uint32_t i)
{
    return (lt_slot *)((char *)c + c->slots_off + (uint64_t)i * c->slot_stride);
}
static inline lt_index_record *lt_ring_at(lt_ctl *c, uint32_t slot, uint32_t ring)
{
    return (lt_index_record *)((char *)c + c->rings_off +
                               ((uint64_t)slot * c->rings_per_lane + ring) * c->ring_bytes);
}
static inline lt_global *lt_global_of(lt_ctl *c) { return (lt_global *)((char *)c + c->global_off); }
static inline lt_global_cell *lt_global_cells(lt_ctl *c)
{
    return (lt_global_cell *)((char *)lt_global_of(c) + 128);
}

/* Drainer resets a retired lane (all rings free, queues empty). Also used at create. */
void lt_lane_reset(lt_ctl *c, uint32_t slot);

/* ---- producer side (shm.c, also linked into the agent) ----
 * A producer is one thread's process-local handle on its slot. Not shared. */
typedef struct lt_producer {
    lt_ctl *ctl;
    lt_slot *slot;            /* NULL: no slot (claim failed or not yet tried) */
    lt_index_record *ring;    /* active ring bytes, NULL if none */
    uint32_t slot_idx;
    uint32_t ring_idx;
    uint32_t fill;
    uint32_t cap;
    uint32_t tid;
    uint32_t retired;
    uint32_t shard;           /* slot_idx % shard_count, cached */
    uint32_t pad;
    uint64_t seq;             /* last seq handed out */
    uint64_t no_slot_epoch;   /* SLOTS_FREED value at the last failed claim */
} lt_producer;

/* Try to claim a slot; 0 on success, -1 when all slots are taken (retry later). */
int lt_prod_claim(lt_producer *p, lt_ctl *c, uint32_t tid);
/* Append one record (takes the next seq). Never blocks; drops are counted. */
void lt_prod_emit(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth);
/* Count a drop of one record (its seq is consumed by the caller). */
void lt_prod_drop(lt_producer *p, int reason);
/* Thread exit: publish the partial ring, mark the slot RETIRING. */
void lt_prod_retire(lt_producer *p);
/* Global lane enqueue; returns 0 or -1 when full. */
int lt_global_push(lt_ctl *c, const lt_index_record *r);

uint64_t lt_now_ns(void);

/* ---- consumer side (drain.c; cffi extension only) ----
 * One lt_drain per shard and drainer process; process-local cursors. */
typedef struct lt_drain lt_drain;
lt_drain *lt_drain_open(lt_shm_map *m, uint32_t shard);
void lt_drain_free(lt_drain *d);
/* Copy new committed records (whole 32-byte records) into buf; never blocks. */
size_t lt_drain_collect(lt_drain *d, void *buf, size_t max_bytes);
/* Everything collected so far is acked: return rings, free retired slots,
 * release global cells. Returns the number of slots freed. */
int lt_drain_commit(lt_drain *d);
/* 1 when the target exited and nothing is left to collect or commit. */
int lt_drain_idle_complete(lt_drain *d);

#endif /* LANETRACE_SHM_H */
