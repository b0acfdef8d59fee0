/*
 * lanes.c — the producer side of the shared-memory lanes, run inside the
 * target on hooked functions' stacks (README.md): a thread's slot claim, its
 * ring-pool swap, the global lane, the registry-mode policy, the drop log and
 * trigger marks. No libc on the record path, no locks, never blocks. Also
 * linked into the cffi extension, where tests drive it and the injector adds
 * time marks. See shm.h for ownership and memory ordering.
 */
#include "lanetrace/shm.h"
#include "lanetrace/tsc.h"

#include <errno.h>

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define ACQREL memory_order_acq_rel

/* ------------------------------------------------------------------ */
/* drop log and marks (rare paths; also used by the injector)          */

static int32_t drop_log_claim(lt_ctl *c, uint32_t tid, uint32_t lane, uint32_t reason)
{
    uint32_t i = atomic_fetch_add_explicit(&c->drop_log_claim, 1, RLX);
    if (i >= LT_DROP_LOG_ENTRIES)
        return -1;
    lt_drop_entry *e = &lt_drop_log(c)[i];
    e->tid = tid;
    e->lane = (uint16_t)lane;
    e->reason = (uint16_t)reason;
    /* pairs with the readers' acquire: key fields visible */
    atomic_store_explicit(&e->ready, 1, REL);
    return (int32_t)i;
}

void lt_drop_add(lt_ctl *c, uint32_t tid, uint32_t lane, uint32_t reason, uint64_t n, uint16_t *cache)
{
    lt_drop_entry *log = lt_drop_log(c);
    int32_t i = -1;
    if (cache && *cache) {
        i = *cache - 1;
    } else {
        /* a thread's drops of one kind share one entry: find it (a stolen
         * ring can hold a previous owner's records), else claim one */
        uint32_t n_ent = atomic_load_explicit(&c->drop_log_claim, RLX);
        if (n_ent > LT_DROP_LOG_ENTRIES)
            n_ent = LT_DROP_LOG_ENTRIES;
        for (uint32_t k = 0; k < n_ent && i < 0; k++)
            if (atomic_load_explicit(&log[k].ready, ACQ) && log[k].tid == tid && log[k].lane == lane &&
                log[k].reason == reason)
                i = (int32_t)k;
        if (i < 0)
            i = drop_log_claim(c, tid, lane, reason);
        if (i >= 0 && cache)
            *cache = (uint16_t)(i + 1);
    }
    if (i < 0) {
        atomic_fetch_add_explicit(&c->drops[reason], n, RLX);
        atomic_fetch_add_explicit(&c->counters[LT_CTR_DROP_LOG_OVERFLOW], n, RLX);
        return;
    }
    atomic_fetch_add_explicit(&log[i].count, n, RLX);
}

