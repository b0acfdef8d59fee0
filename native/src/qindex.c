/*
 * qindex.c — the query server's index builder hot loops.
 *
 * Two passes over an ATF V4 events.bin held in memory (an mmap on the Python
 * side): lt_qindex_scan decodes just the columns the index needs from every
 * frame, and lt_qindex_pair matches calls with returns on per-thread stacks.
 * Decoding 10M events with the protobuf runtime takes minutes; these loops
 * take well under a second. No allocation happens in the scan: the caller
 * sizes the output columns from lt_qindex_count.
 *
 * Wire rules follow protobuf: unknown fields are skipped by wire type, the
 * last occurrence of a oneof member wins, a negative int32 is a 10-byte varint.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define K_UNKNOWN 0
#define K_TRACE_START 1
#define K_TRACE_END 2
#define K_CALL 3
#define K_RETURN 4
#define K_SIGNAL 5
#define K_SYMDEF 6

/* Returns 0 on success, -1 when the varint runs past end or is too long. */
static inline int rd_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    unsigned shift = 0;
    size_t i = *pos;
    while (i < end) {
        uint8_t b = p[i++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pos = i;
            *out = v;
            return 0;
        }
        shift += 7;
        if (shift > 63)
            return -1;
    }
    return -1;
}

/* Skip one field's value of wire type wt. */
static inline int skip_field(const uint8_t *p, size_t end, size_t *pos, unsigned wt)
{
    uint64_t v;
    switch (wt) {
    case 0:
        return rd_varint(p, end, pos, &v);
    case 1:
        if (*pos + 8 > end) return -1;
        *pos += 8;
        return 0;
    case 2:
        if (rd_varint(p, end, pos, &v)) return -1;
        if (v > end - *pos) return -1;
        *pos += v;
        return 0;
    case 5:
        if (*pos + 4 > end) return -1;
        *pos += 4;
        return 0;
    default:
        return -1; /* groups (3/4) do not occur in ATF V4 */
    }
}

int64_t lt_qindex_count(const uint8_t *buf, int64_t len, int64_t *valid_len)
{
    size_t pos = 0, end = (size_t)len;
    int64_t n = 0;
    while (pos < end) {
        uint64_t flen;
        size_t p = pos;
        if (rd_varint(buf, end, &p, &flen) || flen > end - p)
            break; /* torn tail: stop at the last whole frame */
        pos = p + flen;
        n++;
    }
    *valid_len = (int64_t)pos;
    return n;
}

static inline uint64_t fnv1a(const uint8_t *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h ? h : 1; /* 0 means "no symbol" */
}

/* Decode the FunctionCall/FunctionReturn fields the index needs; *regs is
 * set when it carries registers or a stack copy (the flight recorder's). */
static int scan_callret(const uint8_t *buf, size_t pos, size_t end, uint32_t *fid,
                        uint64_t *addr, int64_t *sym_off, uint32_t *sym_len, int *regs)
{
    while (pos < end) {
        uint64_t key, v;
        if (rd_varint(buf, end, &pos, &key)) return -1;
        unsigned fn = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (fn == 1 && wt == 2) {
            if (rd_varint(buf, end, &pos, &v) || v > end - pos) return -1;
            *sym_off = (int64_t)pos;
            *sym_len = (uint32_t)v;
            pos += v;
        } else if (fn == 2 && wt == 0) {
            if (rd_varint(buf, end, &pos, addr)) return -1;
        } else if (fn == 15 && wt == 0) {
            if (rd_varint(buf, end, &pos, &v)) return -1;
            *fid = (uint32_t)v;
        } else {
            *regs |= (fn == 3 || fn == 4) && wt == 2;
            if (skip_field(buf, end, &pos, wt))
                return -1;
        }
    }
    return 0;
}

static int scan_timestamp(const uint8_t *buf, size_t pos, size_t end, int64_t *ts)
{
    int64_t sec = 0, nsec = 0;
    while (pos < end) {
        uint64_t key, v;
        if (rd_varint(buf, end, &pos, &key)) return -1;
        unsigned fn = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (wt == 0 && (fn == 1 || fn == 2)) {
            if (rd_varint(buf, end, &pos, &v)) return -1;
            if (fn == 1) sec = (int64_t)v;
            else nsec = (int32_t)(uint32_t)v;
        } else if (skip_field(buf, end, &pos, wt)) {
            return -1;
        }
    }
    *ts = sec * 1000000000LL + nsec;
    return 0;
}

/* Per-thread state for what compact calls/returns leave out (docs/format.md):
 * the thread's previous call/return. Open addressing, power-of-two size. */
