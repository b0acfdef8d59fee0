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
#define TAG_DELTA_0 0xb8         /* Event.time_delta_ns = 23, varint: b8 01 */
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
    uint32_t nholes, hole_cap;
    uint64_t *hole_lo; /* ascending, disjoint, all below max_seq; grown on demand */
    uint64_t *hole_hi;
    /* What a reader derives a compact event's omitted fields from: the
     * thread's previous call/return in the file (docs/format.md). */
    uint64_t last_seq; /* 0: the thread has no call/return in the file yet */
    uint64_t last_ts;
    uint64_t emitted_max; /* highest sequence written */
    uint32_t last_depth;
    uint8_t last_kind; /* 0 none, 1 call, 2 return */
    /* Held while the flight recorder may still send their detail: index
     * records and detail copies, each sorted by seq, live in [head, len). */
    lt_index_record *pend;
    size_t pend_head, pend_len, pend_cap;
    struct held_detail *det;
    size_t det_head, det_len, det_cap;
} tid_entry;

typedef struct held_detail {
    uint64_t seq;
    uint8_t *rec; /* malloc'd copy of the lt_detail_record and its stack bytes */
    uint32_t size;
} held_detail;

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
    int hold;
    size_t hold_budget; /* bytes of held records and detail copies */
    size_t held_bytes, held_records, held_details;
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
            tid_entry *t = &e->tids[i];
            free(t->hole_lo);
            free(t->hole_hi);
            free(t->pend);
            for (size_t k = t->det_head; k < t->det_len; k++)
                free(t->det[k].rec);
            free(t->det);
        }
    free(e->tids);
    free(e->others);
    free(e);
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

enum { SEQ_NEW, SEQ_DUPLICATE, SEQ_HOLE };

/* Sequence check; SEQ_NEW advances max_seq and records any gap; SEQ_HOLE
 * fills a remembered hole (the record came through a slower lane), which is
 * then no longer a gap. */
