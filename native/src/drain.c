/*
 * drain.c — consumer side of the lanes for one shard (slots with
 * slot % shard_count == shard, plus claims on the global lane).
 *
 * Index lane: collect_batch() copies committed records out in bulk and
 * remembers how far it got (process-local cursors) in a batch; commit(token)
 * is called once the writer acked every batch up to token: fully read rings
 * go back to the producers' free queues, retired slots are reset and freed,
 * claimed global cells are released, and the acked position is stored in the
 * segment so a restarted drainer resumes there (re-sending what was
 * collected but not acked; the writer drops the duplicates by (tid, seq)).
 * Several batches may be in flight; each keeps a snapshot of the cursors it
 * advanced, and commits apply the snapshots in order.
 *
 * Detail lane: collect_detail() claims submitted rings (CAS on submit_head,
 * racing the producer's steal), copies them and frees them at once; the
 * published part of the active ring is copied too and remembered in the
 * lane's dpos (see shm.h). See shm.h for the ordering pairings.
 */
#define _GNU_SOURCE
#include "lanetrace/shm.h"
#include "lanetrace/tsc.h"

#include <stdlib.h>
#include <string.h>

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define ACQREL memory_order_acq_rel

typedef struct slot_cursor {
    uint64_t submit_pos;   /* submit queue entries [head, submit_pos) fully collected */
    uint32_t cur_ring;     /* last ring read from, and how far */
    uint32_t cur_off;
    int retire_done;       /* saw RETIRING and collected everything after it */
    uint64_t gen;          /* slot generation when retire_done was set */
} slot_cursor;

typedef struct snap {
    uint32_t k;
    int retire;
    uint64_t submit_pos;
    uint32_t cur_ring, cur_off;
    uint64_t gen;
} snap;

typedef struct batch {
    uint64_t token;
    uint32_t n, cap;
    snap *s;
    uint64_t gl_upto[LT_GL_CLAIMS]; /* UINT64_MAX: claim untouched by this batch */
} batch;

struct lt_drain {
    lt_ctl *ctl;
    uint32_t shard;
    uint32_t nslots;       /* slots of this shard */
    uint32_t rr;           /* round-robin start for fairness under budget */
    uint32_t drr;          /* same for the detail lane */
    uint64_t gl_col[LT_GL_CLAIMS]; /* per claim: [lo, gl_col) copied */
    uint64_t next_token;
    batch *batches;        /* pending (collected, not committed), in order */
    uint32_t nb, cb;
    slot_cursor cur[];     /* indexed by k: slot = shard + k * shard_count */
};

static void cursor_from_shm(lt_drain *d, uint32_t k)
{
    lt_lane *L = &lt_slot_at(d->ctl, d->shard + k * d->ctl->shard_count)->lane[LT_LANE_INDEX];
    d->cur[k].submit_pos = atomic_load_explicit(&L->submit_head, RLX);
    d->cur[k].cur_ring = L->ack_ring;
    d->cur[k].cur_off = L->ack_off;
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
    d->next_token = 1;
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
    for (uint32_t e = 0; e < LT_GL_CLAIMS; e++)
        d->gl_col[e] = c->shard[shard].gl_lo[e];
    return d;
}

void lt_drain_free(lt_drain *d)
{
    if (!d)
        return;
    for (uint32_t i = 0; i < d->nb; i++)
        free(d->batches[i].s);
    free(d->batches);
    free(d);
}

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

static int batch_add(batch *b, const snap *s)
{
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 8;
        snap *ns = realloc(b->s, cap * sizeof(snap));
        if (!ns)
            return -1;
        b->s = ns;
        b->cap = cap;
    }
    b->s[b->n++] = *s;
    return 0;
}