typedef struct {
    int32_t tid;
    uint8_t used, kind; /* kind: 0 none, 1 call, 2 return */
    uint32_t depth;
    uint64_t seq;
    int64_t ts;
} derive_t;

typedef struct {
    derive_t *slot;
    size_t cap, n;
} derive_map;

static derive_t *derive_get(derive_map *m, int32_t tid)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        derive_t *ns = calloc(cap, sizeof *ns);
        if (!ns) return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slot[i].used) continue;
            size_t j = ((uint32_t)m->slot[i].tid * 2654435761u) & (cap - 1);
            while (ns[j].used) j = (j + 1) & (cap - 1);
            ns[j] = m->slot[i];
        }
        free(m->slot);
        m->slot = ns;
        m->cap = cap;
    }
    size_t i = ((uint32_t)tid * 2654435761u) & (m->cap - 1);
    while (m->slot[i].used && m->slot[i].tid != tid) i = (i + 1) & (m->cap - 1);
    if (!m->slot[i].used) {
        memset(&m->slot[i], 0, sizeof m->slot[i]);
        m->slot[i].used = 1;
        m->slot[i].tid = tid;
        m->n++;
    }
    return &m->slot[i];
}

/*
 * Decode up to n frames. Per event: payload offset and length, timestamp
 * (ns), thread id, kind (K_*), function id, runtime address, symbol string
 * span and hash, depth (-1 when the field is absent), sequence (0 when
 * absent). SymbolDefinition frames are not events: their payload spans go
 * to def_off/def_len instead (*ndefs of them), so no column needs a second
 * pass to drop them. Flight-recorder detail frames (Event.detail = 22, older
 * traces) repeat a call/return already in the stream: they go to det_*
 * (payload span, thread id, sequence; *ndet of them), to be joined by
 * (thread, sequence). A numbered call/return that carries its registers
 * itself is an event and also goes to det_*, joined to itself.
 * Returns the number of events, or -(1 + index) of the first frame that is
 * not a valid Event message.
 */
int64_t lt_qindex_scan(const uint8_t *buf, int64_t len, int64_t n,
                       int64_t *off, uint32_t *plen, int64_t *ts, int32_t *tid, uint8_t *kind,
                       uint32_t *fid, uint64_t *addr, int64_t *sym_off,
                       uint32_t *sym_len, uint64_t *sym_hash, int32_t *depth,
                       uint64_t *seq, int64_t *def_off, uint32_t *def_len, int64_t *ndefs,
                       int64_t *det_off, uint32_t *det_len, int32_t *det_tid,
                       uint64_t *det_seq, int64_t *ndet)
{
    size_t pos = 0, end = (size_t)len;
    int64_t i = 0, nd = 0, nt = 0, rc = 0;
    derive_map dm = {0};
    for (int64_t f = 0; f < n; f++) {
        uint64_t flen, key, v, delta = 0;
        int detail = 0, have_ts = 0, regs = 0;
        if (rd_varint(buf, end, &pos, &flen) || flen > end - pos) {
            rc = -(1 + f);
            goto out;
        }
        size_t mend = pos + flen;
        off[i] = (int64_t)pos;
        plen[i] = (uint32_t)flen;
        ts[i] = 0; tid[i] = 0; kind[i] = K_UNKNOWN; fid[i] = 0; addr[i] = 0;
        sym_off[i] = 0; sym_len[i] = 0; sym_hash[i] = 0; depth[i] = -1; seq[i] = 0;
        while (pos < mend) {
            if (rd_varint(buf, mend, &pos, &key)) { rc = -(1 + f); goto out; }
            unsigned fn = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
            if (wt == 0 && (fn == 2 || (fn >= 20 && fn <= 23))) {
                if (rd_varint(buf, mend, &pos, &v)) { rc = -(1 + f); goto out; }
                if (fn == 2) tid[i] = (int32_t)(uint32_t)v;
                else if (fn == 20) seq[i] = v;
                else if (fn == 21) depth[i] = (int32_t)(uint32_t)v;
                else if (fn == 22) detail = v != 0;
                else delta = v;
            } else if (wt == 2 && (fn == 3 || (fn >= 10 && fn <= 15))) {
                if (rd_varint(buf, mend, &pos, &v) || v > mend - pos) { rc = -(1 + f); goto out; }
                size_t sub = pos, subend = pos + v;
                pos = subend;
                if (fn == 3) {
                    have_ts = 1;
                    if (scan_timestamp(buf, sub, subend, &ts[i])) { rc = -(1 + f); goto out; }
                } else if (fn == 12 || fn == 13) {
                    kind[i] = fn == 12 ? K_CALL : K_RETURN;
                    fid[i] = 0; addr[i] = 0; sym_off[i] = 0; sym_len[i] = 0;
                    if (scan_callret(buf, sub, subend, &fid[i], &addr[i], &sym_off[i], &sym_len[i],
                                     &regs))
                        { rc = -(1 + f); goto out; }
                } else {
                    kind[i] = fn == 10 ? K_TRACE_START : fn == 11 ? K_TRACE_END
                            : fn == 14 ? K_SIGNAL : K_SYMDEF;
                }
            } else if (skip_field(buf, mend, &pos, wt)) {
                { rc = -(1 + f); goto out; }
            }
        }
        pos = mend;
        if (kind[i] == K_SYMDEF) {
            def_off[nd] = off[i];
            def_len[nd] = plen[i];
            nd++;
            continue;
        }
        if (detail) {
            det_off[nt] = off[i];
            det_len[nt] = plen[i];
            det_tid[nt] = tid[i];
            det_seq[nt] = seq[i];
            nt++;
            continue;
        }
        if (kind[i] == K_CALL || kind[i] == K_RETURN) {
            derive_t *d = derive_get(&dm, tid[i]);
            if (!d) { rc = -(1 + f); goto out; }
            int is_call = kind[i] == K_CALL;
            if (!have_ts)
                ts[i] = d->ts + (int64_t)delta;
            d->ts = ts[i];
            if (!seq[i] && d->seq) { /* compact: previous + 1, depth from the nesting */
                seq[i] = d->seq + 1;
                if (depth[i] < 0) {
                    int64_t dd = d->kind == 1 ? (is_call ? (int64_t)d->depth + 1 : d->depth)
                               : d->kind == 2 ? (is_call ? (int64_t)d->depth : (int64_t)d->depth - 1)
                               : -1;
                    depth[i] = dd < 0 ? 0 : (int32_t)dd;
                }
            }
            if (seq[i]) {
                d->seq = seq[i];
                d->depth = depth[i] < 0 ? 0 : (uint32_t)depth[i];
                d->kind = is_call ? 1 : 2;
                if (regs) { /* its own detail: joined to itself like a twin */
                    det_off[nt] = off[i];
                    det_len[nt] = plen[i];
                    det_tid[nt] = tid[i];
                    det_seq[nt] = seq[i];
                    nt++;
                }
            }
        }
        if (sym_len[i])
            sym_hash[i] = fnv1a(buf + sym_off[i], sym_len[i]);
        i++;
    }
    rc = i;
out:
    free(dm.slot);
    if (rc < 0)
        return rc;
    *ndefs = nd;
    *ndet = nt;
    return rc;
}

