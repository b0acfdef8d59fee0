/*
 * shm.c — create/open a target's segment, and the producer side of the
 * lanes. Linked into the cffi extension (injector, drainers, tests) and into
 * the agent library, where it runs on hooked functions' stacks: no libc on
 * the record path (the agent is built with -mgeneral-regs-only), no locks,
 * never blocks. See shm.h for ownership and memory ordering.
 */
#define _GNU_SOURCE
#include "lanetrace/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define ACQREL memory_order_acq_rel

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

uint64_t lt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static int fail(char *err, size_t errlen, int rc, const char *fmt, const char *name)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, name, strerror(-rc));
    return rc;
}

static void reset_one_lane(lt_lane *L, uint32_t rings)
{
    uint32_t r;
    atomic_store_explicit(&L->active, LT_RING_NONE, RLX);
    atomic_store_explicit(&L->submit_tail, 0, RLX);
    atomic_store_explicit(&L->submit_head, 0, RLX);
    atomic_store_explicit(&L->free_head, 0, RLX);
    for (r = 0; r < rings; r++) {
        L->free_q[r] = r;
        atomic_store_explicit(&L->fill[r], 0, RLX);
    }
    atomic_store_explicit(&L->free_tail, rings, RLX);
    /* keep the tag moving: a drainer copy that somehow spans a reset fails */
    uint64_t dp = atomic_load_explicit(&L->dpos, RLX);
    atomic_store_explicit(&L->dpos, LT_DPOS_MAKE(LT_DPOS_TAG(dp) + 1, LT_DPOS_NONE_RING, 0), RLX);
    L->ack_ring = LT_RING_NONE;
    L->ack_off = 0;
}

void lt_lane_reset(lt_ctl *c, uint32_t i)
{
    lt_slot *s = lt_slot_at(c, i);
    /* Called while nobody produces into the slot (create, or RETIRING owned by
     * the drainer); the FREE release store that follows publishes all this. */
    reset_one_lane(&s->lane[LT_LANE_INDEX], c->rings_per_lane);
    reset_one_lane(&s->lane[LT_LANE_DETAIL], c->detail_rings_per_lane);
    atomic_store_explicit(&s->tid, 0, RLX);
}

int lt_detail_lane_empty(lt_ctl *c, uint32_t i)
{
    lt_lane *L = &lt_slot_at(c, i)->lane[LT_LANE_DETAIL];
    uint64_t dp = atomic_load_explicit(&L->dpos, ACQ);
    uint32_t a = atomic_load_explicit(&L->active, ACQ);
    if (atomic_load_explicit(&L->submit_head, ACQ) != atomic_load_explicit(&L->submit_tail, ACQ))
        return 0;
    if (a == LT_RING_NONE)
        return 1;
    uint32_t f = atomic_load_explicit(&L->fill[a], ACQ);
    return f == 0 || (LT_DPOS_RING(dp) == a && LT_DPOS_OFF(dp) == f);
}