/* Returns 1 if the budget ran out inside this slot. */
static int collect_slot(lt_drain *d, batch *b, uint32_t k, char **out, size_t *budget)
{
    lt_ctl *c = d->ctl;
    uint32_t si = d->shard + k * c->shard_count;
    lt_slot *s = lt_slot_at(c, si);
    lt_lane *L = &s->lane[LT_LANE_INDEX];
    slot_cursor *q = &d->cur[k];
    /* generation before state, both acquire: if we see RETIRING, gen is the
     * generation of that owner or older (older only delays the free) */
    uint64_t gen = atomic_load_explicit(&s->generation, ACQ);
    /* acquire pairs with the producer's release of RETIRING */
    uint32_t st = atomic_load_explicit(&s->state, ACQ);
    if (st == LT_SLOT_FREE || st == LT_SLOT_RESETTING || q->retire_done)
        return 0;
    slot_cursor before = *q;
    int full = 0;
    /* active before submit_tail: a ring seen active is either still active or
     * was submitted since, and then it is in [submit_pos, t) */
    uint32_t a = atomic_load_explicit(&L->active, ACQ);
    uint64_t t = atomic_load_explicit(&L->submit_tail, ACQ);
    int a_submitted = 0;
    while (q->submit_pos < t) {
        uint32_t r = L->submit_q[q->submit_pos % LT_SUBMIT_QCAP];
        uint32_t start = r == q->cur_ring ? q->cur_off : 0;
        uint32_t end = atomic_load_explicit(lt_fill_at(c, L, r), ACQ);
        uint32_t got = copy_out(d, si, r, start, end, out, budget);
        q->cur_ring = r;
        q->cur_off = start + got;
        if (start + got < end) {
            full = 1;
            break;
        }
        q->submit_pos++;
        if (r == a)
            a_submitted = 1;
    }
    if (!full && a != LT_RING_NONE && !a_submitted) {
        uint32_t start = a == q->cur_ring ? q->cur_off : 0;
        uint32_t end = atomic_load_explicit(lt_fill_at(c, L, a), ACQ);
        uint32_t got = copy_out(d, si, a, start, end, out, budget);
        q->cur_ring = a;
        q->cur_off = start + got;
        if (start + got < end)
            full = 1;
    }
    if (!full && st == LT_SLOT_RETIRING) {
        /* RETIRING was loaded (acquire) before active/submit_tail/fill, so
         * what we just collected is all its owner wrote */
        q->retire_done = 1;
        q->gen = gen;
    }
    if (q->submit_pos != before.submit_pos || q->cur_ring != before.cur_ring ||
        q->cur_off != before.cur_off || q->retire_done) {
        snap sn = {k, q->retire_done, q->submit_pos, q->cur_ring, q->cur_off, q->gen};
        if (batch_add(b, &sn) < 0) {
            *q = before; /* out of memory: forget this slot's progress, re-read later */
            return 1;
        }
    }
    return full;
}

static void collect_global(lt_drain *d, batch *b, char **out, size_t *budget)
{
    lt_ctl *c = d->ctl;
    lt_shard_state *ss = &c->shard[d->shard];
    lt_global *g = lt_global_of(c);
    lt_global_cell *cells = lt_global_cells(c);
    uint64_t mask = c->global_records - 1;
    /* finish claims not fully copied yet, then claim a new range */
    for (uint32_t e = 0; e < LT_GL_CLAIMS && *budget; e++) {
        if (d->gl_col[e] >= ss->gl_hi[e])
            continue;
        while (d->gl_col[e] < ss->gl_hi[e] && *budget) {
            uint64_t pos = d->gl_col[e]++;
            /* only a cell still holding position pos's record (after a restart
             * the recorded claim may not have been ours, or is released) */
            if (atomic_load_explicit(&cells[pos & mask].seq, ACQ) != pos + 1)
                continue;
            memcpy(*out, &cells[pos & mask].rec, LT_INDEX_RECORD_SIZE);
            *out += LT_INDEX_RECORD_SIZE;
            (*budget)--;
        }
        b->gl_upto[e] = d->gl_col[e];
    }
    if (!*budget)
        return;
    uint32_t e = 0;
    while (e < LT_GL_CLAIMS && ss->gl_lo[e] != ss->gl_hi[e])
        e++;
    if (e == LT_GL_CLAIMS)
        return; /* every claim waits for a commit */
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
         * range is not ours (collect and release check each cell). */
        ss->gl_lo[e] = p;
        ss->gl_hi[e] = p + n;
        if (atomic_compare_exchange_weak_explicit(&g->deq_pos, &p, p + n, RLX, RLX))
            break;
        ss->gl_hi[e] = ss->gl_lo[e];
    }
    d->gl_col[e] = ss->gl_lo[e];
    while (d->gl_col[e] < ss->gl_hi[e]) {
        uint64_t pos = d->gl_col[e]++;
        memcpy(*out, &cells[pos & mask].rec, LT_INDEX_RECORD_SIZE);
        *out += LT_INDEX_RECORD_SIZE;
        (*budget)--;
    }
    b->gl_upto[e] = d->gl_col[e];
}