int lt_mark_add(lt_ctl *c, uint64_t ts, uint32_t kind, uint32_t func_id, uint32_t tid)
{
    atomic_fetch_add_explicit(&c->counters[LT_CTR_MARKS], 1, RLX);
    uint32_t i = atomic_fetch_add_explicit(&c->mark_claim, 1, RLX);
    if (i >= LT_MAX_MARKS) {
        atomic_fetch_add_explicit(&c->drops[LT_DROP_MARKS_OVERFLOW], 1, RLX);
        return -ENOSPC;
    }
    lt_mark *mk = &c->marks[i];
    mk->ts_ns = ts;
    mk->func_id = func_id;
    mk->tid = tid;
    mk->kind = (uint16_t)kind;
    /* pairs with the acquire in lt_shm_marks */
    atomic_store_explicit(&mk->ready, 1, REL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* producer side                                                       */

static inline int lane_of(int reason)
{
    return reason >= LT_DROP_DETAIL_POOL_EXHAUSTED && reason <= LT_DROP_DETAIL_OVERWRITTEN ? LT_LANE_DETAIL
                                                                                          : LT_LANE_INDEX;
}

static void count_drop(lt_producer *p, int reason)
{
    int lane = lane_of(reason);
    lt_drop_add(p->ctl, p->tid, lane, reason, 1, &p->dlog[lane][reason]);
}

void lt_prod_drop(lt_producer *p, int reason) { count_drop(p, reason); }

/* ------------------------------------------------------------------ */
/* shared ring pool (see shm.h, "Shared ring pool")                    */

#define MADV_POPULATE_WRITE_ 23 /* Linux 5.14; older kernels say EINVAL: the pages fault in as before */

/* Pool rings this process has mapped, by segment: a pool page is created
 * by the first write of any process (tmpfs), and mapped into a process by
 * its first access there. Relaxed bytes: a lost update only populates a
 * ring twice. */
static _Atomic uint64_t pool_mapped_key;
static _Atomic uint8_t pool_mapped[LT_MAX_POOL_RINGS / 8];

/* A borrowed pool ring seen for the first time in this process gets all its
 * pages created and mapped in one madvise, where the producer would take a
 * write fault on every page (a fresh tmpfs page: ~2.5-5 us each under a
 * hypervisor, 1/128 of the records of a growing pool). One raw syscall per
 * ring (no libc, no errno); later borrows of the same ring pay nothing. */
static void pool_populate(lt_ctl *c, uint32_t j)
{
    /* a segment mapped where an earlier one was is still another segment */
    uint64_t key = (uint64_t)(uintptr_t)c ^ c->created_ns;
    if (atomic_load_explicit(&pool_mapped_key, RLX) != key) {
        /* another segment (a new session): start over */
        for (uint32_t k = 0; k < LT_MAX_POOL_RINGS / 8; k++)
            atomic_store_explicit(&pool_mapped[k], 0, RLX);
        atomic_store_explicit(&pool_mapped_key, key, RLX);
    }
    uint8_t bit = (uint8_t)(1u << (j & 7));
    if (atomic_fetch_or_explicit(&pool_mapped[j >> 3], bit, RLX) & bit)
        return;
#if defined(__x86_64__)
    char *at = (char *)c + c->pool_off + (uint64_t)j * c->ring_bytes;
    long ret;
    __asm__ __volatile__("syscall" : "=a"(ret)
                         : "0"(28L /* SYS_madvise */), "D"(at), "S"((unsigned long)c->ring_bytes),
                           "d"((long)MADV_POPULATE_WRITE_)
                         : "rcx", "r11", "memory");
    (void)ret;
#endif
}

#define POOL_TAG(h) ((h) >> 32)
#define POOL_TOP(h) ((uint32_t)(h)) /* ring + 1, 0 = empty */

uint32_t lt_pool_take(lt_ctl *c, lt_lane *L)
{
    if (!c->pool_rings ||
        atomic_load_explicit(&L->pool_held, RLX) >= LT_SUBMIT_QCAP - c->rings_per_lane)
        return LT_RING_NONE;
    uint32_t *next = lt_pool_next(c);
    uint64_t h = atomic_load_explicit(&c->pool_head, ACQ);
    for (;;) {
        uint32_t top = POOL_TOP(h);
        if (!top)
            return LT_RING_NONE;
        /* may be stale if another popper won: then the tag moved and the
         * CAS below fails */
        uint64_t nh = ((POOL_TAG(h) + 1) << 32) | next[top - 1];
        /* acquire pairs with the pusher's release: it finished reading */
        if (atomic_compare_exchange_weak_explicit(&c->pool_head, &h, nh, ACQ, ACQ)) {
            uint32_t r = c->rings_per_lane + top - 1;
            pool_populate(c, top - 1);
            atomic_fetch_add_explicit(&L->pool_held, 1, RLX);
            atomic_fetch_add_explicit(&c->pool_borrows, 1, RLX);
            uint32_t out = atomic_fetch_add_explicit(&c->pool_out, 1, RLX) + 1;
            uint32_t peak = atomic_load_explicit(&c->pool_peak, RLX);
            while (out > peak && !atomic_compare_exchange_weak_explicit(&c->pool_peak, &peak, out, RLX, RLX))
                ;
            atomic_store_explicit(lt_fill_at(c, L, r), 0, RLX);
            return r;
        }
    }
}

void lt_pool_give(lt_ctl *c, lt_lane *L, uint32_t ring)
{
    uint32_t j = ring - c->rings_per_lane;
    uint32_t *next = lt_pool_next(c);
    uint64_t h = atomic_load_explicit(&c->pool_head, RLX);
    for (;;) {
        next[j] = POOL_TOP(h);
        uint64_t nh = ((POOL_TAG(h) + 1) << 32) | (j + 1);
        /* release pairs with the popper's acquire: our reads of the ring
         * and the next[] entry come first */
        if (atomic_compare_exchange_weak_explicit(&c->pool_head, &h, nh, REL, RLX))
            break;
    }
    atomic_fetch_sub_explicit(&L->pool_held, 1, RLX);
    atomic_fetch_sub_explicit(&c->pool_out, 1, RLX);
}

/* Take a ring from the free queue of lane L and return it (fill[r] = 0,
 * not yet active), or LT_RING_NONE. */
static uint32_t pop_free(lt_lane *L, uint32_t rings)
{
    uint64_t h = atomic_load_explicit(&L->free_head, RLX);
    /* pairs with the drainer's release of free_tail: it finished reading */
    if (h == atomic_load_explicit(&L->free_tail, ACQ))
        return LT_RING_NONE;
    uint32_t r = L->free_q[h % rings];
    atomic_store_explicit(&L->free_head, h + 1, RLX);
    atomic_store_explicit(&L->fill[r], 0, RLX);
    return r;
}

static void use_ring(lt_producer *p, lt_lane *L, uint32_t r, uint32_t fill)
{
    p->ring_idx = r;
    p->ring = lt_ring_at(p->ctl, p->slot_idx, r);
    p->ring_fill = lt_fill_at(p->ctl, L, r);
    p->fill = fill;
}

/* The lane's own free rings first, then the target's shared pool. */
static int take_free_ring(lt_producer *p)
{
    lt_lane *L = &p->slot->lane[LT_LANE_INDEX];
    uint32_t r = pop_free(L, p->ctl->rings_per_lane);
    if (r == LT_RING_NONE)
        r = lt_pool_take(p->ctl, L);
    if (r == LT_RING_NONE)
        return -1;
    use_ring(p, L, r, 0);
    /* pairs with the drainer's acquire of active: fill[r]==0 is visible */
    atomic_store_explicit(&L->active, r, REL);
    return 0;
}

/* Hand lane L's active ring (full or, at exit, partial) to the drainer. */
static void submit(lt_producer *p, lt_lane *L, uint32_t r, uint32_t rings)
{
    /* NONE first: a drainer that later sees the submit will not take the
     * ring for the active one (pairs with its acquire of active). */
    atomic_store_explicit(&L->active, LT_RING_NONE, REL);
    uint64_t t = atomic_load_explicit(&L->submit_tail, RLX);
    L->submit_q[t % rings] = r;
    /* pairs with the drainer's acquire of submit_tail: entry and fill visible */
    atomic_store_explicit(&L->submit_tail, t + 1, REL);
    atomic_fetch_add_explicit(&p->ctl->counters[LT_CTR_RINGS_SUBMITTED], 1, RLX);
}

static void submit_ring(lt_producer *p)
{
    submit(p, &p->slot->lane[LT_LANE_INDEX], p->ring_idx, LT_SUBMIT_QCAP);
    atomic_store_explicit(&p->slot->last_seq, p->seq, RLX);
    p->ring = NULL;
    p->ring_idx = LT_RING_NONE;
}

static void activate_dring(lt_producer *p, lt_lane *L, uint32_t r)
{
    p->dring_idx = r;
    p->dring = lt_dring_at(p->ctl, p->slot_idx, r);
    p->dfill = 0;
    /* pairs with the drainer's acquire of active: fill[r]==0 is visible */
    atomic_store_explicit(&L->active, r, REL);
}

/* No free detail ring: overwrite the oldest one the drainer has not claimed
 * yet (flight recorder: old detail data goes first). Its uncollected records
 * are counted per thread as detail_overwritten. 0, or -1 if every ring is in
 * the drainer's hands. */
static int steal_dring(lt_producer *p)
{
    lt_ctl *c = p->ctl;
    lt_lane *L = &p->slot->lane[LT_LANE_DETAIL];
    uint32_t rings = c->detail_rings_per_lane;
    uint64_t h = atomic_load_explicit(&L->submit_head, ACQ);
    if (h == atomic_load_explicit(&L->submit_tail, RLX))
        return -1;
    uint32_t r = L->submit_q[h % rings]; /* we wrote it; stable until we submit again */
    /* acq_rel: pairs with the drainer's claim CAS; the winner owns ring r */
    if (!atomic_compare_exchange_strong_explicit(&L->submit_head, &h, h + 1, ACQREL, RLX))
        return -1; /* the drainer took it: it frees it after one memcpy */
    /* Bump the tag before rewriting r: a drainer copy of r (while it was
     * active) that is still in flight fails its dpos CAS and is discarded. */
    uint64_t dp = atomic_load_explicit(&L->dpos, ACQ), nd;
    uint32_t start;
    do {
        start = LT_DPOS_RING(dp) == r ? LT_DPOS_OFF(dp) : 0;
        nd = LT_DPOS_RING(dp) == r ? LT_DPOS_MAKE(LT_DPOS_TAG(dp) + 1, LT_DPOS_NONE_RING, 0)
                                   : LT_DPOS_MAKE(LT_DPOS_TAG(dp) + 1, LT_DPOS_RING(dp), LT_DPOS_OFF(dp));
    } while (!atomic_compare_exchange_weak_explicit(&L->dpos, &dp, nd, ACQREL, ACQ));
    uint8_t *base = lt_dring_at(c, p->slot_idx, r);
    uint32_t end = atomic_load_explicit(&L->fill[r], RLX);
    /* count what the drainer never delivered, per producing thread */
    while (start + LT_DETAIL_HEADER_SIZE <= end) {
        const lt_detail_record *d = (const lt_detail_record *)(base + start);
        if (d->size < LT_DETAIL_HEADER_SIZE || start + d->size > end)
            break;
        if (d->tid == p->tid)
            lt_drop_add(c, d->tid, LT_LANE_DETAIL, LT_DROP_DETAIL_OVERWRITTEN, 1,
                        &p->dlog[LT_LANE_DETAIL][LT_DROP_DETAIL_OVERWRITTEN]);
        else
            lt_drop_add(c, d->tid, LT_LANE_DETAIL, LT_DROP_DETAIL_OVERWRITTEN, 1, NULL);
        start += d->size;
    }
    atomic_fetch_add_explicit(&c->counters[LT_CTR_DETAIL_RINGS_STOLEN], 1, RLX);
    atomic_store_explicit(&L->fill[r], 0, RLX);
    activate_dring(p, L, r);
    return 0;
}

/* Take over the lanes of slot i (already ours by CAS): continue their
 * active rings where the previous owner, if any, left them. */
static void adopt_slot(lt_producer *p, lt_ctl *c, uint32_t i)
{
    lt_slot *s = lt_slot_at(c, i);
    atomic_store_explicit(&s->tid, p->tid, RLX);
    /* release pairs with the drainer's acquire of generation (loaded before
     * state): seeing the new generation implies seeing our claim */
    atomic_fetch_add_explicit(&s->generation, 1, REL);
    p->slot = s;
    p->slot_idx = i;
    p->shard = i % c->shard_count;
    lt_lane *L = &s->lane[LT_LANE_INDEX];
    uint32_t a = atomic_load_explicit(&L->active, RLX); /* ordered by the claim CAS */
    if (a != LT_RING_NONE) {
        use_ring(p, L, a, atomic_load_explicit(lt_fill_at(c, L, a), RLX));
    } else {
        take_free_ring(p);
    }
    lt_lane *D = &s->lane[LT_LANE_DETAIL];
    a = atomic_load_explicit(&D->active, RLX);
    if (a != LT_RING_NONE) {
        p->dring_idx = a;
        p->dring = lt_dring_at(c, i, a);
        p->dfill = atomic_load_explicit(&D->fill[a], RLX);
    } else {
        p->dring = NULL; /* taken on the first detail record */
        p->dring_idx = LT_RING_NONE;
    }
    p->countdown = 1; /* the shard is known now: re-route at the next event */
    atomic_fetch_add_explicit(&c->counters[LT_CTR_THREADS_REGISTERED], 1, RLX);
}

static uint64_t release_epoch(lt_ctl *c)
{
    return atomic_load_explicit(&c->counters[LT_CTR_SLOTS_FREED], RLX) +
           atomic_load_explicit(&c->counters[LT_CTR_THREADS_RETIRED], RLX);
}

/* Look for a slot (producer already initialized); 0 or -1. */
static int claim_slot(lt_producer *p)
{
    lt_ctl *c = p->ctl;
    p->no_slot_epoch = release_epoch(c);
    uint32_t n = c->slot_count;
    uint32_t start = (uint32_t)(p->tid * 2654435761u) % n; /* spread threads over shards */
    /* pass 0: clean FREE slots; pass 1: take over a RETIRING slot whose
     * drainer has not freed it yet, so slot reuse never waits for a drainer */
    for (int pass = 0; pass < 2; pass++) {
        uint32_t want = pass ? LT_SLOT_RETIRING : LT_SLOT_FREE;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = (start + k) % n;
            lt_slot *s = lt_slot_at(c, i);
            uint32_t st = atomic_load_explicit(&s->state, RLX);
            if (st != want)
                continue;
            /* acquire pairs with the drainer's release of FREE (lane reset)
             * or the previous owner's release of RETIRING (lane state) */
            if (atomic_compare_exchange_strong_explicit(&s->state, &st, LT_SLOT_ACTIVE, ACQ, RLX)) {
                adopt_slot(p, c, i);
                return 0;
            }
        }
    }
    p->slot = NULL;
    return -1;
}

int lt_prod_claim(lt_producer *p, lt_ctl *c, uint32_t tid)
{
    p->ctl = c;
    p->tid = tid;
    p->ring = NULL;
    p->ring_idx = LT_RING_NONE;
    p->fill = 0;
    p->cap = c->ring_records;
    p->dring = NULL;
    p->dring_idx = LT_RING_NONE;
    p->dfill = 0;
    p->dcount = 0;
    p->dcap = c->detail_ring_bytes;
    p->retired = 0;
    p->countdown = 1; /* first event runs the check */
    p->route = 0;
    p->no_drop = 0;
    p->gave_up = 0;
    p->block_ns = 0;
    return claim_slot(p);
}

int lt_global_push(lt_ctl *c, const lt_index_record *r)
{
    lt_global *g = lt_global_of(c);
    lt_global_cell *cells = lt_global_cells(c);
    uint64_t mask = c->global_records - 1;
    uint64_t pos = atomic_load_explicit(&g->enq_pos, RLX);
    lt_global_cell *cell;
    for (;;) {
        cell = &cells[pos & mask];
        /* pairs with the drainer's release after the cell was consumed+acked */
        uint64_t seq = atomic_load_explicit(&cell->seq, ACQ);
        int64_t diff = (int64_t)(seq - pos);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&g->enq_pos, &pos, pos + 1, RLX, RLX))
                break;
        } else if (diff < 0) {
            return -1;
        } else {
            pos = atomic_load_explicit(&g->enq_pos, RLX);
        }
    }
    cell->rec = *r;
    /* pairs with the drainer's acquire of cell.seq: record bytes visible */
    atomic_store_explicit(&cell->seq, pos + 1, REL);
    atomic_fetch_add_explicit(&c->counters[LT_CTR_GLOBAL_RECORDS], 1, RLX);
    return 0;
}