/*
 * Counting sort: perm lists the positions with key 0, then key 1, ...
 * (ascending positions within a key); off[k]..off[k+1] is key k's run.
 * Keys must lie in [0, nkeys). O(n + nkeys), where a comparison sort of
 * 10M keys costs half a second.
 */
void lt_qindex_group(int64_t n, const int32_t *keys, int64_t nkeys, int32_t *perm, int64_t *off)
{
    for (int64_t k = 0; k <= nkeys; k++) off[k] = 0;
    for (int64_t i = 0; i < n; i++) off[keys[i] + 1]++;
    for (int64_t k = 0; k < nkeys; k++) off[k + 1] += off[k];
    int64_t *next = malloc((size_t)(nkeys ? nkeys : 1) * sizeof *next);
    if (!next) return;
    for (int64_t k = 0; k < nkeys; k++) next[k] = off[k];
    for (int64_t i = 0; i < n; i++) perm[next[keys[i]]++] = (int32_t)i;
    free(next);
}

/* Open-addressing map: thread id -> stack number. */
typedef struct {
    int32_t *keys;
    int32_t *vals;
    uint8_t *used;
    size_t cap, n;
} tidmap;

static int tidmap_grow(tidmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    int32_t *k = calloc(ncap, sizeof *k), *v = calloc(ncap, sizeof *v);
    uint8_t *u = calloc(ncap, 1);
    if (!k || !v || !u) { free(k); free(v); free(u); return -1; }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->used[i]) continue;
        size_t h = ((uint32_t)m->keys[i] * 2654435761u) & (ncap - 1);
        while (u[h]) h = (h + 1) & (ncap - 1);
        u[h] = 1; k[h] = m->keys[i]; v[h] = m->vals[i];
    }
    free(m->keys); free(m->vals); free(m->used);
    m->keys = k; m->vals = v; m->used = u; m->cap = ncap;
    return 0;
}

