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

void lt_lane_reset(lt_ctl *c, uint32_t i)
{
    lt_slot *s = lt_slot_at(c, i);
    uint32_t r;
    /* Called while nobody produces into the slot (create, or RETIRING owned by
     * the drainer); the FREE release store that follows publishes all this. */
    atomic_store_explicit(&s->active, LT_RING_NONE, RLX);
    atomic_store_explicit(&s->submit_tail, 0, RLX);
    atomic_store_explicit(&s->submit_head, 0, RLX);
    atomic_store_explicit(&s->free_head, 0, RLX);
    for (r = 0; r < c->rings_per_lane; r++) {
        s->free_q[r] = r;
        atomic_store_explicit(&s->fill[r], 0, RLX);
    }
    atomic_store_explicit(&s->free_tail, c->rings_per_lane, RLX);
    s->ack_ring = LT_RING_NONE;
    s->ack_off = 0;
    atomic_store_explicit(&s->tid, 0, RLX);
}

int lt_shm_create(const char *name, const lt_shm_config *cfg, uint32_t target_pid,
                  const char *session, lt_shm_map *out, char *err, size_t errlen)
{
    lt_shm_config k = {64, 1, 65536, 8, 16384};
    if (cfg) {
        if (cfg->slot_count) k.slot_count = cfg->slot_count;
        if (cfg->shard_count) k.shard_count = cfg->shard_count;
        if (cfg->ring_bytes) k.ring_bytes = cfg->ring_bytes;
        if (cfg->rings_per_lane) k.rings_per_lane = cfg->rings_per_lane;
        if (cfg->global_records) k.global_records = cfg->global_records;
    }
    if (k.slot_count > 65536 || k.shard_count > LT_MAX_SHARDS ||
        k.ring_bytes < 1024 || k.ring_bytes % LT_INDEX_RECORD_SIZE ||
        k.ring_bytes > (64u << 20) || k.rings_per_lane < 2 ||
        k.rings_per_lane > LT_MAX_RINGS_PER_LANE || k.global_records < 2 ||
        (k.global_records & (k.global_records - 1)) || k.global_records > (1u << 24)) {
        if (err && errlen)
            snprintf(err, errlen,
                     "invalid segment config for %s: slots=%u (1..65536) shards=%u (1..%u) "
                     "ring_bytes=%u (1024..64MiB, multiple of 32) rings_per_lane=%u (2..%u) "
                     "global_records=%u (power of two)",
                     name, k.slot_count, k.shard_count, LT_MAX_SHARDS, k.ring_bytes,
                     k.rings_per_lane, LT_MAX_RINGS_PER_LANE, k.global_records);
        return -EINVAL;
    }
    uint64_t ctl_size = align_up(sizeof(lt_ctl), 4096);
    uint64_t stride = align_up(sizeof(lt_slot), 64);
    uint64_t slots_off = ctl_size;
    uint64_t rings_off = align_up(slots_off + stride * k.slot_count, 4096);
    uint64_t rings_size = (uint64_t)k.slot_count * k.rings_per_lane * k.ring_bytes;
    uint64_t global_off = align_up(rings_off + rings_size, 4096);
    uint64_t total = align_up(global_off + 128 + (uint64_t)k.global_records * sizeof(lt_global_cell), 4096);

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
    c->slots_off = slots_off;
    c->slot_stride = stride;
    c->rings_off = rings_off;
    c->global_off = global_off;
    c->created_ns = lt_now_ns();
    for (uint32_t i = 0; i < k.slot_count; i++)
        lt_lane_reset(c, i);
    lt_global_cell *cells = lt_global_cells(c);
    for (uint64_t i = 0; i < k.global_records; i++)
        atomic_store_explicit(&cells[i].seq, i, RLX);
    atomic_store_explicit(&c->registry_mode, LT_MODE_GLOBAL_ONLY, RLX);
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
    if ((size_t)st.st_size < sizeof(lt_ctl)) {
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "shared memory %s is too small (%lld bytes) to be a lanetrace segment",
                     name, (long long)st.st_size);
        return -EPROTO;
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
                      MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
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
    else if (c->total_size != (uint64_t)st.st_size)
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
/* producer side                                                       */

static void count_drop(lt_producer *p, int reason)
{
    if (p->slot)
        /* single writer per slot at a time: load+store instead of a locked add */
        atomic_store_explicit(&p->slot->drops[reason],
                              atomic_load_explicit(&p->slot->drops[reason], RLX) + 1, RLX);
    else
        atomic_fetch_add_explicit(&p->ctl->drops[reason], 1, RLX);
}

void lt_prod_drop(lt_producer *p, int reason) { count_drop(p, reason); }

/* Take a ring from the free queue and make it active; 0 or -1 if none. */
static int take_free_ring(lt_producer *p)
{
    lt_slot *s = p->slot;
    uint64_t h = atomic_load_explicit(&s->free_head, RLX);
    /* pairs with the drainer's release of free_tail: it finished reading */
    if (h == atomic_load_explicit(&s->free_tail, ACQ))
        return -1;
    uint32_t r = s->free_q[h % p->ctl->rings_per_lane];
    atomic_store_explicit(&s->free_head, h + 1, RLX);
    atomic_store_explicit(&s->fill[r], 0, RLX);
    p->ring_idx = r;
    p->ring = lt_ring_at(p->ctl, p->slot_idx, r);
    p->fill = 0;
    /* pairs with the drainer's acquire of active: fill[r]==0 is visible */
    atomic_store_explicit(&s->active, r, REL);
    return 0;
}

/* Hand the active ring (full or, at exit, partial) to the drainer. */
static void submit_ring(lt_producer *p)
{
    lt_slot *s = p->slot;
    /* NONE first: a drainer that later sees the submit will not take the
     * ring for the active one (pairs with its acquire of active). */
    atomic_store_explicit(&s->active, LT_RING_NONE, REL);
    uint64_t t = atomic_load_explicit(&s->submit_tail, RLX);
    s->submit_q[t % p->ctl->rings_per_lane] = p->ring_idx;
    /* pairs with the drainer's acquire of submit_tail: entry and fill visible */
    atomic_store_explicit(&s->submit_tail, t + 1, REL);
    atomic_fetch_add_explicit(&p->ctl->counters[LT_CTR_RINGS_SUBMITTED], 1, RLX);
    atomic_store_explicit(&s->last_seq, p->seq, RLX);
    p->ring = NULL;
    p->ring_idx = LT_RING_NONE;
}

/* Take over the lane of slot i (already ours by CAS): continue its active
 * ring where the previous owner, if any, left it. */
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
    uint32_t a = atomic_load_explicit(&s->active, RLX); /* ordered by the claim CAS */
    if (a != LT_RING_NONE) {
        p->ring_idx = a;
        p->ring = lt_ring_at(c, i, a);
        p->fill = atomic_load_explicit(&s->fill[a], RLX);
    } else {
        take_free_ring(p);
    }
    atomic_fetch_add_explicit(&c->counters[LT_CTR_THREADS_REGISTERED], 1, RLX);
}

