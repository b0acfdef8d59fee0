/*
 * encode.c — ATF V4 encoding of raw index records (see lanetrace/encode.h).
 *
 * Field order and omission of zero values follow what the protobuf runtime
 * emits for proto3, so our bytes equal a reference encoding exactly; the
 * tests rely on that to compare against the official runtime.
 */
#include "lanetrace/encode.h"
#include "lanetrace/detail.h"

#include <stdlib.h>
#include <string.h>

/* Wire tags of proto/atf_v4.proto, pre-encoded. */
#define TAG_EVENT_ID 0x08        /* 1, varint */
#define TAG_THREAD_ID 0x10       /* 2, varint */
#define TAG_TIMESTAMP 0x1a       /* 3, len */
#define TAG_CALL 0x62            /* 12, len */
#define TAG_RETURN 0x6a          /* 13, len */
#define TAG_SEQUENCE_0 0xa0      /* 20, varint: two bytes a0 01 */
#define TAG_DEPTH_0 0xa8         /* 21, varint: two bytes a8 01 */
#define TAG_TS_SECONDS 0x08
#define TAG_TS_NANOS 0x10
#define TAG_SYMBOL 0x0a          /* FunctionCall/Return.symbol = 1 */
#define TAG_ADDRESS 0x10         /* .address = 2 */
#define TAG_FUNCTION_ID 0x78     /* .function_id = 15 */
#define TAG_UNWOUND_0 0x80       /* FunctionReturn.unwound = 16: 80 01 */
#define TAG_REGISTERS 0x1a       /* argument_registers / return_registers = 3, len */
#define TAG_STACK 0x22           /* FunctionCall.stack_shallow_copy = 4, len */
#define TAG_DETAIL_0 0xb0        /* Event.detail = 22, varint: b0 01 */
#define TAG_MAP_KEY 0x0a
#define TAG_MAP_VALUE 0x10

/* Register names in the order of lt_detail_record.regs (record.h). */
static const char *const ENTRY_REGS[] = {"rdi", "rsi", "rdx", "rcx", "r8", "r9", "rsp", "r10"};
static const char *const RETURN_REGS[] = {"rax", "rdx", "r2", "r3", "r4", "r5", "r6", "r7"};
/* one map entry at most: tag 1 + len 1 + key 1+1+3 + value 1+10 */
#define REG_ENTRY_BOUND 18u

/* Worst case of everything but the inline symbol bytes: event_id 11,
 * thread_id 11, timestamp 2+11+6, payload header 1+5, symbol header 1+5,
 * address 11, function_id 6, unwound 3, sequence 12, depth 5, frame 5. */
#define FIXED_BOUND 128u

typedef struct fn_entry {
    uint32_t id;
    uint32_t used;
    uint64_t address;
    char *symbol;
    size_t symbol_len;
    uint64_t calls;
} fn_entry;

/* Sequence holes are remembered per thread (up to LT_ENCODE_MAX_HOLES, see
 * encode.h), to tell a record that arrives after higher numbers (another
 * lane's drainer was slower) from a true duplicate. */
typedef struct tid_entry {
    uint32_t tid;
    uint32_t used;
    uint64_t max_seq;
    uint64_t open_calls;
    uint64_t detail_max_seq; /* detail records: one lane per thread, so in order */
    uint32_t nholes, hole_cap;
    uint64_t *hole_lo; /* ascending, disjoint, all below max_seq; grown on demand */
    uint64_t *hole_hi;
} tid_entry;

struct lt_encoder {
    int inline_symbols;
    size_t max_symbol_len;
    fn_entry *fns;      /* open addressing, power-of-two capacity */
    size_t fn_cap, fn_count;
    tid_entry *tids;
    size_t tid_cap, tid_count;
    fn_entry *last_fn;  /* one-entry caches: consecutive records mostly share them */
    tid_entry *last_tid;
    uint64_t *others;
    size_t others_len, others_cap;
    lt_encode_stats st;
};