int lt_shm_create(const char *name, const lt_shm_config *cfg, uint32_t target_pid,
                  const char *session, lt_shm_map *out, char *err, size_t errlen)
{
    lt_shm_config k = {64, 1, 65536, 8, 16384, 65536, 4};
    if (cfg) {
        if (cfg->slot_count) k.slot_count = cfg->slot_count;
        if (cfg->shard_count) k.shard_count = cfg->shard_count;
        if (cfg->ring_bytes) k.ring_bytes = cfg->ring_bytes;
        if (cfg->rings_per_lane) k.rings_per_lane = cfg->rings_per_lane;
        if (cfg->global_records) k.global_records = cfg->global_records;
        if (cfg->detail_ring_bytes) k.detail_ring_bytes = cfg->detail_ring_bytes;
        if (cfg->detail_rings_per_lane) k.detail_rings_per_lane = cfg->detail_rings_per_lane;
    }
    if (k.slot_count > 65536 || k.shard_count > LT_MAX_SHARDS ||
        k.ring_bytes < 1024 || k.ring_bytes % LT_INDEX_RECORD_SIZE ||
        k.ring_bytes > (64u << 20) || k.rings_per_lane < 2 ||
        k.rings_per_lane > LT_MAX_RINGS_PER_LANE || k.global_records < 2 ||
        (k.global_records & (k.global_records - 1)) || k.global_records > (1u << 24) ||
        k.detail_ring_bytes < 4096 || k.detail_ring_bytes % 8 || k.detail_ring_bytes > (64u << 20) ||
        k.detail_rings_per_lane < 2 || k.detail_rings_per_lane > LT_MAX_RINGS_PER_LANE) {
        if (err && errlen)
            snprintf(err, errlen,
                     "invalid segment config for %s: slots=%u (1..65536) shards=%u (1..%u) "
                     "ring_bytes=%u (1024..64MiB, multiple of 32) rings_per_lane=%u (2..%u) "
                     "global_records=%u (power of two) detail_ring_bytes=%u (4096..64MiB, "
                     "multiple of 8) detail_rings_per_lane=%u (2..%u)",
                     name, k.slot_count, k.shard_count, LT_MAX_SHARDS, k.ring_bytes,
                     k.rings_per_lane, LT_MAX_RINGS_PER_LANE, k.global_records,
                     k.detail_ring_bytes, k.detail_rings_per_lane, LT_MAX_RINGS_PER_LANE);
        return -EINVAL;
    }
    uint64_t ctl_size = align_up(sizeof(lt_ctl), 4096);
    uint64_t stride = align_up(sizeof(lt_slot), 64);
    uint64_t slots_off = ctl_size;
    uint64_t rings_off = align_up(slots_off + stride * k.slot_count, 4096);
    uint64_t rings_size = (uint64_t)k.slot_count * k.rings_per_lane * k.ring_bytes;
    uint64_t global_off = align_up(rings_off + rings_size, 4096);
    uint64_t drop_log_off = align_up(global_off + 128 + (uint64_t)k.global_records * sizeof(lt_global_cell), 4096);
    uint64_t drings_off = align_up(drop_log_off + LT_DROP_LOG_ENTRIES * sizeof(lt_drop_entry), 4096);
    uint64_t total = align_up(drings_off + (uint64_t)k.slot_count * k.detail_rings_per_lane * k.detail_ring_bytes, 4096);

    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot create shared memory %s: %s", name);
    fchmod(fd, 0600); /* umask may have narrowed it; never widen */
    if (ftruncate(fd, (off_t)total) < 0) {
        int rc = -errno;
        close(fd);
        shm_unlink(name);
        return fail(err, errlen, rc, "cannot size shared memory %s: %s", name);
    }
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        shm_unlink(name);
        return fail(err, errlen, rc, "cannot map shared memory %s: %s", name);
    }
    lt_ctl *c = (lt_ctl *)base; /* fresh segment: all zero */
    c->magic = LT_SHM_MAGIC;
    c->version = LT_SHM_VERSION;
    c->ctl_size = (uint32_t)ctl_size;
    c->total_size = total;
    c->target_pid = target_pid;
    c->creator_pid = (uint32_t)getpid();
    if (session)
        snprintf(c->session, sizeof c->session, "%s", session);
    c->slot_count = k.slot_count;
    c->shard_count = k.shard_count;
    c->ring_bytes = k.ring_bytes;
    c->ring_records = k.ring_bytes / LT_INDEX_RECORD_SIZE;
    c->rings_per_lane = k.rings_per_lane;
    c->global_records = k.global_records;
    c->detail_ring_bytes = k.detail_ring_bytes;
    c->detail_rings_per_lane = k.detail_rings_per_lane;
    c->slots_off = slots_off;
    c->slot_stride = stride;
    c->rings_off = rings_off;
    c->global_off = global_off;
    c->drop_log_off = drop_log_off;
    c->drings_off = drings_off;
    c->created_ns = lt_now_ns();
    for (uint32_t i = 0; i < k.slot_count; i++)
        lt_lane_reset(c, i);
    lt_global_cell *cells = lt_global_cells(c);
    for (uint64_t i = 0; i < k.global_records; i++)
        atomic_store_explicit(&cells[i].seq, i, RLX);
    atomic_store_explicit(&c->registry_mode, LT_MODE_GLOBAL_ONLY, RLX);
    atomic_store_explicit(&c->mode_since_ns, c->created_ns, RLX);
    atomic_store_explicit(&c->auto_mode, 1, RLX);
    atomic_store_explicit(&c->stack_bytes, 128, RLX); /* used once the lane is switched on */
    atomic_store_explicit(&c->stale_ns, LT_DEFAULT_STALE_NS, RLX);
    /* pairs with the acquire load in lt_shm_open */
    atomic_store_explicit(&c->registry_ready, 1, REL);
    out->base = base;
    out->size = total;
    out->fd = fd;
    return 0;
}