/* -1 if the producer holds a slot (claimed now if needed), else the reason */
static int ensure_slot(lt_producer *p, int no_slot_reason)
{
    if (p->slot)
        return -1;
    if (p->retired)
        return no_slot_reason == LT_DROP_NO_SLOT ? LT_DROP_THREAD_EXITING : no_slot_reason;
    /* retry claiming only after some drainer freed a slot */
    if (release_epoch(p->ctl) == p->no_slot_epoch || claim_slot(p) < 0)
        return no_slot_reason;
    return -1;
}

/* Per-thread index lane append; returns -1 on success or the drop reason. */
static int lane_append(lt_producer *p, const lt_index_record *r)
{
    int why = ensure_slot(p, LT_DROP_NO_SLOT);
    if (why >= 0)
        return why;
    if (p->ring && p->fill == p->cap) {
        submit_ring(p);
        /* ring swap: the moment to look at the mode/epoch again (this
         * record still goes where it was routed) */
        lt_prod_refresh(p, r->ts_ns);
    }
    if (!p->ring && take_free_ring(p) < 0)
        return LT_DROP_POOL_EXHAUSTED;
    p->ring[p->fill] = *r;
    p->fill++;
    /* pairs with the drainer's acquire of fill: record bytes visible */
    atomic_store_explicit(p->ring_fill, p->fill, REL);
    return -1;
}