static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static inline size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

lt_encoder *lt_encoder_new(int inline_symbols) {
    lt_encoder *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->inline_symbols = inline_symbols;
    e->fn_cap = 64;
    e->tid_cap = 64;
    e->fns = calloc(e->fn_cap, sizeof *e->fns);
    e->tids = calloc(e->tid_cap, sizeof *e->tids);
    if (!e->fns || !e->tids) {
        lt_encoder_free(e);
        return NULL;
    }
    e->st.next_event_id = 1;
    e->st.min_ts_ns = UINT64_MAX;
    return e;
}

void lt_encoder_free(lt_encoder *e) {
    if (!e)
        return;
    if (e->fns)
        for (size_t i = 0; i < e->fn_cap; i++)
            free(e->fns[i].symbol);
    free(e->fns);
    if (e->tids)
        for (size_t i = 0; i < e->tid_cap; i++) {
            free(e->tids[i].hole_lo);
            free(e->tids[i].hole_hi);
        }
    free(e->tids);
    free(e->others);
    free(e);
}

/* Fields every call/return Event starts with (event_id, thread_id,
 * timestamp), shared by the index and the detail encoders. */
typedef struct ev_head {
    uint64_t eid, tidv, secs, nanos;
    size_t ts_len;
} ev_head;

static inline ev_head ev_head_of(uint64_t eid, uint32_t tid, uint64_t ts_ns) {
    ev_head h;
    h.eid = eid;
    /* int32 thread_id: proto sign-extends negative values to 64 bits */
    h.tidv = (uint64_t)(int64_t)(int32_t)tid;
    h.secs = ts_ns / 1000000000u;
    h.nanos = ts_ns % 1000000000u;
    h.ts_len = (h.secs ? 1 + varint_size(h.secs) : 0) + (h.nanos ? 1 + varint_size(h.nanos) : 0);
    return h;
}

static inline size_t ev_head_size(const ev_head *h) {
    return 1 + varint_size(h->eid) + (h->tidv ? 1 + varint_size(h->tidv) : 0) +
           1 + varint_size(h->ts_len) + h->ts_len;
}

static inline uint8_t *put_ev_head(uint8_t *p, const ev_head *h) {
    *p++ = TAG_EVENT_ID;
    p = put_varint(p, h->eid);
    if (h->tidv) {
        *p++ = TAG_THREAD_ID;
        p = put_varint(p, h->tidv);
    }
    *p++ = TAG_TIMESTAMP;
    p = put_varint(p, h->ts_len);
    if (h->secs) {
        *p++ = TAG_TS_SECONDS;
        p = put_varint(p, h->secs);
    }
    if (h->nanos) {
        *p++ = TAG_TS_NANOS;
        p = put_varint(p, h->nanos);
    }
    return p;
}

/* The base format's symbol string (only with --inline-symbols) and the runtime
 * address, first in both FunctionCall and FunctionReturn payloads. */
static inline size_t symbol_address_size(size_t symlen, uint64_t addr) {
    return (symlen ? 1 + varint_size(symlen) + symlen : 0) + (addr ? 1 + varint_size(addr) : 0);
}

static inline uint8_t *put_symbol_address(uint8_t *p, const fn_entry *f, size_t symlen,
                                          uint64_t addr) {
    if (symlen) {
        *p++ = TAG_SYMBOL;
        p = put_varint(p, symlen);
        memcpy(p, f->symbol, symlen);
        p += symlen;
    }
    if (addr) {
        *p++ = TAG_ADDRESS;
        p = put_varint(p, addr);
    }
    return p;
}

static fn_entry *fn_find(lt_encoder *e, uint32_t id) {
    if (e->last_fn && e->last_fn->id == id)
        return e->last_fn;
    size_t mask = e->fn_cap - 1;
    for (size_t i = hash32(id) & mask;; i = (i + 1) & mask) {
        fn_entry *f = &e->fns[i];
        if (!f->used)
            return NULL;
        if (f->id == id)
            return e->last_fn = f;
    }
}