int lt_shm_open(const char *name, lt_shm_map *out, char *err, size_t errlen)
{
    return lt_shm_open_ex(name, out, err, errlen, 0);
}

int lt_shm_open_ex(const char *name, lt_shm_map *out, char *err, size_t errlen, int populate)
{
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot open shared memory %s: %s", name);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return fail(err, errlen, rc, "cannot stat shared memory %s: %s", name);
    }
    /* the header fields before the checks below; the full size is checked
     * against the header's own total_size */
    if ((size_t)st.st_size < 4096) {
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "shared memory %s is too small (%lld bytes) to be a lanetrace segment",
                     name, (long long)st.st_size);
        return -EPROTO;
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        return fail(err, errlen, rc, "cannot map shared memory %s: %s", name);
    }
    lt_ctl *c = (lt_ctl *)base;
    const char *why = NULL;
    if (c->magic != LT_SHM_MAGIC)
        why = "bad magic (not a lanetrace segment)";
    else if (c->version != LT_SHM_VERSION)
        why = "unsupported layout version";
    else if (c->total_size != (uint64_t)st.st_size || (size_t)st.st_size < sizeof(lt_ctl))
        why = "size does not match its header (truncated?)";
    else if (!atomic_load_explicit(&c->registry_ready, ACQ))
        why = "segment not initialized yet (registry_ready=0)";
    if (why) {
        munmap(base, (size_t)st.st_size);
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "shared memory %s: %s", name, why);
        return -EPROTO;
    }
    if (populate && c->drings_off <= (uint64_t)st.st_size &&
        madvise(base, c->drings_off, MADV_POPULATE_WRITE) != 0) {
        /* older kernel: touch every page of the part before the detail rings */
        volatile uint8_t *b = base;
        for (uint64_t o = 0; o < c->drings_off; o += 4096)
            (void)b[o];
    }
    out->base = base;
    out->size = (size_t)st.st_size;
    out->fd = fd;
    return 0;
}

void lt_shm_close(lt_shm_map *m)
{
    if (m->base) {
        munmap(m->base, m->size);
        m->base = NULL;
    }
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
}

int lt_shm_unlink(const char *name)
{
    return shm_unlink(name) < 0 ? -errno : 0;
}

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
    return reason >= LT_DROP_DETAIL_POOL_EXHAUSTED ? LT_LANE_DETAIL : LT_LANE_INDEX;
}

static void count_drop(lt_producer *p, int reason)
{
    int lane = lane_of(reason);
    lt_drop_add(p->ctl, p->tid, lane, reason, 1, &p->dlog[lane][reason]);
}

void lt_prod_drop(lt_producer *p, int reason) { count_drop(p, reason); }

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