static int commit_batch(lt_drain *d, batch *b);

size_t lt_drain_collect_batch(lt_drain *d, void *buf, size_t max_bytes, uint64_t *token)
{
    if (d->nb == d->cb) {
        uint32_t cap = d->cb ? d->cb * 2 : 8;
        batch *nbs = realloc(d->batches, cap * sizeof(batch));
        if (!nbs) {
            if (token)
                *token = 0;
            return 0;
        }
        d->batches = nbs;
        d->cb = cap;
    }
    batch *b = &d->batches[d->nb];
    memset(b, 0, sizeof *b);
    for (uint32_t e = 0; e < LT_GL_CLAIMS; e++)
        b->gl_upto[e] = UINT64_MAX;
    char *out = buf;
    size_t budget = max_bytes / LT_INDEX_RECORD_SIZE;
    uint32_t n = d->nslots;
    for (uint32_t j = 0; j < n && budget; j++) {
        uint32_t k = (d->rr + j) % n;
        if (collect_slot(d, b, k, &out, &budget)) {
            d->rr = k; /* resume here next time */
            break;
        }
    }
    if (budget)
        collect_global(d, b, &out, &budget);
    if (out == (char *)buf) {
        /* No records: nothing for the writer to ack, but cursor moves (a
         * retired slot seen complete, an empty active ring) must still be
         * applied, after the batches in flight and never before them. A
         * caller that sends only non-empty batches never commits this one,
         * so it joins the newest pending batch, or applies now. */
        if (d->nb) {
            batch *last = &d->batches[d->nb - 1];
            for (uint32_t i = 0; i < b->n; i++)
                if (batch_add(last, &b->s[i]) < 0)
                    break; /* out of memory: the cursor is re-read at restart */
            for (uint32_t e = 0; e < LT_GL_CLAIMS; e++)
                if (b->gl_upto[e] != UINT64_MAX)
                    last->gl_upto[e] = b->gl_upto[e];
            free(b->s);
        } else {
            commit_batch(d, b);
        }
        if (token)
            *token = 0;
        return 0;
    }
    b->token = d->next_token++;
    d->nb++;
    if (token)
        *token = b->token;
    lt_tsc_convert_index(d->ctl, buf, (size_t)(out - (char *)buf)); /* copies only: a re-collect converts again */
    return (size_t)(out - (char *)buf);
}

size_t lt_drain_collect(lt_drain *d, void *buf, size_t max_bytes)
{
    return lt_drain_collect_batch(d, buf, max_bytes, NULL);
}