static int fn_grow(lt_encoder *e) {
    size_t cap = e->fn_cap * 2;
    fn_entry *n = calloc(cap, sizeof *n);
    if (!n)
        return -1;
    for (size_t i = 0; i < e->fn_cap; i++) {
        if (!e->fns[i].used)
            continue;
        size_t j = hash32(e->fns[i].id) & (cap - 1);
        while (n[j].used)
            j = (j + 1) & (cap - 1);
        n[j] = e->fns[i];
    }
    free(e->fns);
    e->fns = n;
    e->fn_cap = cap;
    e->last_fn = NULL;
    return 0;
}

int lt_encoder_set_function(lt_encoder *e, uint32_t id, uint64_t address,
                            const char *symbol, size_t symbol_len) {
    char *copy = malloc(symbol_len + 1);
    if (!copy)
        return -1;
    if (symbol_len)
        memcpy(copy, symbol, symbol_len);
    copy[symbol_len] = 0;
    fn_entry *f = fn_find(e, id);
    if (!f) {
        if ((e->fn_count + 1) * 2 > e->fn_cap && fn_grow(e) != 0) {
            free(copy);
            return -1;
        }
        size_t mask = e->fn_cap - 1;
        size_t i = hash32(id) & mask;
        while (e->fns[i].used)
            i = (i + 1) & mask;
        f = &e->fns[i];
        f->used = 1;
        f->id = id;
        f->calls = 0;
        e->fn_count++;
        e->st.functions = e->fn_count;
    }
    free(f->symbol);
    f->symbol = copy;
    f->symbol_len = symbol_len;
    f->address = address;
    if (symbol_len > e->max_symbol_len)
        e->max_symbol_len = symbol_len;
    return 0;
}

static int tid_grow(lt_encoder *e) {
    size_t cap = e->tid_cap * 2;
    tid_entry *n = calloc(cap, sizeof *n);
    if (!n)
        return -1;
    for (size_t i = 0; i < e->tid_cap; i++) {
        if (!e->tids[i].used)
            continue;
        size_t j = hash32(e->tids[i].tid) & (cap - 1);
        while (n[j].used)
            j = (j + 1) & (cap - 1);
        n[j] = e->tids[i];
    }
    free(e->tids);
    e->tids = n;
    e->tid_cap = cap;
    e->last_tid = NULL;
    return 0;
}

/* NULL only on allocation failure. */
static tid_entry *tid_get(lt_encoder *e, uint32_t tid) {
    if (e->last_tid && e->last_tid->tid == tid)
        return e->last_tid;
    size_t mask = e->tid_cap - 1;
    size_t i = hash32(tid) & mask;
    for (;; i = (i + 1) & mask) {
        tid_entry *t = &e->tids[i];
        if (!t->used)
            break;
        if (t->tid == tid)
            return e->last_tid = t;
    }
    if ((e->tid_count + 1) * 2 > e->tid_cap) {
        if (tid_grow(e) != 0)
            return NULL;
        mask = e->tid_cap - 1;
        i = hash32(tid) & mask;
        while (e->tids[i].used)
            i = (i + 1) & mask;
    }
    tid_entry *t = &e->tids[i];
    t->used = 1;
    t->tid = tid;
    e->tid_count++;
    e->st.threads = e->tid_count;
    return e->last_tid = t;
}

uint64_t lt_encoder_take_event_ids(lt_encoder *e, uint64_t n) {
    uint64_t first = e->st.next_event_id;
    e->st.next_event_id += n;
    return first;
}

size_t lt_encode_bound(const lt_encoder *e, size_t count) {
    size_t per = FIXED_BOUND + (e->inline_symbols ? e->max_symbol_len : 0);
    return count * per;
}