static void flush_counts(lt_producer *p);

static void copy_words(uint64_t *dst, const uint64_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] = src[i];
}

/* Detail lane append; returns -1 on success or the drop reason. */
static int detail_append(lt_producer *p, uint64_t ts, uint64_t seq, uint32_t fid, uint16_t kind,
                         const lt_detail_src *ds)
{
    int why = ensure_slot(p, LT_DROP_DETAIL_NO_SLOT);
    if (why >= 0)
        return why == LT_DROP_THREAD_EXITING ? LT_DROP_DETAIL_NO_SLOT : why;
    lt_lane *L = &p->slot->lane[LT_LANE_DETAIL];
    uint32_t slen = ds->stack_len > LT_DETAIL_MAX_STACK ? LT_DETAIL_MAX_STACK : ds->stack_len;
    if (!ds->stack)
        slen = 0;
    uint32_t padded = (slen + 7u) & ~7u;
    uint32_t size = LT_DETAIL_HEADER_SIZE + padded;
    if (p->dring && p->dfill + size > p->dcap) {
        flush_counts(p);
        submit(p, L, p->dring_idx, p->ctl->detail_rings_per_lane);
        p->dring = NULL;
        p->dring_idx = LT_RING_NONE;
    }
    if (!p->dring) {
        uint32_t r = pop_free(L, p->ctl->detail_rings_per_lane);
        if (r != LT_RING_NONE)
            activate_dring(p, L, r);
        else if (steal_dring(p) < 0)
            return LT_DROP_DETAIL_POOL_EXHAUSTED;
    }
    lt_detail_record *d = (lt_detail_record *)(p->dring + p->dfill);
    d->ts_ns = ts;
    d->seq = seq;
    d->tid = p->tid;
    d->func_id = fid;
    d->kind = kind;
    uint32_t nr = ds->nregs > LT_DETAIL_MAX_REGS ? LT_DETAIL_MAX_REGS : ds->nregs;
    d->reg_count = (uint16_t)nr;
    d->size = size;
    copy_words(d->regs, ds->regs, nr);
    for (uint32_t i = nr; i < LT_DETAIL_MAX_REGS; i++)
        d->regs[i] = 0;
    d->stack_len = slen;
    d->reserved = 0;
    uint64_t *dst = (uint64_t *)(d + 1);
    uint32_t whole = slen / 8;
    /* the stack may be unaligned only by the caller's choice: read bytewise
     * at the tail only */
    copy_words(dst, (const uint64_t *)ds->stack, whole);
    if (slen % 8) {
        uint64_t last = 0;
        for (uint32_t i = 0; i < slen % 8; i++)
            last |= (uint64_t)ds->stack[whole * 8 + i] << (8 * i);
        dst[whole] = last;
    }
    p->dfill += size;
    /* pairs with the drainer's acquire of fill: record bytes visible */
    atomic_store_explicit(&L->fill[p->dring_idx], p->dfill, REL);
    p->dcount++; /* a shared counter per record would cost a locked add */
    return -1;
}