static int take_free_ring(lt_producer *p)
{
    lt_lane *L = &p->slot->lane[LT_LANE_INDEX];
    uint32_t r = pop_free(L, p->ctl->rings_per_lane);
    if (r == LT_RING_NONE)
        return -1;
    p->ring_idx = r;
    p->ring = lt_ring_at(p->ctl, p->slot_idx, r);
    p->fill = 0;
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
    submit(p, &p->slot->lane[LT_LANE_INDEX], p->ring_idx, p->ctl->rings_per_lane);
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
        p->ring_idx = a;
        p->ring = lt_ring_at(c, i, a);
        p->fill = atomic_load_explicit(&L->fill[a], RLX);
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
    atomic_store_explicit(&p->slot->lane[LT_LANE_INDEX].fill[p->ring_idx], p->fill, REL);
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

static void bump_epoch(lt_ctl *c)
{
    /* pairs with the producers' acquire of the epoch at their check */
    atomic_fetch_add_explicit(&c->registry_epoch, 1, REL);
}

/* The agent's own mode machine (auto_mode): GLOBAL_ONLY -> DUAL_WRITE once
 * every shard's heartbeat is fresh, DUAL_WRITE -> PER_THREAD_ONLY once every
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
                bump_epoch(c);
            }
        } else if (fb == LT_FALLBACK_AGENT && fresh &&
                   hb > atomic_load_explicit(&c->fallback_since_ns[k], RLX)) {
            if (atomic_compare_exchange_strong_explicit(&c->shard_fallback[k], &fb, LT_FALLBACK_OFF, RLX, RLX)) {
                atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_CLEARS], 1, RLX);
                bump_epoch(c);
            }
        }
    }
    uint32_t next = mode;
    if (mode == LT_MODE_GLOBAL_ONLY && all_fresh)
        next = LT_MODE_DUAL_WRITE;
    else if (mode == LT_MODE_DUAL_WRITE && all_fresh && all_since)
        next = LT_MODE_PER_THREAD_ONLY;
    if (next != mode) {
        /* since first: whoever sees the new mode sees a since >= ours */
        atomic_store_explicit(&c->mode_since_ns, now, RLX);
        if (atomic_compare_exchange_strong_explicit(&c->registry_mode, &mode, next, REL, RLX)) {
            atomic_fetch_add_explicit(&c->counters[LT_CTR_MODE_TRANSITIONS], 1, RLX);
            bump_epoch(c);
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
    policy(c, now);
    /* acquire pairs with every selector writer's release bump */
    p->epoch_seen = atomic_load_explicit(&c->registry_epoch, ACQ);
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
    lt_ctl *c = p->ctl;
    uint32_t route = p->route;
    int why = -1;
    if ((route & (LT_ROUTE_LANE | LT_ROUTE_GLOBAL)) == (LT_ROUTE_LANE | LT_ROUTE_GLOBAL)) {
        /* DUAL_WRITE: a drop only if neither copy made it */
        int g = lt_global_push(c, &r);
        why = lane_append(p, &r);
        if (why >= 0 && !g)
            why = -1;
    } else if (route & LT_ROUTE_LANE) {
        why = lane_append(p, &r);
    } else if (lt_global_push(c, &r)) {
        why = LT_DROP_GLOBAL_FULL;
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

/* ------------------------------------------------------------------ */
/* control-block accessors (injector, drainers, tests via cffi)        */

void lt_shm_info_get(const lt_shm_map *m, lt_shm_info *o)
{
    lt_ctl *c = lt_ctl_of(m);
    memset(o, 0, sizeof *o);
    o->target_pid = c->target_pid;
    o->creator_pid = c->creator_pid;
    memcpy(o->session, c->session, sizeof o->session);
    o->slot_count = c->slot_count;
    o->shard_count = c->shard_count;
    o->ring_bytes = c->ring_bytes;
    o->rings_per_lane = c->rings_per_lane;
    o->global_records = c->global_records;
    o->total_size = c->total_size;
    o->created_ns = c->created_ns;
    o->detail_ring_bytes = c->detail_ring_bytes;
    o->detail_rings_per_lane = c->detail_rings_per_lane;
}

int lt_shm_set_mode(const lt_shm_map *m, uint32_t mode)
{
    lt_ctl *c = lt_ctl_of(m);
    if (mode > LT_MODE_PER_THREAD_ONLY)
        return -EINVAL;
    atomic_store_explicit(&c->mode_since_ns, lt_now_ns(), RLX);
    /* release: pairs with the policy's acquire (mode_since visible) */
    uint32_t old = atomic_exchange_explicit(&c->registry_mode, mode, REL);
    if (old != mode) {
        atomic_fetch_add_explicit(&c->counters[LT_CTR_MODE_TRANSITIONS], 1, RLX);
        bump_epoch(c);
    }
    return 0;
}

uint32_t lt_shm_mode(const lt_shm_map *m)
{
    return atomic_load_explicit(&lt_ctl_of(m)->registry_mode, RLX);
}

uint64_t lt_shm_epoch(const lt_shm_map *m)
{
    return atomic_load_explicit(&lt_ctl_of(m)->registry_epoch, ACQ);
}

int lt_shm_set_shard_fallback(const lt_shm_map *m, uint32_t shard, uint32_t on)
{
    lt_ctl *c = lt_ctl_of(m);
    if (shard >= c->shard_count)
        return -EINVAL;
    uint32_t want = on ? LT_FALLBACK_WATCHDOG : LT_FALLBACK_OFF;
    if (on)
        atomic_store_explicit(&c->fallback_since_ns[shard], lt_now_ns(), RLX);
    uint32_t old = atomic_exchange_explicit(&c->shard_fallback[shard], want, RLX);
    if (!old && on)
        atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_EVENTS], 1, RLX);
    if (old && !on)
        atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_CLEARS], 1, RLX);
    if (old != want)
        bump_epoch(c);
    return 0;
}

