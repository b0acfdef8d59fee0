/*
 * shm.c — create, open, map and remove a target's segment, and read or set
 * its control block (injector, drainers, watchdog, tests via cffi). The
 * agent maps its target's segment with it once, at load; the producer side
 * of the lanes is native/agent/lanes.c. See shm.h for ownership and memory
 * ordering.
 */
#define _GNU_SOURCE
#include "lanetrace/shm.h"
#include "lanetrace/tsc.h"

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
    atomic_store_explicit(&L->pool_held, 0, RLX);
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
     * the drainer); the FREE release store that follows publishes all this.
     * Everything in the lane was acked: the borrowed rings among its
     * submitted ones and its active one go back to the pool. Each leaves the
     * lane before it is given back, so a drainer that dies in the middle
     * leaks a ring at worst, never gives one twice. */
    lt_lane *L = &s->lane[LT_LANE_INDEX];
    uint64_t h = atomic_load_explicit(&L->submit_head, RLX);
    uint64_t t = atomic_load_explicit(&L->submit_tail, RLX);
    for (; h < t; h++) {
        uint32_t r = L->submit_q[h % LT_SUBMIT_QCAP];
        atomic_store_explicit(&L->submit_head, h + 1, RLX);
        if (r >= c->rings_per_lane)
            lt_pool_give(c, L, r);
    }
    uint32_t a = atomic_exchange_explicit(&L->active, LT_RING_NONE, RLX);
    if (a != LT_RING_NONE && a >= c->rings_per_lane)
        lt_pool_give(c, L, a);
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
    lt_shm_config k = {64, 1, 65536, 8, 16384, 65536, 4, 0};
    if (cfg) {
        if (cfg->slot_count) k.slot_count = cfg->slot_count;
        if (cfg->shard_count) k.shard_count = cfg->shard_count;
        if (cfg->ring_bytes) k.ring_bytes = cfg->ring_bytes;
        if (cfg->rings_per_lane) k.rings_per_lane = cfg->rings_per_lane;
        if (cfg->global_records) k.global_records = cfg->global_records;
        if (cfg->detail_ring_bytes) k.detail_ring_bytes = cfg->detail_ring_bytes;
        if (cfg->detail_rings_per_lane) k.detail_rings_per_lane = cfg->detail_rings_per_lane;
        k.pool_rings = cfg->pool_rings;
    }
    if (k.slot_count > 65536 || k.shard_count > LT_MAX_SHARDS ||
        k.ring_bytes < 1024 || k.ring_bytes % LT_INDEX_RECORD_SIZE ||
        k.ring_bytes > (64u << 20) || k.rings_per_lane < 2 ||
        k.rings_per_lane > LT_MAX_RINGS_PER_LANE || k.global_records < 2 ||
        (k.global_records & (k.global_records - 1)) || k.global_records > (1u << 24) ||
        k.detail_ring_bytes < 4096 || k.detail_ring_bytes % 8 || k.detail_ring_bytes > (64u << 20) ||
        k.detail_rings_per_lane < 2 || k.detail_rings_per_lane > LT_MAX_RINGS_PER_LANE ||
        k.pool_rings > LT_MAX_POOL_RINGS) {
        if (err && errlen)
            snprintf(err, errlen,
                     "invalid segment config for %s: slots=%u (1..65536) shards=%u (1..%u) "
                     "ring_bytes=%u (1024..64MiB, multiple of 32) rings_per_lane=%u (2..%u) "
                     "global_records=%u (power of two) detail_ring_bytes=%u (4096..64MiB, "
                     "multiple of 8) detail_rings_per_lane=%u (2..%u) pool_rings=%u (0..%u)",
                     name, k.slot_count, k.shard_count, LT_MAX_SHARDS, k.ring_bytes,
                     k.rings_per_lane, LT_MAX_RINGS_PER_LANE, k.global_records,
                     k.detail_ring_bytes, k.detail_rings_per_lane, LT_MAX_RINGS_PER_LANE,
                     k.pool_rings, LT_MAX_POOL_RINGS);
        return -EINVAL;
    }
    uint64_t ctl_size = align_up(sizeof(lt_ctl), 4096);
    uint64_t stride = align_up(sizeof(lt_slot), 64);
    uint64_t slots_off = ctl_size;
    uint64_t rings_off = align_up(slots_off + stride * k.slot_count, 4096);
    uint64_t rings_size = (uint64_t)k.slot_count * k.rings_per_lane * k.ring_bytes;
    uint64_t global_off = align_up(rings_off + rings_size, 4096);
    uint64_t drop_log_off = align_up(global_off + 128 + (uint64_t)k.global_records * sizeof(lt_global_cell), 4096);
    uint64_t pool_table_off = align_up(drop_log_off + LT_DROP_LOG_ENTRIES * sizeof(lt_drop_entry), 4096);
    uint64_t drings_off = align_up(pool_table_off + (uint64_t)k.pool_rings * 2 * sizeof(uint32_t), 4096);
    uint64_t pool_off = align_up(drings_off + (uint64_t)k.slot_count * k.detail_rings_per_lane * k.detail_ring_bytes, 4096);
    uint64_t total = align_up(pool_off + (uint64_t)k.pool_rings * k.ring_bytes, 4096);

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
    c->pool_off = pool_off;
    c->pool_table_off = pool_table_off;
    c->pool_rings = k.pool_rings;
    /* every pool ring on the free stack, ring 0 on top (LIFO keeps reusing
     * the same few rings while the pressure is low) */
    uint32_t *next = lt_pool_next(c);
    for (uint32_t j = 0; j < k.pool_rings; j++)
        next[j] = j + 2 < k.pool_rings + 1 ? j + 2 : 0;
    atomic_store_explicit(&c->pool_head, k.pool_rings ? 1u : 0u, RLX);
    atomic_store_explicit(&c->block_timeout_ns, LT_DEFAULT_BLOCK_TIMEOUT_NS, RLX);
    /* the first anchor of the record clock's calibration (tsc.h) */
    lt_tsc_pair(&c->tsc_created, &c->created_ns);
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
    out->base = base;
    out->size = (size_t)st.st_size;
    out->fd = fd;
    if (populate)
        lt_shm_populate(out);
    return 0;
}