static inline int hb_fresh(uint64_t hb, uint64_t now, uint64_t stale)
{
    return hb != 0 && (int64_t)(now - hb) < (int64_t)stale;
}

/* The agent's own mode machine (auto_mode): GLOBAL_ONLY -> DUAL_WRITE once
 * every shard's heartbeat is fresh (straight to PER_THREAD_ONLY if the global
 * lane never held a record), DUAL_WRITE -> PER_THREAD_ONLY once every
 * drainer has beaten again since (it has made a pass over the per-thread
 * lanes); per-shard fallback while a heartbeat that existed goes stale. A
 * heartbeat of 0 (drainer never started) is neither fresh nor stale. */
static void policy(lt_ctl *c, uint64_t now)
{
    if (!atomic_load_explicit(&c->auto_mode, RLX))
        return;
    uint64_t stale = atomic_load_explicit(&c->stale_ns, RLX);
    /* acquire: pairs with the release CAS of the mode; mode_since is at
     * least as new as the mode we see */
    uint32_t mode = atomic_load_explicit(&c->registry_mode, ACQ);
    uint64_t since = atomic_load_explicit(&c->mode_since_ns, RLX);
    int all_fresh = 1, all_since = 1;
    for (uint32_t k = 0; k < c->shard_count; k++) {
        uint64_t hb = atomic_load_explicit(&c->heartbeat_ns[k], RLX);
        int fresh = hb_fresh(hb, now, stale);
        all_fresh &= fresh;
        all_since &= hb > since;
        uint32_t fb = atomic_load_explicit(&c->shard_fallback[k], RLX);
        if (mode != LT_MODE_GLOBAL_ONLY && fb == LT_FALLBACK_OFF && hb && !fresh) {
            atomic_store_explicit(&c->fallback_since_ns[k], now, RLX);
            if (atomic_compare_exchange_strong_explicit(&c->shard_fallback[k], &fb, LT_FALLBACK_AGENT, RLX, RLX)) {
                atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_EVENTS], 1, RLX);
                atomic_fetch_add_explicit(&c->counters[LT_CTR_AGENT_FALLBACKS], 1, RLX);
                lt_bump_epoch(c);
            }
        } else if (fb == LT_FALLBACK_AGENT && fresh &&
                   hb > atomic_load_explicit(&c->fallback_since_ns[k], RLX)) {
            if (atomic_compare_exchange_strong_explicit(&c->shard_fallback[k], &fb, LT_FALLBACK_OFF, RLX, RLX)) {
                atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_CLEARS], 1, RLX);
                lt_bump_epoch(c);
            }
        }
    }
    uint32_t next = mode;
    /* Drainers up before any record took the global lane: nothing there to
     * keep a thread's order with, so no DUAL_WRITE phase, whose global copies
     * can reach the writer after later per-thread ones. */
    if (mode == LT_MODE_GLOBAL_ONLY && all_fresh)
        next = atomic_load_explicit(&lt_global_of(c)->enq_pos, RLX) == 0 ? LT_MODE_PER_THREAD_ONLY
                                                                           : LT_MODE_DUAL_WRITE;
    else if (mode == LT_MODE_DUAL_WRITE && all_fresh && all_since)
        next = LT_MODE_PER_THREAD_ONLY;
    if (next != mode) {
        /* since first: whoever sees the new mode sees a since >= ours */
        atomic_store_explicit(&c->mode_since_ns, now, RLX);
        if (atomic_compare_exchange_strong_explicit(&c->registry_mode, &mode, next, REL, RLX)) {
            atomic_fetch_add_explicit(&c->counters[LT_CTR_MODE_TRANSITIONS], 1, RLX);
            lt_bump_epoch(c);
        }
    }
}