/* Bookkeeping shared by encoding and scanning: one call/return that is (or
 * already was) written to the file. */
static inline void account(lt_encoder *e, tid_entry *t, fn_entry *f, int is_call,
                           int unwound, uint64_t ts) {
    e->st.events++;
    if (is_call) {
        e->st.calls++;
        t->open_calls++;
        if (f)
            f->calls++;
    } else {
        e->st.returns++;
        e->st.unwound += (unsigned)unwound;
        if (t->open_calls) {
            t->open_calls--;
            e->st.spans++;
        }
    }
    if (!f)
        e->st.unknown_function++;
    if (ts < e->st.min_ts_ns)
        e->st.min_ts_ns = ts;
    if (ts > e->st.max_ts_ns)
        e->st.max_ts_ns = ts;
}

/* Room for one more hole; 0 if the list is at its cap or cannot grow. */
static int hole_room(tid_entry *t) {
    if (t->nholes < t->hole_cap)
        return 1;
    if (t->hole_cap >= LT_ENCODE_MAX_HOLES)
        return 0;
    uint32_t cap = t->hole_cap ? t->hole_cap * 2 : 16;
    if (cap > LT_ENCODE_MAX_HOLES)
        cap = LT_ENCODE_MAX_HOLES;
    uint64_t *lo = realloc(t->hole_lo, cap * sizeof *lo);
    if (!lo)
        return 0;
    t->hole_lo = lo;
    uint64_t *hi = realloc(t->hole_hi, cap * sizeof *hi);
    if (!hi)
        return 0;
    t->hole_hi = hi;
    t->hole_cap = cap;
    return 1;
}

static void hole_insert(tid_entry *t, size_t at, uint64_t lo, uint64_t hi) {
    if (!hole_room(t)) { /* forget the oldest (lowest) hole */
        if (!t->nholes)
            return;
        memmove(&t->hole_lo[0], &t->hole_lo[1], (t->nholes - 1) * sizeof(uint64_t));
        memmove(&t->hole_hi[0], &t->hole_hi[1], (t->nholes - 1) * sizeof(uint64_t));
        t->nholes--;
        if (at == 0) /* the new hole itself is the lowest */
            return;
        at--;
    }
    memmove(&t->hole_lo[at + 1], &t->hole_lo[at], (t->nholes - at) * sizeof(uint64_t));
    memmove(&t->hole_hi[at + 1], &t->hole_hi[at], (t->nholes - at) * sizeof(uint64_t));
    t->hole_lo[at] = lo;
    t->hole_hi[at] = hi;
    t->nholes++;
}

/* A seq at or below max_seq: 1 if it falls into a remembered hole (a late
 * record, which is then no longer expected), 0 for a duplicate. */
static int hole_take(tid_entry *t, uint64_t seq) {
    for (size_t i = t->nholes; i-- > 0;) {
        uint64_t lo = t->hole_lo[i], hi = t->hole_hi[i];
        if (seq > hi)
            return 0;
        if (seq < lo)
            continue;
        if (lo == hi) {
            memmove(&t->hole_lo[i], &t->hole_lo[i + 1], (t->nholes - i - 1) * sizeof(uint64_t));
            memmove(&t->hole_hi[i], &t->hole_hi[i + 1], (t->nholes - i - 1) * sizeof(uint64_t));
            t->nholes--;
        } else if (seq == lo) {
            t->hole_lo[i]++;
        } else if (seq == hi) {
            t->hole_hi[i]--;
        } else {
            t->hole_hi[i] = seq - 1;
            hole_insert(t, i + 1, seq + 1, hi);
        }
        return 1;
    }
    return 0;
}

enum { SEQ_NEW, SEQ_DUPLICATE, SEQ_LATE };

/* Sequence check; SEQ_NEW advances max_seq and records any gap. A late record
 * (it fills a remembered hole) is written like a new one: readers sort a
 * thread's events by sequence, and the hole is no longer a gap. */