/* Apply one acked snapshot of slot k. Returns 1 if the slot was freed. */
static int commit_slot(lt_drain *d, const snap *sn)
{
    lt_ctl *c = d->ctl;
    uint32_t k = sn->k;
    uint32_t si = d->shard + k * c->shard_count;
    lt_slot *s = lt_slot_at(c, si);
    lt_lane *L = &s->lane[LT_LANE_INDEX];
    slot_cursor *q = &d->cur[k];
    if (sn->retire) {
        q->retire_done = 0; /* re-evaluated by the next collect unless freed */
        uint32_t exp = LT_SLOT_RETIRING;
        /* acquire pairs with the last owner's RETIRING release: its
         * generation bump is visible */
        if (atomic_compare_exchange_strong_explicit(&s->state, &exp, LT_SLOT_RESETTING, ACQ, RLX)) {
            if (atomic_load_explicit(&s->generation, RLX) == sn->gen && lt_detail_lane_empty(c, si)) {
                lt_lane_reset(c, si);
                /* pairs with the producer's acquire CAS FREE->ACTIVE */
                atomic_store_explicit(&s->state, LT_SLOT_FREE, REL);
                atomic_fetch_add_explicit(&c->counters[LT_CTR_SLOTS_FREED], 1, RLX);
                q->submit_pos = 0;
                q->cur_ring = LT_RING_NONE;
                q->cur_off = 0;
                return 1;
            }
            /* taken over and retired again since we collected, or detail
             * data still waiting: keep it, hand the slot back (pairs with
             * the claim CAS) */
            atomic_store_explicit(&s->state, LT_SLOT_RETIRING, REL);
        }
        /* otherwise a new thread took it over: commit it like any lane */
    }
    uint64_t h = atomic_load_explicit(&L->submit_head, RLX);
    if (h == sn->submit_pos && L->ack_ring == sn->cur_ring && L->ack_off == sn->cur_off)
        return 0;
    uint64_t ft = atomic_load_explicit(&L->free_tail, RLX);
    uint32_t ack_ring = sn->cur_ring, ack_off = sn->cur_off;
    for (; h < sn->submit_pos; h++) {
        uint32_t r = L->submit_q[h % LT_SUBMIT_QCAP];
        if (r >= c->rings_per_lane) {
            lt_pool_give(c, L, r); /* a borrowed ring goes back to the target's pool */
        } else {
            L->free_q[ft % c->rings_per_lane] = r;
            ft++;
        }
        if (r == ack_ring) {
            ack_ring = LT_RING_NONE;
            ack_off = 0;
        }
        if (r == q->cur_ring) {
            q->cur_ring = LT_RING_NONE; /* the producer will refill it from 0 */
            q->cur_off = 0;
        }
    }
    atomic_store_explicit(&L->submit_head, h, RLX);
    L->ack_ring = ack_ring;
    L->ack_off = ack_off;
    /* pairs with the producer's acquire of free_tail: we are done reading */
    atomic_store_explicit(&L->free_tail, ft, REL);
    return 0;
}

static int commit_batch(lt_drain *d, batch *b)
{
    lt_ctl *c = d->ctl;
    int freed = 0;
    for (uint32_t i = 0; i < b->n; i++)
        freed += commit_slot(d, &b->s[i]);
    lt_shard_state *ss = &c->shard[d->shard];
    lt_global_cell *cells = lt_global_cells(c);
    uint64_t mask = c->global_records - 1;
    for (uint32_t e = 0; e < LT_GL_CLAIMS; e++) {
        uint64_t upto = b->gl_upto[e];
        if (upto == UINT64_MAX || upto <= ss->gl_lo[e])
            continue;
        for (uint64_t p = ss->gl_lo[e]; p < upto; p++) {
            /* CAS, not store: a stale claim (restart) must never move a cell
             * that someone else already released and a producer reused.
             * Release pairs with the producer's acquire of cell.seq. */
            uint64_t want = p + 1;
            atomic_compare_exchange_strong_explicit(&cells[p & mask].seq, &want, p + mask + 1, REL, RLX);
        }
        ss->gl_lo[e] = upto;
    }
    free(b->s);
    b->s = NULL;
    return freed;
}

int lt_drain_commit_upto(lt_drain *d, uint64_t token)
{
    int freed = 0;
    uint32_t i = 0;
    while (i < d->nb && d->batches[i].token <= token)
        freed += commit_batch(d, &d->batches[i++]);
    if (i) {
        memmove(d->batches, d->batches + i, (d->nb - i) * sizeof(batch));
        d->nb -= i;
    }
    return freed;
}