void lt_shm_populate(const lt_shm_map *m)
{
    const lt_ctl *c = m->base;
    if (c->drings_off > m->size || madvise(m->base, c->drings_off, MADV_POPULATE_WRITE) == 0)
        return;
    /* older kernel: touch every page of the part before the detail rings */
    volatile uint8_t *b = m->base;
    for (uint64_t o = 0; o < c->drings_off; o += 4096)
        (void)b[o];
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
    o->pool_rings = c->pool_rings;
    o->prefault_bytes = c->drings_off;
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
        lt_bump_epoch(c);
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
        lt_bump_epoch(c);
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
    lt_bump_epoch(c);
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
    lt_bump_epoch(c);
}

void lt_shm_policy(const lt_shm_map *m, uint64_t out[3])
{
    lt_ctl *c = lt_ctl_of(m);
    out[0] = atomic_load_explicit(&c->auto_mode, RLX);
    out[1] = atomic_load_explicit(&c->stale_ns, RLX);
    out[2] = atomic_load_explicit(&c->mode_since_ns, RLX);
}

void lt_shm_set_drop_policy(const lt_shm_map *m, uint32_t no_drop, uint64_t block_timeout_ns)
{
    lt_ctl *c = lt_ctl_of(m);
    if (block_timeout_ns)
        atomic_store_explicit(&c->block_timeout_ns, block_timeout_ns, RLX);
    atomic_store_explicit(&c->no_drop, no_drop ? 1u : 0u, RLX);
    lt_bump_epoch(c);
}

void lt_shm_pool_stats(const lt_shm_map *m, uint64_t out[8])
{
    lt_ctl *c = lt_ctl_of(m);
    out[0] = atomic_load_explicit(&c->no_drop, RLX);
    out[1] = atomic_load_explicit(&c->block_timeout_ns, RLX);
    out[2] = atomic_load_explicit(&c->blocked_ns, RLX);
    out[3] = atomic_load_explicit(&c->blocked_waits, RLX);
    out[4] = c->pool_rings;
    out[5] = atomic_load_explicit(&c->pool_out, RLX);
    out[6] = atomic_load_explicit(&c->pool_peak, RLX);
    out[7] = atomic_load_explicit(&c->pool_borrows, RLX);
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