static inline int seq_accept(lt_encoder *e, tid_entry *t, uint64_t seq, uint64_t *gaps) {
    if (seq <= t->max_seq) {
        if (!hole_take(t, seq))
            return SEQ_DUPLICATE;
        e->st.gaps--;
        return SEQ_LATE;
    }
    uint64_t gap = seq - t->max_seq - 1;
    if (gap) {
        e->st.gaps += gap;
        *gaps += gap;
        hole_insert(t, t->nholes, t->max_seq + 1, seq - 1);
    }
    t->max_seq = seq;
    return SEQ_NEW;
}

int64_t lt_encode_index(lt_encoder *e, const lt_index_record *recs, size_t count,
                        uint8_t *out, size_t out_cap, lt_batch_result *res) {
    lt_batch_result r = {0};
    if (out_cap < lt_encode_bound(e, count))
        return -1;
    uint8_t *p = out;
    for (size_t i = 0; i < count; i++) {
        lt_index_record rec;
        memcpy(&rec, &recs[i], sizeof rec); /* payloads need not be aligned */
        if (rec.kind < LT_KIND_ENTRY || rec.kind > LT_KIND_RETURN_UNWOUND || rec.seq == 0) {
            r.invalid_records++;
            e->st.invalid_records++;
            continue;
        }
        tid_entry *t = tid_get(e, rec.tid);
        if (!t) /* out of memory: stop here; the caller sees fewer events */
            break;
        int verdict = seq_accept(e, t, rec.seq, &r.gaps);
        if (verdict == SEQ_DUPLICATE) {
            r.duplicates++;
            e->st.duplicates++;
            continue;
        }
        if (verdict == SEQ_LATE) {
            r.late++;
            e->st.late++;
        }
        fn_entry *f = fn_find(e, rec.func_id);
        int is_call = rec.kind == LT_KIND_ENTRY;
        int unwound = rec.kind == LT_KIND_RETURN_UNWOUND;
        if (!f)
            r.unknown_function++;
        account(e, t, f, is_call, unwound, rec.ts_ns);

        ev_head h = ev_head_of(e->st.next_event_id++, rec.tid, rec.ts_ns);
        uint64_t addr = f ? f->address : 0;
        size_t symlen = (f && e->inline_symbols) ? f->symbol_len : 0;

        size_t pl_len = symbol_address_size(symlen, addr) +
                        (rec.func_id ? 1 + varint_size(rec.func_id) : 0) + (unwound ? 3 : 0);
        size_t ev_len = ev_head_size(&h) +
                        1 + varint_size(pl_len) + pl_len +
                        2 + varint_size(rec.seq) +
                        (rec.depth ? 2 + varint_size(rec.depth) : 0);

        p = put_varint(p, ev_len);
        p = put_ev_head(p, &h);
        *p++ = is_call ? TAG_CALL : TAG_RETURN;
        p = put_varint(p, pl_len);
        p = put_symbol_address(p, f, symlen, addr);
        if (rec.func_id) {
            *p++ = TAG_FUNCTION_ID;
            p = put_varint(p, rec.func_id);
        }
        if (unwound) {
            *p++ = TAG_UNWOUND_0;
            *p++ = 0x01;
            *p++ = 0x01;
        }
        *p++ = TAG_SEQUENCE_0;
        *p++ = 0x01;
        p = put_varint(p, rec.seq);
        if (rec.depth) {
            *p++ = TAG_DEPTH_0;
            *p++ = 0x01;
            p = put_varint(p, rec.depth);
        }
        r.events++;
    }
    if (res)
        *res = r;
    return (int64_t)(p - out);
}

/* ---- detail records (flight recorder) ---------------------------------- */