static void flush_counts(lt_producer *p)
{
    if (p->dcount) {
        atomic_fetch_add_explicit(&p->ctl->counters[LT_CTR_DETAIL_RECORDS], p->dcount, RLX);
        p->dcount = 0;
    }
}

void lt_prod_refresh(lt_producer *p, uint64_t now)
{
    lt_ctl *c = p->ctl;
    p->countdown = LT_CHECK_EVENTS;
    flush_counts(p);
    /* now is a record stamp; heartbeats and mode moments are CLOCK_MONOTONIC ns */
    policy(c, lt_clock_to_ns(c, now));
    /* acquire pairs with every selector writer's release bump */
    p->epoch_seen = atomic_load_explicit(&c->registry_epoch, ACQ);
    p->no_drop = atomic_load_explicit(&c->no_drop, RLX);
    p->block_ns = atomic_load_explicit(&c->block_timeout_ns, RLX);
    uint32_t mode = atomic_load_explicit(&c->registry_mode, RLX);
    uint32_t route;
    if (mode == LT_MODE_GLOBAL_ONLY)
        route = LT_ROUTE_GLOBAL;
    else if (mode == LT_MODE_DUAL_WRITE)
        route = LT_ROUTE_GLOBAL | LT_ROUTE_LANE;
    else if (p->slot && atomic_load_explicit(&c->shard_fallback[p->shard], RLX))
        route = LT_ROUTE_GLOBAL;
    else
        route = LT_ROUTE_LANE;
    if (atomic_load_explicit(&c->detail_on, RLX)) {
        route |= LT_ROUTE_DETAIL;
        uint32_t sb = atomic_load_explicit(&c->stack_bytes, RLX);
        p->stack_bytes = sb > LT_DETAIL_MAX_STACK ? LT_DETAIL_MAX_STACK : sb;
    }
    p->route = route;
}