int lt_drain_commit(lt_drain *d)
{
    return lt_drain_commit_upto(d, UINT64_MAX);
}

uint32_t lt_drain_pending(lt_drain *d) { return d->nb; }

/* ------------------------------------------------------------------ */
/* detail lane                                                          */

/* Whole records of a detail ring span [start, end) that fit in *budget. */
static uint32_t detail_span(const uint8_t *base, uint32_t start, uint32_t end)
{
    uint32_t p = start;
    while (p + LT_DETAIL_HEADER_SIZE <= end) {
        uint32_t sz = ((const lt_detail_record *)(base + p))->size;
        if (sz < LT_DETAIL_HEADER_SIZE || p + sz > end)
            break;
        p += sz;
    }
    return p;
}

/* Clear dpos if it points into ring r (which we own now), keeping the tag. */
static void dpos_forget(lt_lane *L, uint32_t r)
{
    uint64_t dp = atomic_load_explicit(&L->dpos, ACQ);
    while (LT_DPOS_RING(dp) == r) {
        uint64_t nd = LT_DPOS_MAKE(LT_DPOS_TAG(dp), LT_DPOS_NONE_RING, 0);
        if (atomic_compare_exchange_weak_explicit(&L->dpos, &dp, nd, ACQREL, ACQ))
            break;
    }
}

/* Returns 1 if the budget ran out inside this slot. */
static int collect_detail_slot(lt_drain *d, uint32_t si, char **out, size_t *budget)
{
    lt_ctl *c = d->ctl;
    lt_slot *s = lt_slot_at(c, si);
    lt_lane *L = &s->lane[LT_LANE_DETAIL];
    uint32_t rings = c->detail_rings_per_lane;
    uint32_t st = atomic_load_explicit(&s->state, ACQ);
    if (st == LT_SLOT_FREE || st == LT_SLOT_RESETTING)
        return 0;
    /* submitted rings, oldest first: claim, copy, free */
    for (;;) {
        uint64_t h = atomic_load_explicit(&L->submit_head, ACQ);
        /* pairs with the producer's release of submit_tail */
        uint64_t t = atomic_load_explicit(&L->submit_tail, ACQ);
        if (h == t)
            break;
        uint32_t r = L->submit_q[h % rings];
        /* a submitted ring's fill is final (published before submit_tail) */
        uint32_t end = atomic_load_explicit(&L->fill[r], ACQ);
        uint64_t dp = atomic_load_explicit(&L->dpos, ACQ);
        uint32_t start = LT_DPOS_RING(dp) == r ? LT_DPOS_OFF(dp) : 0;
        if (end > start && end - start > *budget)
            return 1;
        /* acq_rel: pairs with the producer's steal CAS; the winner owns r */
        if (!atomic_compare_exchange_strong_explicit(&L->submit_head, &h, h + 1, ACQREL, RLX))
            continue; /* stolen: look again */
        /* ours now; the producer can no longer touch dpos for r (only the
         * tag), so re-read the start */
        dp = atomic_load_explicit(&L->dpos, ACQ);
        start = LT_DPOS_RING(dp) == r ? LT_DPOS_OFF(dp) : 0;
        uint8_t *base = lt_dring_at(c, si, r);
        uint32_t stop = detail_span(base, start, end);
        if (stop > start) {
            memcpy(*out, base + start, stop - start);
            *out += stop - start;
            *budget -= stop - start;
        }
        dpos_forget(L, r);
        uint64_t ft = atomic_load_explicit(&L->free_tail, RLX);
        L->free_q[ft % rings] = r;
        /* pairs with the producer's acquire of free_tail: done reading */
        atomic_store_explicit(&L->free_tail, ft + 1, REL);
    }
    /* the published part of the active ring */
    uint64_t dp = atomic_load_explicit(&L->dpos, ACQ);
    uint32_t a = atomic_load_explicit(&L->active, ACQ);
    if (a == LT_RING_NONE)
        return 0;
    if (LT_DPOS_RING(dp) != LT_DPOS_NONE_RING && LT_DPOS_RING(dp) != a)
        return 0; /* a partly read ring was submitted since: next pass */
    uint32_t start = LT_DPOS_RING(dp) == a ? LT_DPOS_OFF(dp) : 0;
    uint32_t end = atomic_load_explicit(&L->fill[a], ACQ);
    if (end <= start)
        return 0;
    if (end - start > *budget)
        return 1;
    uint8_t *base = lt_dring_at(c, si, a);
    uint32_t stop = detail_span(base, start, end);
    if (stop == start)
        return 0;
    memcpy(*out, base + start, stop - start);
    /* keep the copy only if nobody stole the ring meanwhile (tag unchanged) */
    if (atomic_compare_exchange_strong_explicit(&L->dpos, &dp, LT_DPOS_MAKE(LT_DPOS_TAG(dp), a, stop),
                                                ACQREL, RLX)) {
        *out += stop - start;
        *budget -= stop - start;
    }
    return 0;
}