uint32_t lt_shm_shard_fallback(const lt_shm_map *m, uint32_t shard)
{
    lt_ctl *c = lt_ctl_of(m);
    return shard < c->shard_count ? atomic_load_explicit(&c->shard_fallback[shard], RLX) : 0;
}

int lt_shm_heartbeat_set(const lt_shm_map *m, uint32_t shard, uint64_t ns)
{
    lt_ctl *c = lt_ctl_of(m);
    if (shard >= c->shard_count)
        return -EINVAL;
    atomic_store_explicit(&c->heartbeat_ns[shard], ns ? ns : lt_now_ns(), RLX);
    return 0;
}

uint64_t lt_shm_heartbeat_get(const lt_shm_map *m, uint32_t shard)
{
    lt_ctl *c = lt_ctl_of(m);
    return shard < c->shard_count ? atomic_load_explicit(&c->heartbeat_ns[shard], RLX) : 0;
}

void lt_shm_mark_exited(const lt_shm_map *m)
{
    /* pairs with the drainers' acquire in lt_drain_idle_complete */
    atomic_store_explicit(&lt_ctl_of(m)->target_exited, 1, REL);
}

uint32_t lt_shm_target_exited(const lt_shm_map *m)
{
    return atomic_load_explicit(&lt_ctl_of(m)->target_exited, ACQ);
}

void lt_shm_set_agent_state(const lt_shm_map *m, uint32_t st)
{
    atomic_store_explicit(&lt_ctl_of(m)->agent_state, st, RLX);
}

uint32_t lt_shm_agent_state(const lt_shm_map *m)
{
    return atomic_load_explicit(&lt_ctl_of(m)->agent_state, RLX);
}

void lt_shm_drops(const lt_shm_map *m, uint64_t out[LT_DROP_MAX])
{
    lt_ctl *c = lt_ctl_of(m);
    for (int r = 0; r < LT_DROP_MAX; r++)
        out[r] = atomic_load_explicit(&c->drops[r], RLX);
    uint32_t n = atomic_load_explicit(&c->drop_log_claim, RLX);
    if (n > LT_DROP_LOG_ENTRIES)
        n = LT_DROP_LOG_ENTRIES;
    lt_drop_entry *log = lt_drop_log(c);
    for (uint32_t i = 0; i < n; i++)
        if (atomic_load_explicit(&log[i].ready, ACQ) && log[i].reason < LT_DROP_MAX)
            out[log[i].reason] += atomic_load_explicit(&log[i].count, RLX);
}