size_t lt_encode_detail_bound(const lt_encoder *e, size_t len) {
    size_t n = len / LT_DETAIL_HEADER_SIZE + 1;
    size_t per = FIXED_BOUND + 3 + 1 + 5 + LT_DETAIL_MAX_REGS * REG_ENTRY_BOUND +
                 (e->inline_symbols ? e->max_symbol_len : 0);
    return len + n * per;
}

static inline uint8_t *put_reg(uint8_t *p, const char *name, uint64_t v) {
    size_t kl = strlen(name);
    *p++ = TAG_REGISTERS;
    *p++ = (uint8_t)(2 + kl + 1 + varint_size(v));
    *p++ = TAG_MAP_KEY;
    *p++ = (uint8_t)kl;
    memcpy(p, name, kl);
    p += kl;
    *p++ = TAG_MAP_VALUE;
    return put_varint(p, v);
}

static inline size_t reg_len(const char *name, uint64_t v) {
    return 2 + (2 + strlen(name) + 1 + varint_size(v));
}

int64_t lt_encode_detail(lt_encoder *e, const uint8_t *buf, size_t len, const uint64_t *win,
                         size_t nwin, int keep_all, uint8_t *out, size_t out_cap,
                         lt_detail_result *res) {
    lt_detail_result r = {0};
    if (out_cap < lt_encode_detail_bound(e, len))
        return -1;
    uint8_t *p = out;
    size_t off = 0;
    lt_detail_record rec;
    uint32_t size;
    while ((size = lt_detail_at(buf, len, off, &rec)) != 0) {
        const uint8_t *stack = buf + off + LT_DETAIL_HEADER_SIZE;
        off += size;
        if (!keep_all && !lt_detail_in_windows(rec.ts_ns, win, nwin)) {
            r.discarded++;
            continue;
        }
        tid_entry *t = tid_get(e, rec.tid);
        if (!t)
            break;
        if (rec.seq <= t->detail_max_seq) {
            r.duplicates++;
            continue;
        }
        t->detail_max_seq = rec.seq;
        fn_entry *f = fn_find(e, rec.func_id);
        int is_call = rec.kind == LT_KIND_ENTRY;
        const char *const *names = is_call ? ENTRY_REGS : RETURN_REGS;

        ev_head h = ev_head_of(e->st.next_event_id++, rec.tid, rec.ts_ns);
        uint64_t addr = f ? f->address : 0;
        size_t symlen = (f && e->inline_symbols) ? f->symbol_len : 0;
        size_t stack_len = is_call ? rec.stack_len : 0;

        size_t regs_len = 0;
        for (uint32_t i = 0; i < rec.reg_count; i++)
            regs_len += reg_len(names[i], rec.regs[i]);
        size_t pl_len = symbol_address_size(symlen, addr) + regs_len +
                        (stack_len ? 1 + varint_size(stack_len) + stack_len : 0) +
                        (rec.func_id ? 1 + varint_size(rec.func_id) : 0);
        size_t ev_len = ev_head_size(&h) +
                        1 + varint_size(pl_len) + pl_len +
                        2 + varint_size(rec.seq) + 3;

        p = put_varint(p, ev_len);
        p = put_ev_head(p, &h);
        *p++ = is_call ? TAG_CALL : TAG_RETURN;
        p = put_varint(p, pl_len);
        p = put_symbol_address(p, f, symlen, addr);
        for (uint32_t i = 0; i < rec.reg_count; i++)
            p = put_reg(p, names[i], rec.regs[i]);
        if (stack_len) {
            *p++ = TAG_STACK;
            p = put_varint(p, stack_len);
            memcpy(p, stack, stack_len);
            p += stack_len;
        }
        if (rec.func_id) {
            *p++ = TAG_FUNCTION_ID;
            p = put_varint(p, rec.func_id);
        }
        *p++ = TAG_SEQUENCE_0;
        *p++ = 0x01;
        p = put_varint(p, rec.seq);
        *p++ = TAG_DETAIL_0;
        *p++ = 0x01;
        *p++ = 0x01;
        r.kept++;
    }
    r.invalid_bytes = len - off;
    e->st.detail_events += r.kept;
    e->st.detail_discarded += r.discarded;
    e->st.detail_duplicates += r.duplicates;
    e->st.detail_invalid_bytes += r.invalid_bytes;
    if (res)
        *res = r;
    return (int64_t)(p - out);
}