/* Returns the stack number of tid, creating it as `next` if new; -1 on OOM. */
static int32_t tidmap_get(tidmap *m, int32_t tid, int32_t next, int *created)
{
    if ((m->n + 1) * 2 > m->cap && tidmap_grow(m)) return -1;
    size_t h = ((uint32_t)tid * 2654435761u) & (m->cap - 1);
    while (m->used[h]) {
        if (m->keys[h] == tid) { *created = 0; return m->vals[h]; }
        h = (h + 1) & (m->cap - 1);
    }
    m->used[h] = 1; m->keys[h] = tid; m->vals[h] = next; m->n++;
    *created = 1;
    return next;
}

typedef struct { int64_t ev; int32_t key; int32_t depth; int32_t children; int64_t child_ns; } frame_t;
typedef struct { frame_t *f; size_t n, cap; } stack_t_;

/*
 * Pair calls with returns per thread, in file order (which is each thread's
 * sequence order). A return pops the topmost frame of the same function key;
 * frames above it never returned (lost records, longjmp) and make no span.
 * A return with no such frame is an orphan and makes no span.
 *
 * In: n events with tid, kind, key (function index). Out: ev_depth per event
 * (depth of the call at entry; -1 for other kinds and orphans), and per span
 * the call and return event indexes, depth, completed direct children and
 * the sum of their durations. Returns the number of spans, or -1 on OOM.
 */
int64_t lt_qindex_pair(int64_t n, const int32_t *tid, const uint8_t *kind,
                       const int32_t *key, const int64_t *ts, int32_t *ev_depth,
                       int64_t *sp_call, int64_t *sp_ret, int32_t *sp_depth,
                       int32_t *sp_children, int64_t *sp_child_ns)
{
    tidmap m = {0};
    stack_t_ *stacks = NULL;
    int32_t nstacks = 0, scap = 0;
    int64_t ns = 0, rc = -1;
    for (int64_t i = 0; i < n; i++) {
        ev_depth[i] = -1;
        uint8_t k = kind[i];
        if (k != K_CALL && k != K_RETURN) continue;
        int created;
        int32_t s = tidmap_get(&m, tid[i], nstacks, &created);
        if (s < 0) goto out;
        if (created) {
            if (nstacks == scap) {
                int32_t nc = scap ? scap * 2 : 16;
                stack_t_ *ns_ = realloc(stacks, (size_t)nc * sizeof *stacks);
                if (!ns_) goto out;
                stacks = ns_; scap = nc;
            }
            stacks[nstacks].f = NULL; stacks[nstacks].n = 0; stacks[nstacks].cap = 0;
            nstacks++;
        }
        stack_t_ *st = &stacks[s];
        if (k == K_CALL) {
            if (st->n == st->cap) {
                size_t nc = st->cap ? st->cap * 2 : 32;
                frame_t *nf = realloc(st->f, nc * sizeof *nf);
                if (!nf) goto out;
                st->f = nf; st->cap = nc;
            }
            frame_t *f = &st->f[st->n++];
            f->ev = i; f->key = key[i]; f->depth = (int32_t)(st->n - 1);
            f->children = 0; f->child_ns = 0;
            ev_depth[i] = f->depth;
        } else {
            size_t j = st->n;
            while (j > 0 && st->f[j - 1].key != key[i]) j--;
            if (j == 0) continue; /* orphan return */
            frame_t *f = &st->f[j - 1];
            int64_t dur = ts[i] - ts[f->ev];
            sp_call[ns] = f->ev; sp_ret[ns] = i; sp_depth[ns] = f->depth;
            sp_children[ns] = f->children; sp_child_ns[ns] = f->child_ns;
            ns++;
            ev_depth[i] = f->depth;
            st->n = j - 1;
            if (st->n) {
                st->f[st->n - 1].children++;
                st->f[st->n - 1].child_ns += dur;
            }
        }
    }
    rc = ns;
out:
    for (int32_t s = 0; s < nstacks; s++) free(stacks[s].f);
    free(stacks);
    free(m.keys); free(m.vals); free(m.used);
    return rc;
}

/*
 * Number the distinct thread ids of n events in first-seen order: out_idx[i]
 * is the number of tid[i], out_tids[k] the tid numbered k (room for max_tids).
 * Returns the count, -1 on OOM, -2 when there are more than max_tids.
 */
int64_t lt_qindex_threads(int64_t n, const int32_t *tid, int32_t *out_idx,
                          int32_t *out_tids, int64_t max_tids)
{
    tidmap m = {0};
    int32_t k = 0;
    int64_t rc = 0;
    for (int64_t i = 0; i < n; i++) {
        int created;
        int32_t s = tidmap_get(&m, tid[i], k, &created);
        if (s < 0) { rc = -1; goto out; }
        if (created) {
            if (k >= max_tids) { rc = -2; goto out; }
            out_tids[k++] = tid[i];
        }
        out_idx[i] = s;
    }
    rc = k;
out:
    free(m.keys); free(m.vals); free(m.used);
    return rc;
}