static uint64_t release_epoch(lt_ctl *c)
{
    return atomic_load_explicit(&c->counters[LT_CTR_SLOTS_FREED], RLX) +
           atomic_load_explicit(&c->counters[LT_CTR_THREADS_RETIRED], RLX);
}

int lt_prod_claim(lt_producer *p, lt_ctl *c, uint32_t tid)
{
    p->ctl = c;
    p->tid = tid;
    p->ring = NULL;
    p->ring_idx = LT_RING_NONE;
    p->fill = 0;
    p->cap = c->ring_records;
    p->retired = 0;
    p->no_slot_epoch = release_epoch(c);
    uint32_t n = c->slot_count;
    uint32_t start = (uint32_t)(tid * 2654435761u) % n; /* spread threads over shards */
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

/* Per-thread lane append; returns -1 on success or the drop reason. */
static int lane_append(lt_producer *p, const lt_index_record *r)
{
    if (!p->slot) {
        if (p->retired)
            return LT_DROP_THREAD_EXITING;
        /* retry claiming only after some drainer freed a slot */
        if (release_epoch(p->ctl) == p->no_slot_epoch || lt_prod_claim(p, p->ctl, p->tid) < 0)
            return LT_DROP_NO_SLOT;
    }
    if (p->ring && p->fill == p->cap)
        submit_ring(p);
    if (!p->ring && take_free_ring(p) < 0)
        return LT_DROP_POOL_EXHAUSTED;
    p->ring[p->fill] = *r;
    p->fill++;
    /* pairs with the drainer's acquire of fill: record bytes visible */
    atomic_store_explicit(&p->slot->fill[p->ring_idx], p->fill, REL);
    return -1;
}

void lt_prod_emit(lt_producer *p, uint64_t ts, uint32_t func_id, uint16_t kind, uint16_t depth)
{
    lt_index_record r;
    r.ts_ns = ts;
    r.seq = ++p->seq;
    r.tid = p->tid;
    r.func_id = func_id;
    r.kind = kind;
    r.depth = depth;
    r.flags = 0;
    lt_ctl *c = p->ctl;
    uint32_t mode = atomic_load_explicit(&c->registry_mode, RLX);
    int why;
    if (mode == LT_MODE_PER_THREAD_ONLY) {
        if (p->slot && atomic_load_explicit(&c->shard_fallback[p->shard], RLX))
            goto global_only;
        why = lane_append(p, &r);
        if (why >= 0)
            count_drop(p, why);
    } else if (mode == LT_MODE_DUAL_WRITE) {
        int g = lt_global_push(c, &r);
        why = lane_append(p, &r);
        if (why >= 0 && g)
            count_drop(p, why);
    } else {
    global_only:
        if (lt_global_push(c, &r))
            count_drop(p, LT_DROP_GLOBAL_FULL);
    }
}

void lt_prod_retire(lt_producer *p)
{
    if (p->retired)
        return;
    p->retired = 1;
    lt_slot *s = p->slot;
    if (!s)
        return;
    /* The partial active ring stays active: its fill is already published,
     * the drainer collects it, and the next owner of the slot continues it
     * (no ring is burnt per thread exit). */
    atomic_fetch_add_explicit(&p->ctl->counters[LT_CTR_THREADS_RETIRED], 1, RLX);
    /* pairs with the drainer's acquire of state (final fills/submits and our
     * generation visible) and with the next owner's acquire CAS */
    atomic_store_explicit(&s->state, LT_SLOT_RETIRING, REL);
    p->slot = NULL;
    p->ring = NULL;
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
}

int lt_shm_set_mode(const lt_shm_map *m, uint32_t mode)
{
    lt_ctl *c = lt_ctl_of(m);
    if (mode > LT_MODE_PER_THREAD_ONLY)
        return -EINVAL;
    uint32_t old = atomic_exchange_explicit(&c->registry_mode, mode, RLX);
    if (old != mode) {
        atomic_fetch_add_explicit(&c->counters[LT_CTR_MODE_TRANSITIONS], 1, RLX);
        /* pairs with an acquire of the epoch by anyone caching the mode */
        atomic_fetch_add_explicit(&c->registry_epoch, 1, REL);
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
    uint32_t old = atomic_exchange_explicit(&c->shard_fallback[shard], on ? 1u : 0u, RLX);
    if (!old && on)
        atomic_fetch_add_explicit(&c->counters[LT_CTR_FALLBACK_EVENTS], 1, RLX);
    if (old != (on ? 1u : 0u))
        atomic_fetch_add_explicit(&c->registry_epoch, 1, REL);
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
    for (uint32_t i = 0; i < c->slot_count; i++) {
        lt_slot *s = lt_slot_at(c, i);
        for (int r = 0; r < LT_DROP_MAX; r++)
            out[r] += atomic_load_explicit(&s->drops[r], RLX);
    }
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