/* ---- scanning an existing file ---------------------------------------- */

typedef struct reader {
    const uint8_t *p, *end;
    int bad; /* 1: ran out of bytes; 2: malformed (varint over 10 bytes, bad wire type) */
} reader;

static uint64_t rd_varint(reader *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) {
            r->bad = 1;
            return 0;
        }
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    r->bad = 2;
    return 0;
}

/* Skip a field of the given wire type; sets bad on a malformed one. */
static void rd_skip(reader *r, unsigned wt) {
    switch (wt) {
    case 0:
        rd_varint(r);
        break;
    case 1:
        if (r->end - r->p < 8) r->bad = 1; else r->p += 8;
        break;
    case 2: {
        uint64_t n = rd_varint(r);
        if (r->bad || n > (uint64_t)(r->end - r->p)) r->bad = 1; else r->p += n;
        break;
    }
    case 5:
        if (r->end - r->p < 4) r->bad = 1; else r->p += 4;
        break;
    default:
        r->bad = 2;
    }
}

/* Read a length-delimited field as a sub-reader. */
static reader rd_sub(reader *r) {
    reader s = {r->p, r->p, 0};
    uint64_t n = rd_varint(r);
    if (r->bad || n > (uint64_t)(r->end - r->p)) {
        r->bad = 1;
        s.bad = 1;
        return s;
    }
    s.p = r->p;
    s.end = r->p + n;
    r->p += n;
    return s;
}

static int others_push(lt_encoder *e, uint64_t off) {
    if (e->others_len == e->others_cap) {
        size_t cap = e->others_cap ? e->others_cap * 2 : 64;
        uint64_t *n = realloc(e->others, cap * sizeof *n);
        if (!n)
            return -1;
        e->others = n;
        e->others_cap = cap;
    }
    e->others[e->others_len++] = off;
    return 0;
}