uint32_t lt_shm_drop_log(const lt_shm_map *m, lt_drop_row *out, uint32_t max)
{
    lt_ctl *c = lt_ctl_of(m);
    uint32_t n = atomic_load_explicit(&c->drop_log_claim, RLX), k = 0;
    if (n > LT_DROP_LOG_ENTRIES)
        n = LT_DROP_LOG_ENTRIES;
    lt_drop_entry *log = lt_drop_log(c);
    for (uint32_t i = 0; i < n && k < max; i++) {
        /* pairs with the claimer's release: key fields visible */
        if (!atomic_load_explicit(&log[i].ready, ACQ))
            continue;
        out[k].count = atomic_load_explicit(&log[i].count, RLX);
        out[k].tid = log[i].tid;
        out[k].lane = log[i].lane;
        out[k].reason = log[i].reason;
        k++;
    }
    return k;
}

void lt_shm_counters(const lt_shm_map *m, uint64_t out[LT_CTR_MAX])
{
    lt_ctl *c = lt_ctl_of(m);
    for (int r = 0; r < LT_CTR_MAX; r++)
        out[r] = atomic_load_explicit(&c->counters[r], RLX);
}

void lt_shm_slot_census(const lt_shm_map *m, uint32_t out[4])
{
    lt_ctl *c = lt_ctl_of(m);
    out[0] = out[1] = out[2] = out[3] = 0;
    for (uint32_t i = 0; i < c->slot_count; i++) {
        uint32_t st = atomic_load_explicit(&lt_slot_at(c, i)->state, RLX);
        if (st <= LT_SLOT_RESETTING)
            out[st]++;
    }
}

int lt_shm_set_detail(const lt_shm_map *m, uint32_t on, uint32_t stack_bytes)
{
    lt_ctl *c = lt_ctl_of(m);
    if (stack_bytes > LT_DETAIL_MAX_STACK)
        return -EINVAL;
    atomic_store_explicit(&c->stack_bytes, stack_bytes, RLX);
    atomic_store_explicit(&c->detail_on, on ? 1u : 0u, RLX);
    bump_epoch(c);
    return 0;
}

void lt_shm_detail(const lt_shm_map *m, uint32_t out[2])
{
    lt_ctl *c = lt_ctl_of(m);
    out[0] = atomic_load_explicit(&c->detail_on, RLX);
    out[1] = atomic_load_explicit(&c->stack_bytes, RLX);
}

void lt_shm_set_policy(const lt_shm_map *m, uint32_t auto_mode, uint64_t stale_ns)
{
    lt_ctl *c = lt_ctl_of(m);
    if (stale_ns)
        atomic_store_explicit(&c->stale_ns, stale_ns, RLX);
    atomic_store_explicit(&c->auto_mode, auto_mode ? 1u : 0u, RLX);
    bump_epoch(c);
}

void lt_shm_policy(const lt_shm_map *m, uint64_t out[3])
{
    lt_ctl *c = lt_ctl_of(m);
    out[0] = atomic_load_explicit(&c->auto_mode, RLX);
    out[1] = atomic_load_explicit(&c->stale_ns, RLX);
    out[2] = atomic_load_explicit(&c->mode_since_ns, RLX);
}

int lt_shm_add_mark(const lt_shm_map *m, uint64_t ts, uint32_t kind, uint32_t func_id, uint32_t tid)
{
    if (kind < LT_MARK_SYMBOL || kind > LT_MARK_MANUAL)
        return -EINVAL;
    return lt_mark_add(lt_ctl_of(m), ts, kind, func_id, tid);
}

uint32_t lt_shm_marks(const lt_shm_map *m, uint32_t start, lt_mark_row *out, uint32_t max)
{
    lt_ctl *c = lt_ctl_of(m);
    uint32_t n = atomic_load_explicit(&c->mark_claim, RLX), k = 0;
    if (n > LT_MAX_MARKS)
        n = LT_MAX_MARKS;
    for (uint32_t i = start; i < n && k < max; i++) {
        lt_mark *mk = &c->marks[i];
        /* pairs with the claimer's release: fields visible; a claimed but
         * unwritten mark ends the list (it shows up at the next read) */
        if (!atomic_load_explicit(&mk->ready, ACQ))
            break;
        out[k].ts_ns = mk->ts_ns;
        out[k].func_id = mk->func_id;
        out[k].tid = mk->tid;
        out[k].kind = mk->kind;
        k++;
    }
    return k;
}
