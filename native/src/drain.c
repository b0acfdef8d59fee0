/*
 * drain.c — consumer side of the lanes for one shard (slots with
 * slot % shard_count == shard, plus batches of the global lane).
 *
 * collect() copies committed records out in bulk and remembers how far it
 * got (process-local cursors); commit() is called once the writer acked all
 * of that: fully read rings go back to the producers' free queues, retired
 * slots are reset and freed, claimed global cells are released, and the
 * acked position is stored in the segment so a restarted drainer resumes
 * there (re-sending what was collected but not acked; the writer drops the
 * duplicates by (tid, seq)). See shm.h for the ordering pairings.
 */
#define _GNU_SOURCE
#include "lanetrace/shm.h"

#include <stdlib.h>
#include <string.h>

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release

typedef struct slot_cursor {
    uint64_t submit_pos;   /* submit queue entries [head, submit_pos) fully collected */
    uint32_t cur_ring;     /* last ring read from, and how far */
    uint32_t cur_off;
    int retire_done;       /* saw RETIRING and collected everything after it */
    uint64_t gen;          /* slot generation when retire_done was set */
} slot_cursor;

struct lt_drain {
    lt_ctl *ctl;
    uint32_t shard;
    uint32_t nslots;       /* slots of this shard */
    uint32_t rr;           /* round-robin start for fairness under budget */
    uint64_t gl_collected; /* global positions [claim_lo, gl_collected) copied */
    slot_cursor cur[];     /* indexed by k: slot = shard + k * shard_count */
};

static void cursor_from_shm(lt_drain *d, uint32_t k)
{
    lt_slot *s = lt_slot_at(d->ctl, d->shard + k * d->ctl->shard_count);
    d->cur[k].submit_pos = atomic_load_explicit(&s->submit_head, RLX);
    d->cur[k].cur_ring = s->ack_ring;
    d->cur[k].cur_off = s->ack_off;
    d->cur[k].retire_done = 0;
}

lt_drain *lt_drain_open(lt_shm_map *m, uint32_t shard)
{
    lt_ctl *c = lt_ctl_of(m);
    if (shard >= c->shard_count)
        return NULL;
    uint32_t n = 0;
    for (uint32_t i = shard; i < c->slot_count; i += c->shard_count)
        n++;
    lt_drain *d = calloc(1, sizeof(*d) + n * sizeof(slot_cursor));
    if (!d)
        return NULL;
    d->ctl = c;
    d->shard = shard;
    d->nslots = n;
    for (uint32_t k = 0; k < n; k++) {
        lt_slot *s = lt_slot_at(c, shard + k * c->shard_count);
        if (atomic_load_explicit(&s->state, ACQ) == LT_SLOT_RESETTING) {
            /* our predecessor died while freeing it; all of it was acked */
            lt_lane_reset(c, shard + k * c->shard_count);
            atomic_store_explicit(&s->state, LT_SLOT_FREE, REL); /* pairs with claim CAS */
            atomic_fetch_add_explicit(&c->counters[LT_CTR_SLOTS_FREED], 1, RLX);
        }
        cursor_from_shm(d, k);
    }
    /* restart: cells claimed by our predecessor but never released are
     * collected again */
    d->gl_collected = c->shard[shard].gl_claim_lo;
    return d;
}

void lt_drain_free(lt_drain *d) { free(d); }

/* Copy ring records [start, end) but at most *budget records. */
static uint32_t copy_out(lt_drain *d, uint32_t slot, uint32_t ring, uint32_t start, uint32_t end,
                         char **out, size_t *budget)
{
    if (end <= start)
        return 0;
    uint32_t n = end - start;
    if (n > *budget)
        n = (uint32_t)*budget;
    if (!n)
        return 0;
    memcpy(*out, lt_ring_at(d->ctl, slot, ring) + start, (size_t)n * LT_INDEX_RECORD_SIZE);
    *out += (size_t)n * LT_INDEX_RECORD_SIZE;
    *budget -= n;
    return n;
}