/* Parse one Event; returns 0, -1 malformed, -2 allocation failure. */
static int scan_event(lt_encoder *e, const uint8_t *b, size_t len, uint64_t frame_off) {
    reader r = {b, b + len, 0};
    uint64_t eid = 0, tid = 0, secs = 0, nanos = 0, seq = 0, addr = 0;
    uint32_t fid = 0;
    int payload = 0, unwound = 0, detail = 0;
    while (r.p < r.end && !r.bad) {
        uint64_t key = rd_varint(&r);
        if (r.bad)
            break;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (field == 1 && wt == 0) {
            eid = rd_varint(&r);
        } else if (field == 2 && wt == 0) {
            tid = rd_varint(&r);
        } else if (field == 3 && wt == 2) {
            reader s = rd_sub(&r);
            while (s.p < s.end && !s.bad) {
                uint64_t k = rd_varint(&s);
                if ((k >> 3) == 1 && (k & 7) == 0) secs = rd_varint(&s);
                else if ((k >> 3) == 2 && (k & 7) == 0) nanos = rd_varint(&s);
                else rd_skip(&s, (unsigned)(k & 7));
            }
            r.bad |= s.bad;
        } else if ((field == 12 || field == 13) && wt == 2) {
            payload = (int)field;
            reader s = rd_sub(&r);
            while (s.p < s.end && !s.bad) {
                uint64_t k = rd_varint(&s);
                unsigned f = (unsigned)(k >> 3), w = (unsigned)(k & 7);
                if (f == 2 && w == 0) addr = rd_varint(&s);
                else if (f == 15 && w == 0) fid = (uint32_t)rd_varint(&s);
                else if (f == 16 && w == 0 && field == 13) unwound = rd_varint(&s) != 0;
                else rd_skip(&s, w);
            }
            r.bad |= s.bad;
        } else if (field == 15 && wt == 2) {
            payload = 15;
            reader s = rd_sub(&r);
            uint32_t did = 0;
            uint64_t daddr = 0;
            const uint8_t *sym = NULL;
            size_t symlen = 0;
            while (s.p < s.end && !s.bad) {
                uint64_t k = rd_varint(&s);
                unsigned f = (unsigned)(k >> 3), w = (unsigned)(k & 7);
                if (f == 1 && w == 0) did = (uint32_t)rd_varint(&s);
                else if (f == 4 && w == 0) daddr = rd_varint(&s);
                else if (f == 2 && w == 2) {
                    reader str = rd_sub(&s);
                    sym = str.p;
                    symlen = (size_t)(str.end - str.p);
                } else rd_skip(&s, w);
            }
            r.bad |= s.bad;
            if (!r.bad && lt_encoder_set_function(e, did, daddr, (const char *)sym, symlen) != 0)
                return -2;
        } else if (field == 20 && wt == 0) {
            seq = rd_varint(&r);
        } else if (field == 22 && wt == 0) {
            detail = rd_varint(&r) != 0;
        } else if (wt == 2 && (field == 10 || field == 11 || field == 14)) {
            payload = (int)field;
            rd_skip(&r, wt);
        } else {
            rd_skip(&r, wt);
        }
    }
    if (r.bad)
        return -1;
    (void)addr;
    if (eid >= e->st.next_event_id)
        e->st.next_event_id = eid + 1;
    if (payload != 12 && payload != 13)
        return others_push(e, frame_off) ? -2 : 0;
    tid_entry *t = tid_get(e, (uint32_t)tid);
    if (!t)
        return -2;
    if (detail) { /* repeats a call of the index stream: not an event of its own */
        e->st.detail_events++;
        if (seq > t->detail_max_seq)
            t->detail_max_seq = seq;
        return 0;
    }
    uint64_t gaps = 0;
    /* Foreign writers leave sequence unset; then there is nothing to track. */
    if (seq && seq_accept(e, t, seq, &gaps) == SEQ_LATE)
        e->st.late++;
    account(e, t, fid ? fn_find(e, fid) : NULL, payload == 12, unwound,
            secs * 1000000000u + nanos);
    return 0;
}

int lt_encoder_scan(lt_encoder *e, const uint8_t *buf, size_t len, size_t *valid_len) {
    size_t pos = 0;
    e->others_len = 0;
    while (pos < len) {
        reader r = {buf + pos, buf + len, 0};
        uint64_t n = rd_varint(&r);
        if (r.bad == 2) {
            *valid_len = pos;
            return -1;
        }
        if (r.bad || n > (uint64_t)(r.end - r.p))
            break; /* torn tail: a frame whose bytes did not all reach the file */
        int rc = scan_event(e, r.p, (size_t)n, pos);
        if (rc != 0) {
            *valid_len = pos;
            return rc;
        }
        pos = (size_t)(r.p - buf) + (size_t)n;
    }
    *valid_len = pos;
    return 0;
}

size_t lt_encoder_other_frames(const lt_encoder *e, const uint64_t **offsets) {
    *offsets = e->others;
    return e->others_len;
}

void lt_encoder_stats(const lt_encoder *e, lt_encode_stats *out) {
    *out = e->st;
}

size_t lt_encoder_function_calls(const lt_encoder *e, uint32_t *ids, uint64_t *calls,
                                 size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < e->fn_cap; i++) {
        if (!e->fns[i].used)
            continue;
        if (n < cap) {
            ids[n] = e->fns[i].id;
            calls[n] = e->fns[i].calls;
        }
        n++;
    }
    return n;
}