/* Where the route sends an index record; -1 when stored, else the reason. */
static int route_record(lt_producer *p, const lt_index_record *r, uint32_t route)
{
    lt_ctl *c = p->ctl;
    if ((route & (LT_ROUTE_LANE | LT_ROUTE_GLOBAL)) == (LT_ROUTE_LANE | LT_ROUTE_GLOBAL)) {
        /* DUAL_WRITE: a drop only if neither copy made it */
        int g = lt_global_push(c, r);
        int why = lane_append(p, r);
        return why >= 0 && !g ? -1 : why;
    }
    if (route & LT_ROUTE_LANE)
        return lane_append(p, r);
    return lt_global_push(c, r) ? LT_DROP_GLOBAL_FULL : -1;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#endif
}

/* A short sleep without libc: a raw nanosleep (no cancellation point, no
 * lock, no errno). */
static void nap(uint64_t ns)
{
    struct { long sec, nsec; } ts = {0, (long)ns};
#if defined(__x86_64__)
    long ret;
    __asm__ __volatile__("syscall" : "=a"(ret) : "0"(35L /* SYS_nanosleep */), "D"(&ts), "S"(0L)
                         : "rcx", "r11", "memory");
    (void)ret;
#else
    for (uint64_t i = 0; i < ns / 8; i++)
        cpu_relax();
    (void)ts;
#endif
}