size_t lt_drain_collect_detail(lt_drain *d, void *buf, size_t max_bytes)
{
    lt_ctl *c = d->ctl;
    char *out = buf;
    size_t budget = max_bytes;
    uint32_t n = d->nslots;
    for (uint32_t j = 0; j < n && budget >= LT_DETAIL_HEADER_SIZE; j++) {
        uint32_t k = (d->drr + j) % n;
        if (collect_detail_slot(d, d->shard + k * c->shard_count, &out, &budget)) {
            d->drr = k;
            break;
        }
    }
    lt_tsc_convert_detail(c, buf, (size_t)(out - (char *)buf));
    return (size_t)(out - (char *)buf);
}

int lt_drain_idle_complete(lt_drain *d)
{
    lt_ctl *c = d->ctl;
    /* pairs with the injector's release of target_exited */
    if (!atomic_load_explicit(&c->target_exited, ACQ))
        return 0;
    if (d->nb)
        return 0; /* collected but not committed */
    for (uint32_t k = 0; k < d->nslots; k++) {
        uint32_t si = d->shard + k * c->shard_count;
        lt_slot *s = lt_slot_at(c, si);
        lt_lane *L = &s->lane[LT_LANE_INDEX];
        slot_cursor *q = &d->cur[k];
        uint32_t st = atomic_load_explicit(&s->state, ACQ);
        if (st == LT_SLOT_FREE)
            continue;
        if (q->retire_done)
            return 0; /* needs a commit to free it */
        if (!lt_detail_lane_empty(c, si))
            return 0;
        uint32_t a = atomic_load_explicit(&L->active, ACQ);
        uint64_t t = atomic_load_explicit(&L->submit_tail, ACQ);
        if (q->submit_pos != t)
            return 0;
        if (a != LT_RING_NONE &&
            !(a == q->cur_ring && q->cur_off == atomic_load_explicit(lt_fill_at(c, L, a), ACQ)) &&
            atomic_load_explicit(lt_fill_at(c, L, a), ACQ) != 0)
            return 0;
        if (atomic_load_explicit(&L->submit_head, RLX) != q->submit_pos ||
            L->ack_ring != q->cur_ring || L->ack_off != q->cur_off)
            return 0; /* collected but not committed */
        if (st == LT_SLOT_RETIRING)
            return 0; /* would become retire_done at the next collect */
    }
    lt_shard_state *ss = &c->shard[d->shard];
    for (uint32_t e = 0; e < LT_GL_CLAIMS; e++)
        if (ss->gl_hi[e] != ss->gl_lo[e])
            return 0;
    /* the global lane is shared: only "complete" once nobody has ready cells */
    lt_global *g = lt_global_of(c);
    uint64_t p = atomic_load_explicit(&g->deq_pos, RLX);
    uint64_t seq = atomic_load_explicit(&lt_global_cells(c)[p & (c->global_records - 1)].seq, ACQ);
    if (seq == p + 1)
        return 0;
    return 1;
}