/* Returns 1 if the budget ran out inside this slot. */
static int collect_slot(lt_drain *d, uint32_t k, char **out, size_t *budget)
{
    lt_ctl *c = d->ctl;
    uint32_t si = d->shard + k * c->shard_count;
    lt_slot *s = lt_slot_at(c, si);
    slot_cursor *q = &d->cur[k];
    /* generation before state, both acquire: if we see RETIRING, gen is the
     * generation of that owner or older (older only delays the free) */
    uint64_t gen = atomic_load_explicit(&s->generation, ACQ);
    /* acquire pairs with the producer's release of RETIRING */
    uint32_t st = atomic_load_explicit(&s->state, ACQ);
    if (st == LT_SLOT_FREE || st == LT_SLOT_RESETTING || q->retire_done)
        return 0;
    /* active before submit_tail: a ring seen active is either still active or
     * was submitted since, and then it is in [submit_pos, t) */
    uint32_t a = atomic_load_explicit(&s->active, ACQ);
    uint64_t t = atomic_load_explicit(&s->submit_tail, ACQ);
    int a_submitted = 0;
    while (q->submit_pos < t) {
        uint32_t r = s->submit_q[q->submit_pos % c->rings_per_lane];
        uint32_t start = r == q->cur_ring ? q->cur_off : 0;
        uint32_t end = atomic_load_explicit(&s->fill[r], ACQ);
        uint32_t got = copy_out(d, si, r, start, end, out, budget);
        q->cur_ring = r;
        q->cur_off = start + got;
        if (start + got < end)
            return 1;
        q->submit_pos++;
        if (r == a)
            a_submitted = 1;
    }
    if (a != LT_RING_NONE && !a_submitted) {
        uint32_t start = a == q->cur_ring ? q->cur_off : 0;
        uint32_t end = atomic_load_explicit(&s->fill[a], ACQ);
        uint32_t got = copy_out(d, si, a, start, end, out, budget);
        q->cur_ring = a;
        q->cur_off = start + got;
        if (start + got < end)
            return 1;
    }
    if (st == LT_SLOT_RETIRING) {
        /* RETIRING was loaded (acquire) before active/submit_tail/fill, so
         * what we just collected is all its owner wrote */
        q->retire_done = 1;
        q->gen = gen;
    }
    return 0;
}

static void collect_global(lt_drain *d, char **out, size_t *budget)
{
    lt_ctl *c = d->ctl;
    lt_shard_state *ss = &c->shard[d->shard];
    lt_global *g = lt_global_of(c);
    lt_global_cell *cells = lt_global_cells(c);
    uint64_t mask = c->global_records - 1;
    if (ss->gl_claim_hi == ss->gl_claim_lo) {
        /* claim a new batch of ready cells (one outstanding batch per commit) */
        uint64_t p = atomic_load_explicit(&g->deq_pos, RLX);
        for (;;) {
            uint64_t n = 0;
            while (n < *budget && n <= mask) {
                /* pairs with the producer's release of cell.seq */
                uint64_t seq = atomic_load_explicit(&cells[(p + n) & mask].seq, ACQ);
                if (seq != p + n + 1)
                    break;
                n++;
            }
            if (!n)
                return;
            /* Record the claim before making it, so a restarted drainer finds
             * it even if we die right after the CAS; if the CAS fails the
             * range is not ours (collect and release below check each cell). */
            ss->gl_claim_lo = p;
            ss->gl_claim_hi = p + n;
            if (atomic_compare_exchange_weak_explicit(&g->deq_pos, &p, p + n, RLX, RLX)) {
                d->gl_collected = ss->gl_claim_lo;
                break;
            }
            ss->gl_claim_hi = ss->gl_claim_lo;
        }
    }
    while (d->gl_collected < ss->gl_claim_hi && *budget) {
        uint64_t pos = d->gl_collected++;
        /* only a cell still holding position pos's record (after a restart the
         * recorded claim may not have been ours, or is already released) */
        if (atomic_load_explicit(&cells[pos & mask].seq, ACQ) != pos + 1)
            continue;
        memcpy(*out, &cells[pos & mask].rec, LT_INDEX_RECORD_SIZE);
        *out += LT_INDEX_RECORD_SIZE;
        (*budget)--;
    }
}

size_t lt_drain_collect(lt_drain *d, void *buf, size_t max_bytes)
{
    char *out = buf;
    size_t budget = max_bytes / LT_INDEX_RECORD_SIZE;
    uint32_t n = d->nslots;
    for (uint32_t j = 0; j < n && budget; j++) {
        uint32_t k = (d->rr + j) % n;
        if (collect_slot(d, k, &out, &budget)) {
            d->rr = k; /* resume here next time */
            break;
        }
    }
    if (budget)
        collect_global(d, &out, &budget);
    return (size_t)(out - (char *)buf);
}