static inline int seq_accept(lt_encoder *e, tid_entry *t, uint64_t seq, uint64_t *gaps) {
    if (seq <= t->max_seq) {
        if (!hole_take(t, seq))
            return SEQ_DUPLICATE;
        e->st.gaps--;
        return SEQ_HOLE;
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

/* The depth a reader derives for the thread's next call/return from its
 * nesting; -1 when it derives none (the event must carry its depth). */
static inline int64_t derived_depth(const tid_entry *t, int is_call) {
    if (t->last_kind == 1)
        return is_call ? (int64_t)t->last_depth + 1 : (int64_t)t->last_depth;
    if (t->last_kind == 2) {
        if (is_call)
            return t->last_depth;
        return t->last_depth ? (int64_t)t->last_depth - 1 : -1;
    }
    return -1;
}

/* After a call/return of t with these fields was written (or scanned). */
static inline void derive_advance(tid_entry *t, uint64_t seq, uint64_t ts, uint32_t depth,
                                  int is_call) {
    t->last_seq = seq;
    t->last_ts = ts;
    t->last_depth = depth;
    t->last_kind = is_call ? 1 : 2;
    if (seq > t->emitted_max)
        t->emitted_max = seq;
}

static inline size_t tagged_varint(uint64_t v) { return v ? 1 + varint_size(v) : 0; }

/* Worst case of one detail record's registers and stack header. */
#define DETAIL_BOUND (LT_DETAIL_MAX_REGS * REG_ENTRY_BOUND + 1 + 5)

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

/* Write one call/return as a compact Event (docs/format.md): only what a
 * reader cannot derive from the thread's previous call/return. `det` (may be
 * NULL) is the flight recorder's detail of the same call/return, whose
 * registers and stack go into this one event. */
static uint8_t *emit_event(lt_encoder *e, tid_entry *t, const lt_index_record *rec,
                           const lt_detail_record *det, const uint8_t *stack, uint8_t *p,
                           uint64_t *late) {
    fn_entry *f = fn_find(e, rec->func_id);
    int is_call = rec->kind == LT_KIND_ENTRY;
    int unwound = rec->kind == LT_KIND_RETURN_UNWOUND;
    uint64_t eid = e->st.next_event_id++;
    if (rec->seq < t->emitted_max) { /* written after higher numbers of its thread */
        (*late)++;
        e->st.late++;
    }
    account(e, t, f, is_call, unwound, rec->ts_ns);

    int full = e->inline_symbols; /* every base field, for readers that know only those */
    int put_seq = t->last_seq == 0 || rec->seq != t->last_seq + 1;
    int put_depth = put_seq ? rec->depth != 0 : derived_depth(t, is_call) != (int64_t)rec->depth;
    int abs_ts = full || t->last_kind == 0 || rec->ts_ns < t->last_ts;
    uint64_t delta = abs_ts ? 0 : rec->ts_ns - t->last_ts;
    uint64_t secs = rec->ts_ns / 1000000000u, nanos = rec->ts_ns % 1000000000u;
    size_t ts_len = tagged_varint(secs) + tagged_varint(nanos);
    /* int32 thread_id: proto sign-extends negative values to 64 bits */
    uint64_t tidv = (uint64_t)(int64_t)(int32_t)rec->tid;

    uint64_t addr = (f && full) ? f->address : 0;
    size_t symlen = (f && full) ? f->symbol_len : 0;
    const char *const *names = is_call ? ENTRY_REGS : RETURN_REGS;
    size_t regs_len = 0, stack_len = 0;
    if (det) {
        for (uint32_t i = 0; i < det->reg_count; i++)
            regs_len += reg_len(names[i], det->regs[i]);
        stack_len = is_call ? det->stack_len : 0;
        e->st.detail_events++;
    }
    size_t pl_len = symbol_address_size(symlen, addr) + regs_len +
                    (stack_len ? 1 + varint_size(stack_len) + stack_len : 0) +
                    tagged_varint(rec->func_id) + (unwound ? 3 : 0);
    size_t ev_len = (full ? 1 + varint_size(eid) : 0) + tagged_varint(tidv) +
                    (abs_ts ? 1 + varint_size(ts_len) + ts_len : 0) +
                    1 + varint_size(pl_len) + pl_len +
                    (put_seq ? 2 + varint_size(rec->seq) : 0) +
                    (put_depth ? 2 + varint_size(rec->depth) : 0) +
                    (delta ? 2 + varint_size(delta) : 0);

    p = put_varint(p, ev_len);
    if (full) {
        *p++ = TAG_EVENT_ID;
        p = put_varint(p, eid);
    }
    if (tidv) {
        *p++ = TAG_THREAD_ID;
        p = put_varint(p, tidv);
    }
    if (abs_ts) {
        *p++ = TAG_TIMESTAMP;
        p = put_varint(p, ts_len);
        if (secs) {
            *p++ = TAG_TS_SECONDS;
            p = put_varint(p, secs);
        }
        if (nanos) {
            *p++ = TAG_TS_NANOS;
            p = put_varint(p, nanos);
        }
    }
    *p++ = is_call ? TAG_CALL : TAG_RETURN;
    p = put_varint(p, pl_len);
    p = put_symbol_address(p, f, symlen, addr);
    if (det) {
        for (uint32_t i = 0; i < det->reg_count; i++)
            p = put_reg(p, names[i], det->regs[i]);
        if (stack_len) {
            *p++ = TAG_STACK;
            p = put_varint(p, stack_len);
            memcpy(p, stack, stack_len);
            p += stack_len;
        }
    }
    if (rec->func_id) {
        *p++ = TAG_FUNCTION_ID;
        p = put_varint(p, rec->func_id);
    }
    if (unwound) {
        *p++ = TAG_UNWOUND_0;
        *p++ = 0x01;
        *p++ = 0x01;
    }
    if (put_seq) {
        *p++ = TAG_SEQUENCE_0;
        *p++ = 0x01;
        p = put_varint(p, rec->seq);
    }
    if (put_depth) {
        *p++ = TAG_DEPTH_0;
        *p++ = 0x01;
        p = put_varint(p, rec->depth);
    }
    if (delta) {
        *p++ = TAG_DELTA_0;
        *p++ = 0x01;
        p = put_varint(p, delta);
    }
    derive_advance(t, rec->seq, rec->ts_ns, rec->depth, is_call);
    return p;
}

/* ---- holding records for the flight recorder's detail ------------------- */

void lt_encoder_set_hold(lt_encoder *e, size_t budget_bytes) {
    e->hold = 1;
    e->hold_budget = budget_bytes;
}

size_t lt_encoder_held_bytes(const lt_encoder *e) {
    return e->held_bytes;
}

/* Insert rec into t's held records in seq order; 0, or -1 out of memory. */
static int pend_insert(lt_encoder *e, tid_entry *t, const lt_index_record *rec) {
    if (t->pend_head && t->pend_len == t->pend_cap) { /* reclaim the written prefix */
        memmove(t->pend, t->pend + t->pend_head,
                (t->pend_len - t->pend_head) * sizeof *t->pend);
        t->pend_len -= t->pend_head;
        t->pend_head = 0;
    }
    if (t->pend_len == t->pend_cap) {
        size_t cap = t->pend_cap ? t->pend_cap * 2 : 1024;
        lt_index_record *n = realloc(t->pend, cap * sizeof *n);
        if (!n)
            return -1;
        t->pend = n;
        t->pend_cap = cap;
    }
    size_t at = t->pend_len; /* records mostly arrive in order: search from the end */
    while (at > t->pend_head && t->pend[at - 1].seq > rec->seq)
        at--;
    memmove(&t->pend[at + 1], &t->pend[at], (t->pend_len - at) * sizeof *t->pend);
    t->pend[at] = *rec;
    t->pend_len++;
    e->held_records++;
    e->held_bytes += sizeof *rec;
    return 0;
}

/* Hold a copy of a detail record in t's seq order; 1 kept, 0 duplicate,
 * -1 out of memory. */
static int det_insert(lt_encoder *e, tid_entry *t, const uint8_t *raw, uint32_t size,
                      uint64_t seq) {
    if (t->det_head && t->det_len == t->det_cap) {
        memmove(t->det, t->det + t->det_head, (t->det_len - t->det_head) * sizeof *t->det);
        t->det_len -= t->det_head;
        t->det_head = 0;
    }
    if (t->det_len == t->det_cap) {
        size_t cap = t->det_cap ? t->det_cap * 2 : 256;
        held_detail *n = realloc(t->det, cap * sizeof *n);
        if (!n)
            return -1;
        t->det = n;
        t->det_cap = cap;
    }
    size_t at = t->det_len;
    while (at > t->det_head && t->det[at - 1].seq > seq)
        at--;
    if (at > t->det_head && t->det[at - 1].seq == seq)
        return 0;
    uint8_t *copy = malloc(size);
    if (!copy)
        return -1;
    memcpy(copy, raw, size);
    memmove(&t->det[at + 1], &t->det[at], (t->det_len - at) * sizeof *t->det);
    t->det[at] = (held_detail){seq, copy, size};
    t->det_len++;
    e->held_details++;
    e->held_bytes += size;
    return 1;
}

static void det_pop(lt_encoder *e, tid_entry *t) {
    held_detail *d = &t->det[t->det_head++];
    e->held_bytes -= d->size;
    e->held_details--;
    free(d->rec);
    if (t->det_head == t->det_len)
        t->det_head = t->det_len = 0;
}

size_t lt_encoder_flush_bound(const lt_encoder *e) {
    return e->held_records * (FIXED_BOUND + (e->inline_symbols ? e->max_symbol_len : 0)) +
           e->held_bytes + e->held_details * DETAIL_BOUND;
}

int64_t lt_encoder_flush(lt_encoder *e, uint64_t horizon_ns, uint8_t *out, size_t out_cap,
                         lt_flush_result *res) {
    lt_flush_result r = {0};
    if (out_cap < lt_encoder_flush_bound(e))
        return -1;
    uint64_t limit = horizon_ns;
    if (e->held_bytes > e->hold_budget) /* over budget: nothing waits any longer */
        limit = UINT64_MAX;
    uint8_t *p = out;
    for (size_t i = 0; i < e->tid_cap; i++) {
        tid_entry *t = &e->tids[i];
        if (!t->used)
            continue;
        while (t->pend_head < t->pend_len && t->pend[t->pend_head].ts_ns < limit) {
            const lt_index_record *rec = &t->pend[t->pend_head];
            const lt_detail_record *det = NULL;
            lt_detail_record d;
            while (t->det_head < t->det_len && t->det[t->det_head].seq < rec->seq) {
                det_pop(e, t); /* its index record never came */
                r.detail_unmatched++;
            }
            if (t->det_head < t->det_len && t->det[t->det_head].seq == rec->seq) {
                memcpy(&d, t->det[t->det_head].rec, sizeof d);
                int kinds_agree = (d.kind == LT_KIND_ENTRY) == (rec->kind == LT_KIND_ENTRY);
                if (kinds_agree)
                    det = &d;
                else
                    r.detail_unmatched++;
            }
            if (rec->ts_ns >= horizon_ns)
                r.early++;
            p = emit_event(e, t, rec, det, det ? t->det[t->det_head].rec + LT_DETAIL_HEADER_SIZE
                                               : NULL, p, &r.late);
            if (det)
                r.merged++;
            if (t->det_head < t->det_len && t->det[t->det_head].seq == rec->seq)
                det_pop(e, t);
            t->pend_head++;
            e->held_records--;
            e->held_bytes -= sizeof *rec;
            r.events++;
        }
        if (t->pend_head == t->pend_len)
            t->pend_head = t->pend_len = 0;
        /* Detail whose index record was written already, or will never come
         * (every record of the thread up to the horizon is out). */
        while (t->det_head < t->det_len &&
               (t->det[t->det_head].seq <= t->emitted_max ||
                (limit == UINT64_MAX && t->pend_head == t->pend_len))) {
            det_pop(e, t);
            r.detail_unmatched++;
        }
    }
    e->st.hold_early += r.early;
    e->st.detail_unmatched += r.detail_unmatched;
    if (res)
        *res = r;
    return (int64_t)(p - out);
}

int64_t lt_encode_index(lt_encoder *e, const lt_index_record *recs, size_t count,
                        uint8_t *out, size_t out_cap, lt_batch_result *res) {
    lt_batch_result r = {0};
    if (!e->hold && out_cap < lt_encode_bound(e, count))
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
        if (!fn_find(e, rec.func_id))
            r.unknown_function++;
        if (e->hold) {
            if (pend_insert(e, t, &rec) != 0)
                break;
        } else {
            p = emit_event(e, t, &rec, NULL, NULL, p, &r.late);
        }
        r.events++;
    }
    if (res)
        *res = r;
    return (int64_t)(p - out);
}

/* ---- detail records (flight recorder) ---------------------------------- */

int lt_encode_detail(lt_encoder *e, const uint8_t *buf, size_t len, const uint64_t *win,
                     size_t nwin, int keep_all, lt_detail_result *res) {
    lt_detail_result r = {0};
    size_t off = 0;
    int rc = 0;
    lt_detail_record rec;
    uint32_t size;
    while ((size = lt_detail_at(buf, len, off, &rec)) != 0) {
        const uint8_t *raw = buf + off;
        if (!keep_all && !lt_detail_in_windows(rec.ts_ns, win, nwin)) {
            off += size;
            r.discarded++;
            continue;
        }
        tid_entry *t = tid_get(e, rec.tid);
        if (!t) {
            rc = -1;
            break;
        }
        if (!e->hold || rec.seq <= t->emitted_max) {
            off += size; /* its call/return is in the file already */
            r.late++;
            continue;
        }
        int kept = det_insert(e, t, raw, size, rec.seq);
        if (kept < 0) {
            rc = -1;
            break;
        }
        off += size;
        if (kept)
            r.kept++;
        else
            r.duplicates++;
    }
    if (rc == 0)
        r.invalid_bytes = len - off;
    e->st.detail_discarded += r.discarded;
    e->st.detail_duplicates += r.duplicates;
    e->st.detail_invalid_bytes += r.invalid_bytes;
    e->st.detail_late += r.late;
    if (res)
        *res = r;
    return rc;
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
    uint64_t eid = 0, tid = 0, secs = 0, nanos = 0, seq = 0, addr = 0, delta = 0, depth = 0;
    uint32_t fid = 0;
    int payload = 0, unwound = 0, detail = 0, have_ts = 0, have_depth = 0, has_regs = 0;
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
            have_ts = 1;
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
                else {
                    has_regs |= f == 3 && w == 2;
                    rd_skip(&s, w);
                }
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
        } else if (field == 21 && wt == 0) {
            depth = rd_varint(&r);
            have_depth = 1;
        } else if (field == 22 && wt == 0) {
            detail = rd_varint(&r) != 0;
        } else if (field == 23 && wt == 0) {
            delta = rd_varint(&r);
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
    /* an event without an id takes the previous one's + 1 */
    if (eid >= e->st.next_event_id)
        e->st.next_event_id = eid + 1;
    else if (!eid)
        e->st.next_event_id++;
    if (payload != 12 && payload != 13)
        return others_push(e, frame_off) ? -2 : 0;
    tid_entry *t = tid_get(e, (uint32_t)tid);
    if (!t)
        return -2;
    if (detail) { /* older traces: repeats a call of the stream, not an event of its own */
        e->st.detail_events++;
        return 0;
    }
    int is_call = payload == 12;
    e->st.detail_events += (unsigned)has_regs;
    uint64_t ts = have_ts ? secs * 1000000000u + nanos : t->last_ts + delta;
    if (!seq && t->last_seq) { /* compact: derive what the writer left out */
        seq = t->last_seq + 1;
        if (!have_depth) {
            int64_t d = derived_depth(t, is_call);
            depth = d < 0 ? 0 : (uint64_t)d;
        }
    }
    uint64_t gaps = 0;
    /* Foreign writers leave sequence unset; then there is nothing to track. */
    if (seq) {
        if (seq < t->emitted_max)
            e->st.late++;
        seq_accept(e, t, seq, &gaps);
        derive_advance(t, seq, ts, (uint32_t)depth, is_call);
    } else {
        t->last_ts = ts;
    }
    account(e, t, fid ? fn_find(e, fid) : NULL, is_call, unwound, ts);
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