#define BLOCK_SPINS 2000u
#define BLOCK_NAP_NS 50000u

/* no_drop: wait for room (a drainer giving a ring back), up to the block
 * timeout; -1 once stored, else the drop reason. */
static int block_until_stored(lt_producer *p, const lt_index_record *r, int why)
{
    if (p->gave_up)
        return LT_DROP_BLOCKED_TIMEOUT;
    lt_ctl *c = p->ctl;
    uint64_t t0 = lt_now_ns(), now = t0;
    for (uint32_t i = 0;; i++) {
        if (i < BLOCK_SPINS)
            cpu_relax();
        else
            nap(BLOCK_NAP_NS);
        why = route_record(p, r, p->route);
        if (why < 0)
            break;
        if (why != LT_DROP_POOL_EXHAUSTED && why != LT_DROP_GLOBAL_FULL)
            return why;
        if (i >= BLOCK_SPINS || (i & 63) == 63) {
            now = lt_now_ns();
            if (now - t0 >= p->block_ns) {
                p->gave_up = 1;
                atomic_fetch_add_explicit(&c->blocked_ns, now - t0, RLX);
                return LT_DROP_BLOCKED_TIMEOUT;
            }
        }
    }
    atomic_fetch_add_explicit(&c->blocked_ns, lt_now_ns() - t0, RLX);
    atomic_fetch_add_explicit(&c->blocked_waits, 1, RLX);
    return -1;
}

void lt_prod_write(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth,
                   const lt_detail_src *ds)
{
    if (p->countdown == 0)
        lt_prod_refresh(p, ts);
    lt_index_record r;
    r.ts_ns = ts;
    r.seq = ++p->seq;
    r.tid = p->tid;
    r.func_id = func_id;
    r.kind = kind;
    r.depth = depth;
    r.flags = 0;
    uint32_t route = p->route;
    int why = route_record(p, &r, route);
    if (why == LT_DROP_POOL_EXHAUSTED || why == LT_DROP_GLOBAL_FULL) {
        if (p->no_drop)
            why = block_until_stored(p, &r, why);
    } else if (why < 0) {
        p->gave_up = 0; /* room again: the next shortage waits again */
    }
    if (why >= 0)
        count_drop(p, why);
    /* kinds other than ENTRY/RETURN (unwound frames) carry no detail */
    if ((route & LT_ROUTE_DETAIL) && ds && (kind == LT_KIND_ENTRY || kind == LT_KIND_RETURN)) {
        why = detail_append(p, ts, r.seq, func_id, kind, ds);
        if (why >= 0)
            count_drop(p, why);
    }
}

void lt_prod_detail(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, const lt_detail_src *ds)
{
    int why = detail_append(p, ts, p->seq, func_id, kind, ds);
    if (why >= 0)
        count_drop(p, why);
}

void lt_prod_emit_detail(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth,
                         const lt_detail_src *ds)
{
    --p->countdown;
    lt_prod_write(p, ts, func_id, kind, depth, ds);
}

void lt_prod_emit(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth)
{
    lt_detail_src ds = {NULL, 0, 0, NULL};
    uint64_t none[1] = {0};
    ds.regs = none;
    --p->countdown;
    lt_prod_write(p, ts, func_id, kind, depth, &ds);
}

void lt_prod_retire(lt_producer *p)
{
    if (p->retired)
        return;
    p->retired = 1;
    flush_counts(p);
    lt_slot *s = p->slot;
    if (!s)
        return;
    /* The partial active rings stay active: their fills are already
     * published, the drainer collects them, and the next owner of the slot
     * continues them (no ring is burnt per thread exit). */
    atomic_fetch_add_explicit(&p->ctl->counters[LT_CTR_THREADS_RETIRED], 1, RLX);
    /* pairs with the drainer's acquire of state (final fills/submits and our
     * generation visible) and with the next owner's acquire CAS */
    atomic_store_explicit(&s->state, LT_SLOT_RETIRING, REL);
    p->slot = NULL;
    p->ring = NULL;
    p->dring = NULL;
}