int lt_drain_commit(lt_drain *d)
{
    lt_ctl *c = d->ctl;
    int freed = 0;
    for (uint32_t k = 0; k < d->nslots; k++) {
        uint32_t si = d->shard + k * c->shard_count;
        lt_slot *s = lt_slot_at(c, si);
        slot_cursor *q = &d->cur[k];
        if (q->retire_done) {
            q->retire_done = 0;
            uint32_t exp = LT_SLOT_RETIRING;
            /* acquire pairs with the last owner's RETIRING release: its
             * generation bump is visible */
            if (atomic_compare_exchange_strong_explicit(&s->state, &exp, LT_SLOT_RESETTING, ACQ, RLX)) {
                if (atomic_load_explicit(&s->generation, RLX) == q->gen) {
                    lt_lane_reset(c, si);
                    /* pairs with the producer's acquire CAS FREE->ACTIVE */
                    atomic_store_explicit(&s->state, LT_SLOT_FREE, REL);
                    atomic_fetch_add_explicit(&c->counters[LT_CTR_SLOTS_FREED], 1, RLX);
                    q->submit_pos = 0;
                    q->cur_ring = LT_RING_NONE;
                    q->cur_off = 0;
                    freed++;
                    continue;
                }
                /* taken over and retired again since we collected: keep its
                 * data, hand the slot back (pairs with the claim CAS) */
                atomic_store_explicit(&s->state, LT_SLOT_RETIRING, REL);
            }
            /* otherwise a new thread took it over: commit it like any lane */
        }
        uint64_t h = atomic_load_explicit(&s->submit_head, RLX);
        if (h == q->submit_pos && s->ack_ring == q->cur_ring && s->ack_off == q->cur_off)
            continue;
        uint64_t ft = atomic_load_explicit(&s->free_tail, RLX);
        for (; h < q->submit_pos; h++) {
            uint32_t r = s->submit_q[h % c->rings_per_lane];
            s->free_q[ft % c->rings_per_lane] = r;
            ft++;
            if (r == q->cur_ring) {
                q->cur_ring = LT_RING_NONE; /* the producer will refill it from 0 */
                q->cur_off = 0;
            }
        }
        atomic_store_explicit(&s->submit_head, h, RLX);
        s->ack_ring = q->cur_ring;
        s->ack_off = q->cur_off;
        /* pairs with the producer's acquire of free_tail: we are done reading */
        atomic_store_explicit(&s->free_tail, ft, REL);
    }
    lt_shard_state *ss = &c->shard[d->shard];
    if (d->gl_collected > ss->gl_claim_lo) {
        lt_global_cell *cells = lt_global_cells(c);
        uint64_t mask = c->global_records - 1;
        for (uint64_t p = ss->gl_claim_lo; p < d->gl_collected; p++) {
            /* CAS, not store: a stale claim (restart) must never move a cell
             * that someone else already released and a producer reused.
             * Release pairs with the producer's acquire of cell.seq. */
            uint64_t want = p + 1;
            atomic_compare_exchange_strong_explicit(&cells[p & mask].seq, &want, p + mask + 1, REL, RLX);
        }
        ss->gl_claim_lo = d->gl_collected;
    }
    return freed;
}

int lt_drain_idle_complete(lt_drain *d)
{
    lt_ctl *c = d->ctl;
    /* pairs with the injector's release of target_exited */
    if (!atomic_load_explicit(&c->target_exited, ACQ))
        return 0;
    for (uint32_t k = 0; k < d->nslots; k++) {
        uint32_t si = d->shard + k * c->shard_count;
        lt_slot *s = lt_slot_at(c, si);
        slot_cursor *q = &d->cur[k];
        uint32_t st = atomic_load_explicit(&s->state, ACQ);
        if (st == LT_SLOT_FREE)
            continue;
        if (q->retire_done)
            return 0; /* needs a commit to free it */
        uint32_t a = atomic_load_explicit(&s->active, ACQ);
        uint64_t t = atomic_load_explicit(&s->submit_tail, ACQ);
        if (q->submit_pos != t)
            return 0;
        if (a != LT_RING_NONE &&
            !(a == q->cur_ring && q->cur_off == atomic_load_explicit(&s->fill[a], ACQ)))
            return 0;
        if (atomic_load_explicit(&s->submit_head, RLX) != q->submit_pos ||
            s->ack_ring != q->cur_ring || s->ack_off != q->cur_off)
            return 0; /* collected but not committed */
        if (st == LT_SLOT_RETIRING)
            return 0; /* would become retire_done at the next collect */
    }
    lt_shard_state *ss = &c->shard[d->shard];
    if (ss->gl_claim_hi != ss->gl_claim_lo)
        return 0;
    /* the global lane is shared: only "complete" once nobody has ready cells */
    lt_global *g = lt_global_of(c);
    uint64_t p = atomic_load_explicit(&g->deq_pos, RLX);
    uint64_t seq = atomic_load_explicit(&lt_global_cells(c)[p & (c->global_records - 1)].seq, ACQ);
    if (seq == p + 1)
        return 0;
    return 1;
}
