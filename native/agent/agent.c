/*
 * agent.c — the native agent library loaded into a target with Frida's
 * Module.load: per-function stubs, the C halves of the trampolines, the
 * per-thread shadow stack; it writes through the producer side of the lanes
 * (lanes.c).
 *
 * The common case of both is recorded by the trampolines themselves, in
 * assembly (tramp_x86_64.S, offsets in tramp_offsets.h); the C below is
 * their full path and must keep doing the same thing.
 *
 * Hot path (lt_on_entry / lt_on_exit): one initial-exec TLS load, no
 * syscalls, no locks, one rdtsc (clock_gettime where the TSC is not
 * invariant: tsc.h), one 32-byte ring write with a release store of the ring
 * fill. Built with -mgeneral-regs-only: the
 * vector argument/return registers are never touched, so the trampolines
 * save only the caller-saved general registers. The one path that calls into libc (a thread's first event:
 * mmap, gettid, pthread_setspecific) saves the full vector state itself.
 *
 * Ownership: an lt_thread belongs to its thread; after the thread's key
 * destructor it is recycled through a spinlock-protected free list (the TLS
 * pointer then points at a static "dead" marker). Stubs and descriptors are
 * never freed: after detach, frames that still return through
 * lt_exit_tramp need them and the shadow stacks.
 *
 * Atomics here (shm ones are documented in shm.h):
 *   g_recording   relaxed: on/off switch; a stale read records or skips one
 *                 more event, never corrupts (frames are always popped).
 *   g_epoch       release by lt_init after g_ctl is set | acquire by the
 *                 per-thread check that re-registers a thread in a new session.
 *   g_clock_tsc   relaxed: set by lt_init before recording starts (ordered
 *                 for a new session by g_epoch); read on every stamp.
 *   g_free_lock   acquire/release spinlock around the thread free list
 *                 (rare paths only).
 *   g_desc_lock   acquire/release spinlock around the hook descriptor
 *                 allocator (lifecycle calls only).
 *   g_ignored[]   release by lt_ignore_thread | acquire in thread init.
 *   desc.trigger,
 *   g_trig_fid[]  relaxed flags: a stale read adds or misses one mark around
 *                 the moment setTriggers runs.
 */
#define _GNU_SOURCE
#include "lanetrace/shm.h"
#include "lanetrace/tsc.h"
#include "tramp_offsets.h"

#include <dirent.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define HIDDEN __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release

#define LT_SHADOW_MAX 2048u /* frames per thread; deeper calls count depth_overflow */
#define LT_MAX_IGNORED 128

enum { T_ACTIVE = 1, T_IGNORED = 2, T_DEAD = 3, T_PAUSED = 4 };
#define FRAME_CM 1u       /* Interceptor.attach fallback: Frida owns the return */
#define FRAME_RESTORED 2u /* real return address put back for the unwinder */
/* lt_entry_tramp's register block: r11 r10 r9 r8 rdi rsi rdx rcx rax, the
 * stub's slot, then the return address */
#define LT_REG_RET 10 /* pushed by the Interceptor.attach fallback (no return hook) */

typedef struct lt_frame {
    uint64_t ret;  /* real return address (FRAME_CM: slot content at entry) */
    uint64_t slot; /* address of the return-address slot: longjmp detection */
    uint32_t fid;
    uint32_t flags;
    uint32_t epoch; /* session the ENTRY was recorded in */
    uint32_t pad;
} lt_frame;

typedef struct lt_thread {
    uint32_t state;
    uint32_t guard; /* inside our handler: hooked calls pass through */
    uint32_t depth;
    uint32_t epoch;
    uint32_t cm_overflow; /* fallback ENTRYs dropped for depth: their leaves to skip */
    uint32_t tid;
    uint64_t stk_lo, stk_hi; /* this thread's stack; outside it: sigaltstack */
    struct lt_thread *next_free;
    lt_producer prod;
    lt_frame frames[LT_SHADOW_MAX];
} lt_thread;

_Static_assert(offsetof(lt_thread, state) == LT_T_STATE && offsetof(lt_thread, guard) == LT_T_GUARD &&
                   offsetof(lt_thread, depth) == LT_T_DEPTH && offsetof(lt_thread, epoch) == LT_T_EPOCH &&
                   offsetof(lt_thread, stk_lo) == LT_T_STK_LO && offsetof(lt_thread, stk_hi) == LT_T_STK_HI &&
                   offsetof(lt_thread, prod) == LT_T_PROD && offsetof(lt_thread, frames) == LT_T_FRAMES,
               "tramp_offsets.h: lt_thread");
_Static_assert(LT_T_PROD + offsetof(lt_producer, ring) == LT_P_RING &&
                   LT_T_PROD + offsetof(lt_producer, ring_fill) == LT_P_RING_FILL &&
                   LT_T_PROD + offsetof(lt_producer, fill) == LT_P_FILL &&
                   LT_T_PROD + offsetof(lt_producer, cap) == LT_P_CAP &&
                   LT_T_PROD + offsetof(lt_producer, tid) == LT_P_TID &&
                   LT_T_PROD + offsetof(lt_producer, route) == LT_P_ROUTE &&
                   LT_T_PROD + offsetof(lt_producer, countdown) == LT_P_COUNTDOWN &&
                   LT_T_PROD + offsetof(lt_producer, seq) == LT_P_SEQ,
               "tramp_offsets.h: lt_producer");
_Static_assert(sizeof(lt_frame) == 1u << LT_F_SHIFT && offsetof(lt_frame, ret) == LT_F_RET &&
                   offsetof(lt_frame, slot) == LT_F_SLOT && offsetof(lt_frame, fid) == LT_F_FID &&
                   offsetof(lt_frame, epoch) == LT_F_EPOCH,
               "tramp_offsets.h: lt_frame");
_Static_assert(offsetof(lt_index_record, ts_ns) == LT_R_TS && offsetof(lt_index_record, seq) == LT_R_SEQ &&
                   offsetof(lt_index_record, tid) == LT_R_TID_FID &&
                   offsetof(lt_index_record, func_id) == LT_R_TID_FID + 4 &&
                   offsetof(lt_index_record, kind) == LT_R_KIND_DEPTH &&
                   offsetof(lt_index_record, depth) == LT_R_KIND_DEPTH + 2 &&
                   offsetof(lt_index_record, flags) == LT_R_KIND_DEPTH + 4,
               "tramp_offsets.h: lt_index_record");
/* the fast path writes the depth unclamped and the route as one value */
_Static_assert(LT_SHADOW_MAX == 2048 && LT_ROUTE_LANE == 1 && T_ACTIVE == 1 && LT_KIND_ENTRY == 1 &&
                   LT_KIND_RETURN == 2 && sizeof(lt_frame) == 32,
               "tramp_x86_64.S assumes these");

typedef struct lt_desc {
    void *orig;    /* the relocated entry in the slot; written before the patch goes live */
    uint8_t *site; /* the patched bytes (function entry, after endbr64) */
    uint32_t fid;
    _Atomic uint8_t trigger; /* relaxed: ENTRY appends a mark (setTriggers) */
    uint8_t patched;         /* site holds our jmp (lifecycle calls only) */
    uint8_t role;            /* LT_ROLE_*: not traced, drives the shadow stack; set before the patch */
    uint8_t pad;
    uint8_t saved[8];        /* the site's bytes before the patch */
    uint8_t *tramp;          /* short form: the jmp rel32 in the padding before the function */
    uint8_t tsaved[8];       /* the padding's bytes before the patch */
} lt_desc;
_Static_assert(offsetof(lt_desc, orig) == LT_D_ORIG && offsetof(lt_desc, fid) == LT_D_FID &&
                   offsetof(lt_desc, trigger) == LT_D_TRIGGER && offsetof(lt_desc, role) == LT_D_ROLE,
               "tramp_offsets.h: lt_desc");

/* Functions hooked for the shadow stack's sake, not traced: where C++
 * exceptions start unwinding and where they are caught. */
enum { LT_ROLE_TRACE = 0, LT_ROLE_THROW = 1, LT_ROLE_CATCH = 2 };

/* where a detail record's registers come from */
enum { SRC_NONE, SRC_TRAMP_ENTRY, SRC_TRAMP_EXIT, SRC_VALS_ENTRY, SRC_VALS_EXIT };

/* Trigger flags of the Interceptor-fallback functions, by function id (the
 * replaceFast path keeps its flag in the descriptor). Relaxed bytes. */
#define LT_TRIG_FIDS (1u << 20)
static _Atomic uint8_t g_trig_fid[LT_TRIG_FIDS / 8];

extern void lt_entry_tramp(void) HIDDEN;
extern void lt_exit_tramp(void) HIDDEN;

/* tls_self, g_recording, g_epoch and g_clock_tsc are read by the
 * trampolines' assembly fast paths too (hidden: never exported into the
 * target) */
HIDDEN __thread lt_thread *tls_self __attribute__((tls_model("initial-exec")));

static lt_shm_map g_map = {NULL, 0, -1};
static lt_ctl *g_ctl;
HIDDEN _Atomic uint32_t g_recording;
HIDDEN _Atomic uint32_t g_epoch;
HIDDEN _Atomic uint32_t g_clock_tsc; /* records stamped with rdtsc (ctl.clock at init) */
static pthread_key_t g_key;
static int g_key_ok;
static _Atomic uint32_t g_ignored[LT_MAX_IGNORED];
static _Atomic uint32_t g_free_lock;
static lt_thread *g_free_list;
static lt_thread g_dead = {.state = T_DEAD};
static lt_thread g_ignored_marker = {.state = T_IGNORED};
/* first event while not recording (before init, after detach, in a forked
 * child): no slot is claimed; the thread initializes once recording is on */
static lt_thread g_paused_marker = {.state = T_PAUSED};
static uint32_t g_xsave_size; /* 0: use fxsave */
static uint64_t g_xsave_mask;

/* agent-local statistics (not in shm: they describe this process' agent) */
static _Atomic uint64_t g_stat_threads, g_stat_stubs, g_stat_recycled;

static void spin_lock(void)
{
    uint32_t z = 0;
    while (!atomic_compare_exchange_weak_explicit(&g_free_lock, &z, 1, ACQ, RLX)) {
        z = 0;
        __asm__ volatile("pause");
    }
}
static void spin_unlock(void) { atomic_store_explicit(&g_free_lock, 0, REL); }

static void ctl_count(int ctr)
{
    if (g_ctl)
        atomic_fetch_add_explicit(&g_ctl->counters[ctr], 1, RLX);
}

/* ------------------------------------------------------------------ */
/* vector state save for the libc slow path                            */

/* AMX tile state (XTILECFG, XTILEDATA): 8 KiB, owned by the kernel's
 * per-process permission (XFD); a thread's first event never carries it. */
#define XFEATURE_MASK_AMX ((1ull << 17) | (1ull << 18))

static void detect_xsave(void)
{
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!(c & (1u << 27))) /* OSXSAVE */
        return;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t mask = (((uint64_t)hi << 32) | lo) & ~XFEATURE_MASK_AMX;
    /* standard (non-compacted) layout: legacy area + header, then each
     * component at its fixed offset */
    uint32_t size = 576;
    for (uint32_t i = 2; i < 63; i++) {
        if (!((mask >> i) & 1))
            continue;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0xd), "c"(i));
        if (a + b > size)
            size = a + b;
    }
    if (size <= 8192 - 64) {
        g_xsave_size = size;
        g_xsave_mask = mask;
    }
}

static lt_thread *thread_init(void);

/* The first event of a thread calls libc (mmap, syscall, pthread_*), which
 * may use any vector register; the hooked function's float/vector arguments
 * are live in them, so save and restore the whole state around it. */
static __attribute__((noinline)) lt_thread *thread_init_safe(void)
{
    uint8_t area[(g_xsave_size ? g_xsave_size : 512) + 64]; /* ~2.7 KiB with AVX-512 */
    uint8_t *p = (uint8_t *)(((uintptr_t)area + 63) & ~(uintptr_t)63);
    lt_thread *t;
    if (g_xsave_size) {
        for (int i = 512; i < 576; i++)
            p[i] = 0; /* XSAVE header must start clean for XRSTOR */
        uint32_t lo = (uint32_t)g_xsave_mask, hi = (uint32_t)(g_xsave_mask >> 32);
        __asm__ volatile("xsave64 (%0)" ::"r"(p), "a"(lo), "d"(hi) : "memory");
        t = thread_init();
        __asm__ volatile("xrstor64 (%0)" ::"r"(p), "a"(lo), "d"(hi) : "memory");
    } else {
        __asm__ volatile("fxsave64 (%0)" ::"r"(p) : "memory");
        t = thread_init();
        __asm__ volatile("fxrstor64 (%0)" ::"r"(p) : "memory");
    }
    return t;
}

/* ------------------------------------------------------------------ */
/* per-thread state                                                    */

static int tid_ignored(uint32_t tid)
{
    for (int i = 0; i < LT_MAX_IGNORED; i++) {
        uint32_t v = atomic_load_explicit(&g_ignored[i], ACQ);
        if (v == tid)
            return 1;
        if (!v)
            break;
    }
    return 0;
}

static void thread_register(lt_thread *t)
{
    uint32_t ep = atomic_load_explicit(&g_epoch, ACQ); /* pairs with lt_init: g_ctl set */
    memset(&t->prod, 0, sizeof t->prod);
    t->epoch = ep;
    t->prod.ctl = g_ctl;
    lt_prod_claim(&t->prod, g_ctl, t->tid); /* failure: no_slot drops, retried later */
}

static void thread_exit(void *arg)
{
    lt_thread *t = arg;
    if (!t || t == &g_dead || t == &g_ignored_marker || t == &g_paused_marker)
        return;
    tls_self = &g_dead; /* later events of this thread (other destructors) pass through */
    lt_prod_retire(&t->prod);
    spin_lock();
    t->next_free = g_free_list;
    g_free_list = t;
    spin_unlock();
}

static lt_thread *thread_init(void)
{
    /* hooked functions called from here on (libc) pass through */
    tls_self = &g_ignored_marker;
    if (!g_ctl || !atomic_load_explicit(&g_recording, RLX)) {
        tls_self = &g_paused_marker;
        return &g_paused_marker;
    }
    uint32_t tid = (uint32_t)syscall(SYS_gettid);
    if (tid_ignored(tid)) {
        tls_self = &g_ignored_marker;
        ctl_count(LT_CTR_IGNORED_THREADS);
        return &g_ignored_marker;
    }
    spin_lock();
    lt_thread *t = g_free_list;
    if (t)
        g_free_list = t->next_free;
    spin_unlock();
    if (t) {
        atomic_fetch_add_explicit(&g_stat_recycled, 1, RLX);
    } else {
        void *m = mmap(NULL, sizeof(lt_thread), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            if (g_ctl)
                atomic_fetch_add_explicit(&g_ctl->drops[LT_DROP_ALLOC_FAILED], 1, RLX);
            tls_self = &g_ignored_marker;
            return &g_ignored_marker;
        }
        t = m;
    }
    t->state = T_ACTIVE;
    t->guard = 0;
    t->depth = 0;
    t->cm_overflow = 0;
    t->tid = tid;
    t->next_free = NULL;
    t->stk_lo = 0;
    t->stk_hi = ~0ull;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *addr;
        size_t size;
        if (pthread_attr_getstack(&attr, &addr, &size) == 0 && size) {
            t->stk_lo = (uint64_t)addr;
            t->stk_hi = (uint64_t)addr + size;
        }
        pthread_attr_destroy(&attr);
    }
    thread_register(t);
    if (g_key_ok)
        pthread_setspecific(g_key, t);
    atomic_fetch_add_explicit(&g_stat_threads, 1, RLX);
    tls_self = t;
    return t;
}

static inline lt_thread *self(void)
{
    lt_thread *t = tls_self;
    if (unlikely(!t))
        t = thread_init_safe();
    return t;
}

/* ------------------------------------------------------------------ */
/* recording                                                           */

/* A record timestamp in the segment's clock: raw TSC ticks, converted by
 * the drainers, or CLOCK_MONOTONIC ns. */
static inline uint64_t stamp(void)
{
    return likely(atomic_load_explicit(&g_clock_tsc, RLX)) ? lt_rdtsc() : lt_now_ns();
}

/* Marks are compared with times from other processes (the injector's time
 * and crash marks): they hold CLOCK_MONOTONIC ns, the converted stamp of the
 * ENTRY that triggered them. Rare path. */
static uint64_t mark_ns(uint64_t ts)
{
    return atomic_load_explicit(&g_clock_tsc, RLX) ? lt_clock_to_ns(g_ctl, ts) : ts;
}

static inline int on_stack(const lt_thread *t, uint64_t a) { return a - t->stk_lo < t->stk_hi - t->stk_lo; }

static inline void write_index(lt_producer *p, uint64_t ts, uint32_t fid, uint16_t kind, uint16_t d)
{
    lt_index_record *r = &p->ring[p->fill];
    r->ts_ns = ts;
    r->seq = ++p->seq;
    r->tid = p->tid;
    r->func_id = fid;
    r->kind = kind;
    r->depth = d;
    r->flags = 0;
    p->fill++;
    /* pairs with the drainer's acquire of fill: record bytes visible */
    atomic_store_explicit(p->ring_fill, p->fill, memory_order_release);
}

/* Everything but "per-thread lane, room in the ring, detail off": ring
 * swaps, the periodic check, other modes, the detail lane, drops. */
static __attribute__((noinline)) void emit_slow(lt_thread *t, uint64_t ts, uint32_t fid, uint16_t kind,
                                                uint16_t d, const uint64_t *regs, int src)
{
    lt_producer *p = &t->prod;
    if (p->countdown == 0)
        lt_prod_refresh(p, ts);
    if (!(p->route & LT_ROUTE_DETAIL) || src == SRC_NONE) {
        lt_prod_write(p, ts, fid, kind, d, NULL);
        return;
    }
    uint64_t v[7];
    lt_detail_src ds = {v, 0, 0, NULL};
    uint64_t sp = 0;
    switch (src) {
    case SRC_TRAMP_ENTRY: /* r11 r10 r9 r8 rdi rsi rdx rcx rax | stub | ret */
        sp = (uint64_t)&regs[LT_REG_RET];
        v[0] = regs[4], v[1] = regs[5], v[2] = regs[6], v[3] = regs[7];
        v[4] = regs[3], v[5] = regs[2], v[6] = sp;
        ds.nregs = 7;
        break;
    case SRC_TRAMP_EXIT:
        v[0] = regs[8], v[1] = regs[6];
        ds.nregs = 2;
        break;
    case SRC_VALS_ENTRY: /* rdi rsi rdx rcx r8 r9 rsp */
        for (int i = 0; i < 7; i++)
            v[i] = regs[i];
        sp = regs[6];
        ds.nregs = 7;
        break;
    default: /* SRC_VALS_EXIT: rax rdx */
        v[0] = regs[0], v[1] = regs[1];
        ds.nregs = 2;
        break;
    }
    if (sp && p->stack_bytes) {
        uint32_t len = p->stack_bytes;
        /* never read past the top of the thread's stack mapping */
        if (on_stack(t, sp) && sp + len > t->stk_hi)
            len = (uint32_t)(t->stk_hi - sp);
        ds.stack = (const uint8_t *)sp;
        ds.stack_len = len;
    }
    if (p->route == (LT_ROUTE_LANE | LT_ROUTE_DETAIL) && p->ring && p->fill < p->cap) {
        /* the usual case with the detail lane on: index record inline */
        write_index(p, ts, fid, kind, d);
        lt_prod_detail(p, ts, fid, kind, &ds);
        return;
    }
    lt_prod_write(p, ts, fid, kind, d, &ds);
}

static inline void emit(lt_thread *t, uint64_t ts, uint32_t fid, uint16_t kind, uint32_t depth,
                        const uint64_t *regs, int src)
{
    lt_producer *p = &t->prod;
    uint16_t d = (uint16_t)(depth > 0xffff ? 0xffff : depth);
    /* fast path: no check due, per-thread lane only, detail off, room in
     * the active ring. The route is the thread's cached view of mode,
     * fallback and detail switch (refreshed every LT_CHECK_EVENTS events
     * and at ring swaps), so detail off costs nothing here. */
    if (likely(--p->countdown != 0 && p->route == LT_ROUTE_LANE && p->ring && p->fill < p->cap)) {
        write_index(p, ts, fid, kind, d);
        return;
    }
    emit_slow(t, ts, fid, kind, d, regs, src);
}

/* A record that is not written still takes its seq: gaps == drops. */
static inline void drop(lt_thread *t, int reason)
{
    t->prod.seq++;
    lt_prod_drop(&t->prod, reason);
}

/* Pop the top frame as left without returning (longjmp, unwinding). */
static void pop_unwound(lt_thread *t)
{
    lt_frame *f = &t->frames[--t->depth];
    if (atomic_load_explicit(&g_recording, RLX) && f->epoch == t->epoch) {
        emit(t, stamp(), f->fid, LT_KIND_RETURN_UNWOUND, t->depth, NULL, SRC_NONE);
        ctl_count(LT_CTR_UNWOUND);
    }
}

/* A new call whose return address lives at `slot`: frames whose slot is
 * below it were longjmp'd over. A frame at the same slot is the caller of
 * a tail call if the slot still holds what that frame left there
 * (lt_exit_tramp, or for a fallback frame the value seen at its entry): it
 * stays, and the callee's return closes it too. If the program wrote a new
 * return address there, that frame is gone. Frames on a signal alternate
 * stack are only compared with frames on that stack: back on the thread's
 * own stack they are stale; while on the alternate stack, the interrupted
 * frames on the own stack are live. */
static void unwind_for_entry(lt_thread *t, uint64_t slot, uint64_t cur_ret)
{
    int in = on_stack(t, slot);
    while (t->depth) {
        lt_frame *f = &t->frames[t->depth - 1];
        int fin = on_stack(t, f->slot);
        int stale;
        if (in != fin) {
            stale = in;
        } else {
            uint64_t left = (f->flags & (FRAME_CM | FRAME_RESTORED)) ? f->ret : (uint64_t)&lt_exit_tramp;
            stale = f->slot < slot || (f->slot == slot && cur_ret != left);
        }
        if (!stale)
            break;
        pop_unwound(t);
    }
}

static inline int maybe_stale(const lt_thread *t, uint64_t slot)
{
    if (!t->depth)
        return 0;
    uint64_t top = t->frames[t->depth - 1].slot;
    return top <= slot || !on_stack(t, top) || !on_stack(t, slot);
}

static inline int session_current(lt_thread *t)
{
    if (unlikely(t->epoch != atomic_load_explicit(&g_epoch, RLX))) {
        /* a new session attached after a detach: join its segment */
        lt_prod_retire(&t->prod);
        thread_register(t);
    }
    return 1;
}

void lt_unwind_begin(void);
void lt_unwind_caught(uint64_t sp);

HIDDEN void *lt_on_entry(lt_desc *d, uint64_t *regs)
{
    if (unlikely(d->role)) {
        /* never hijacked: __cxa_throw does not return, and the unwinder
         * must see this frame as it is */
        if (d->role == LT_ROLE_THROW)
            lt_unwind_begin();
        else
            lt_unwind_caught((uint64_t)&regs[LT_REG_RET]);
        return d->orig;
    }
    lt_thread *t = self();
    if (unlikely(t->state != T_ACTIVE)) {
        if (t->state == T_PAUSED && atomic_load_explicit(&g_recording, RLX)) {
            tls_self = NULL;
            t = thread_init_safe();
        }
        if (t->state != T_ACTIVE) {
            if (t->state == T_DEAD && g_ctl)
                atomic_fetch_add_explicit(&g_ctl->drops[LT_DROP_THREAD_EXITING], 1, RLX);
            return d->orig;
        }
    }
    if (unlikely(t->guard)) {
        ctl_count(LT_CTR_REENTRANT_SKIPS);
        return d->orig;
    }
    if (unlikely(!atomic_load_explicit(&g_recording, RLX)))
        return d->orig;
    t->guard = 1;
    session_current(t);
    uint64_t slot = (uint64_t)&regs[LT_REG_RET];
    if (unlikely(maybe_stale(t, slot)))
        unwind_for_entry(t, slot, regs[LT_REG_RET]);
    if (unlikely(t->depth >= LT_SHADOW_MAX)) {
        drop(t, LT_DROP_DEPTH_OVERFLOW); /* no ENTRY, return not hooked */
        t->guard = 0;
        return d->orig;
    }
    uint64_t ts = stamp();
    emit(t, ts, d->fid, LT_KIND_ENTRY, t->depth, regs, SRC_TRAMP_ENTRY);
    if (unlikely(atomic_load_explicit(&d->trigger, RLX)))
        lt_mark_add(g_ctl, mark_ns(ts), LT_MARK_SYMBOL, d->fid, t->tid);
    lt_frame *f = &t->frames[t->depth++];
    f->ret = regs[LT_REG_RET];
    f->slot = slot;
    f->fid = d->fid;
    f->flags = 0;
    f->epoch = t->epoch;
    regs[LT_REG_RET] = (uint64_t)&lt_exit_tramp;
    t->guard = 0;
    return d->orig;
}

HIDDEN uint64_t lt_on_exit(uint64_t *regs, uint64_t sp)
/* regs: r11 r10 r9 r8 rdi rsi rdx rcx rax (return values in rax/rdx) */
{
    lt_thread *t = tls_self; /* set: we hooked this return */
    uint32_t g = t->guard;
    t->guard = 1;
    uint64_t slot = sp - 8;
    /* The returning frame is the innermost one whose slot is exactly where
     * `ret` just popped from; frames above it were skipped by longjmp. */
    if (unlikely(t->frames[t->depth - 1].slot != slot)) {
        uint32_t i = t->depth - 1;
        while (i && t->frames[i - 1].slot != slot)
            i--;
        if (i) /* else: no match (stack switching); the top is the best guess */
            while (t->depth > i)
                pop_unwound(t);
    }
    lt_frame *f = &t->frames[--t->depth];
    uint64_t ret = f->ret;
    if (likely(atomic_load_explicit(&g_recording, RLX)) && f->epoch == t->epoch &&
        t->state == T_ACTIVE)
        emit(t, stamp(), f->fid, LT_KIND_RETURN, t->depth, regs, SRC_TRAMP_EXIT);
    t->guard = g;
    return ret;
}

/* ------------------------------------------------------------------ */
/* C++ exceptions: __cxa_throw/__cxa_rethrow and __cxa_begin_catch are    */
/* hooked with LT_ROLE_THROW / LT_ROLE_CATCH (agent.js)                    */

/* An exception is thrown and the unwinder is about to walk this thread's
 * stack: every hijacked return slot gets its real return address back, so
 * each frame is found in the unwind tables. The frames stay on the shadow
 * stack. */
HIDDEN void lt_unwind_begin(void)
{
    lt_thread *t = tls_self;
    if (!t || t->state != T_ACTIVE)
        return;
    for (uint32_t i = 0; i < t->depth; i++) {
        lt_frame *f = &t->frames[i];
        if (f->flags & (FRAME_CM | FRAME_RESTORED))
            continue;
        uint64_t *slot = (uint64_t *)f->slot;
        if (*slot == (uint64_t)&lt_exit_tramp) {
            *slot = f->ret;
            f->flags |= FRAME_RESTORED;
        }
    }
}

/* A handler was found and __cxa_begin_catch runs; sp is the stack pointer at
 * its entry, inside the catching frame. Frames below it were unwound: they
 * are closed as such. The frames above return normally again: their return
 * is hijacked once more. */
HIDDEN void lt_unwind_caught(uint64_t sp)
{
    lt_thread *t = tls_self;
    if (!t || t->state != T_ACTIVE)
        return;
    uint32_t g = t->guard;
    t->guard = 1;
    while (t->depth && t->frames[t->depth - 1].slot < sp && on_stack(t, t->frames[t->depth - 1].slot) == on_stack(t, sp))
        pop_unwound(t);
    for (uint32_t i = 0; i < t->depth; i++) {
        lt_frame *f = &t->frames[i];
        if (!(f->flags & FRAME_RESTORED))
            continue;
        uint64_t *slot = (uint64_t *)f->slot;
        if (*slot == f->ret)
            *slot = (uint64_t)&lt_exit_tramp;
        f->flags &= ~FRAME_RESTORED;
    }
    t->guard = g;
}

/* ------------------------------------------------------------------ */
/* Interceptor.attach fallback (called from the CModule glue)          */

static inline int fid_trigger(uint32_t fid)
{
    return fid < LT_TRIG_FIDS && (atomic_load_explicit(&g_trig_fid[fid >> 3], RLX) >> (fid & 7)) & 1;
}

/* rdi..r9: the argument registers at entry, for the detail lane */
EXPORT void lt_cm_enter(uint32_t fid, uint64_t sp, uint64_t rdi, uint64_t rsi, uint64_t rdx,
                        uint64_t rcx, uint64_t r8, uint64_t r9)
{
    lt_thread *t = self();
    if (t->state == T_PAUSED && atomic_load_explicit(&g_recording, RLX)) {
        tls_self = NULL;
        t = thread_init_safe();
    }
    if (t->state != T_ACTIVE || t->guard || !atomic_load_explicit(&g_recording, RLX))
        return;
    t->guard = 1;
    session_current(t);
    uint64_t cur_ret = *(uint64_t *)sp;
    if (maybe_stale(t, sp))
        unwind_for_entry(t, sp, cur_ret);
    if (t->depth >= LT_SHADOW_MAX) {
        drop(t, LT_DROP_DEPTH_OVERFLOW);
        t->cm_overflow++;
        t->guard = 0;
        return;
    }
    uint64_t ts = stamp();
    uint64_t vals[7] = {rdi, rsi, rdx, rcx, r8, r9, sp};
    emit(t, ts, fid, LT_KIND_ENTRY, t->depth, vals, SRC_VALS_ENTRY);
    if (unlikely(fid_trigger(fid)))
        lt_mark_add(g_ctl, mark_ns(ts), LT_MARK_SYMBOL, fid, t->tid);
    lt_frame *f = &t->frames[t->depth++];
    f->ret = cur_ret; /* not used to return: Frida owns this return */
    f->slot = sp;
    f->fid = fid;
    f->flags = FRAME_CM;
    f->epoch = t->epoch;
    t->guard = 0;
}

/* slot: the hooked call's return slot (Frida's leave context reports the
 * stack pointer as it was at entry) */
EXPORT void lt_cm_leave(uint32_t fid, uint64_t slot, uint64_t rax, uint64_t rdx)
{
    lt_thread *t = tls_self;
    if (!t || t->state != T_ACTIVE || t->guard)
        return;
    t->guard = 1;
    /* find our frame by its return slot; frames above it were longjmp'd over.
     * No frame (its ENTRY was not recorded): nothing to close. */
    uint32_t i = t->depth;
    while (i && !((t->frames[i - 1].flags & FRAME_CM) && t->frames[i - 1].fid == fid &&
                  t->frames[i - 1].slot == slot))
        i--;
    if (!i) {
        if (t->cm_overflow)
            t->cm_overflow--;
        t->guard = 0;
        return;
    }
    while (t->depth > i)
        pop_unwound(t); /* close anything left above it */
    lt_frame *f = &t->frames[i - 1];
    t->depth = i - 1;
    if (atomic_load_explicit(&g_recording, RLX) && f->epoch == t->epoch)
    {
        uint64_t vals[2] = {rax, rdx};
        emit(t, stamp(), fid, LT_KIND_RETURN, t->depth, vals, SRC_VALS_EXIT);
    }
    t->guard = 0;
}

/* ------------------------------------------------------------------ */
/* slots and patches                                                   */

/*
 * Each fast-hooked function gets a slot near its module (lt_alloc_near):
 *   slot + 0   the stub: endbr64; push rax; movabs rax, &desc; jmp [rip+0]; .quad lt_entry_tramp
 *   slot + 32  the function's first instructions, relocated by the injector
 *              (hooksafety.py), then a jump back into the function
 * and its entry (after an endbr64) becomes `jmp rel32` to the slot. Slots and
 * descriptors are never freed: after a revert, frames may still return
 * through lt_exit_tramp or run in the relocated copy.
 */
#define STUB_SIZE 32u
#define STUB_DESC_OFF 7
#define DESC_CHUNK 65536u
#define NEAR_LIMIT 0x7ff00000ull /* stay inside a rel32's reach with room to spare */

static lt_desc *g_desc_cur, *g_desc_end;
/* Descriptors are allocated by lifecycle calls only (the installing
 * thread), under their own lock: never the one program threads take in
 * thread_init/thread_exit, which the injector may stop mid-way while hooks
 * are written. acquire/release. */
static _Atomic uint32_t g_desc_lock;

static void desc_lock(void)
{
    uint32_t z = 0;
    while (!atomic_compare_exchange_weak_explicit(&g_desc_lock, &z, 1, ACQ, RLX)) {
        z = 0;
        __asm__ volatile("pause");
    }
}
static void desc_unlock(void) { atomic_store_explicit(&g_desc_lock, 0, REL); }

static lt_desc *desc_alloc(uint32_t fid)
{
    desc_lock();
    if (g_desc_cur == g_desc_end) {
        void *data = mmap(NULL, DESC_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED) {
            desc_unlock();
            return NULL;
        }
        g_desc_cur = data;
        g_desc_end = g_desc_cur + DESC_CHUNK / sizeof(lt_desc);
    }
    lt_desc *d = g_desc_cur++;
    desc_unlock();
    d->orig = NULL;
    d->site = NULL;
    d->fid = fid;
    d->patched = 0;
    d->role = 0;
    d->tramp = NULL;
    atomic_store_explicit(&d->trigger, 0, RLX);
    return d;
}

static void write_stub(uint8_t *s, lt_desc *d)
{
    uint64_t da = (uint64_t)d, ta = (uint64_t)&lt_entry_tramp;
    uint8_t code[STUB_SIZE] = {
        0xf3, 0x0f, 0x1e, 0xfa,             /* endbr64 */
        0x50,                               /* push rax */
        0x48, 0xb8,                         /* movabs rax, imm64 (desc) */
        0, 0, 0, 0, 0, 0, 0, 0,
        0xff, 0x25, 0x00, 0x00, 0x00, 0x00, /* jmp [rip+0] */
        0, 0, 0, 0, 0, 0, 0, 0,             /* lt_entry_tramp */
        0xcc, 0xcc, 0xcc};
    for (int i = 0; i < 8; i++) {
        code[STUB_DESC_OFF + i] = (uint8_t)(da >> (8 * i));
        code[21 + i] = (uint8_t)(ta >> (8 * i));
    }
    for (unsigned i = 0; i < STUB_SIZE; i++)
        s[i] = code[i];
}

static lt_desc *stub_desc(void *stub)
{
    uint8_t *s = stub;
    uint64_t d = 0;
    for (int i = 0; i < 8; i++)
        d |= (uint64_t)s[STUB_DESC_OFF + i] << (8 * i);
    return (lt_desc *)d;
}

static int try_map(uint64_t at, uint64_t bytes, void **out)
{
    void *p = mmap((void *)at, bytes, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    if ((uint64_t)p != at) { /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
        munmap(p, bytes);
        return 0;
    }
    *out = p;
    return 1;
}

/* `bytes` of RWX memory within rel32 reach of all of [lo, hi), or NULL.
 * Probes free addresses below the module, then above it. */
EXPORT void *lt_alloc_near(uint64_t lo, uint64_t hi, uint64_t bytes)
{
    const uint64_t page = 4096, step = 1ull << 20;
    bytes = (bytes + page - 1) & ~(page - 1);
    if (!bytes || hi - lo + bytes >= NEAR_LIMIT)
        return NULL;
    void *p;
    uint64_t reach = NEAR_LIMIT - (hi - lo) - bytes;
    uint64_t below = (lo & ~(page - 1)) - bytes;
    for (uint64_t d = 0; d < reach && d + 0x10000 < below; d += (d < step ? page * 16 : step))
        if (try_map(below - d, bytes, &p))
            return p;
    uint64_t above = (hi + page - 1) & ~(page - 1);
    for (uint64_t d = 0; d < reach; d += (d < step ? page * 16 : step))
        if (try_map(above + d, bytes, &p))
            return p;
    return NULL;
}

/* Write 5 bytes of code that other threads may be executing: with one
 * 8-byte store when the 8 bytes share a cache line (atomic for instruction
 * fetch), else by first parking the entry on a 2-byte `jmp .` so no thread
 * runs a half-written instruction. The page must be writable. Plain (release)
 * stores, never locked ones: a locked write to code pages takes a bus-lock
 * trap on some machines, which the kernel throttles by milliseconds. */
static void write_code5(uint8_t *site, const uint8_t *code)
{
    uint64_t a = (uint64_t)site;
    if ((a & 63) <= 56) {
        uint64_t q;
        __builtin_memcpy(&q, site, 8);
        uint8_t *qb = (uint8_t *)&q;
        for (int i = 0; i < 5; i++)
            qb[i] = code[i];
        __atomic_store_n((uint64_t *)site, q, __ATOMIC_RELEASE);
        return;
    }
    uint16_t park = 0xfeeb; /* eb fe: jmp . */
    __atomic_store_n((uint16_t *)site, park, __ATOMIC_RELEASE);
    for (int i = 2; i < 5; i++)
        __atomic_store_n(&site[i], code[i], __ATOMIC_RELEASE);
    uint16_t head = (uint16_t)(code[0] | code[1] << 8);
    __atomic_store_n((uint16_t *)site, head, __ATOMIC_RELEASE);
}

/* A range made writable for a batch of installs (lt_unlock_code): one
 * mprotect for the batch instead of two per function. Lifecycle calls only
 * (the Frida JS thread). */
static uint64_t g_unlocked_lo, g_unlocked_hi;

EXPORT int lt_unlock_code(uint64_t lo, uint64_t hi)
{
    lo &= ~4095ull;
    hi = (hi + 4095) & ~4095ull;
    if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        return -1;
    g_unlocked_lo = lo;
    g_unlocked_hi = hi;
    return 0;
}

EXPORT void lt_lock_code(void)
{
    if (g_unlocked_hi)
        mprotect((void *)g_unlocked_lo, g_unlocked_hi - g_unlocked_lo, PROT_READ | PROT_EXEC);
    g_unlocked_lo = g_unlocked_hi = 0;
}

static int make_writable(uint8_t *site, int on)
{
    if ((uint64_t)site >= g_unlocked_lo && (uint64_t)site + 8 <= g_unlocked_hi)
        return 0;
    uint64_t page = 4096;
    uint64_t lo = (uint64_t)site & ~(page - 1), hi = ((uint64_t)site + 8 + page - 1) & ~(page - 1);
    return mprotect((void *)lo, hi - lo, PROT_READ | PROT_EXEC | (on ? PROT_WRITE : 0));
}

static void jmp32(uint8_t out[5], const uint8_t *from, const uint8_t *to)
{
    int64_t rel = (int64_t)((uint64_t)to - ((uint64_t)from + 5));
    out[0] = 0xe9;
    for (int i = 0; i < 4; i++)
        out[1 + i] = (uint8_t)(rel >> (8 * i));
}

/* 2-byte code store: atomic for instruction fetch unless it straddles a
 * cache line (hooksafety never asks for that). */
static void write_code2(uint8_t *site, const uint8_t *code)
{
    __atomic_store_n((uint16_t *)site, (uint16_t)(code[0] | code[1] << 8), __ATOMIC_RELEASE);
}

/* Hook function `fid`: site = its entry (after endbr64), slot = its slot
 * (from lt_alloc_near), code = the relocated first `patch_len` bytes with
 * their jump back, expect = those bytes as analysed. The full form writes
 * `jmp slot` at the site; the short form (tramp != NULL) writes `jmp slot`
 * into the padding at tramp (tramp_expect: its bytes as analysed) and a
 * 2-byte `jmp tramp` at the site. Returns the stub (the handle for
 * lt_set_trigger and lt_revert) or NULL; *why: 1 the code changed since it
 * was analysed, 2 mprotect refused, 3 out of memory. */
EXPORT void *lt_install(uint32_t fid, uint32_t role, uint8_t *site, uint32_t patch_len, uint8_t *slot,
                        const uint8_t *code, uint32_t code_len, const uint8_t *expect,
                        uint8_t *tramp, const uint8_t *tramp_expect, int *why)
{
    for (uint32_t i = 0; i < patch_len; i++)
        if (site[i] != expect[i]) {
            *why = 1;
            return NULL;
        }
    for (uint32_t i = 0; tramp && i < 5; i++)
        if (tramp[i] != tramp_expect[i]) {
            *why = 1;
            return NULL;
        }
    lt_desc *d = desc_alloc(fid);
    if (!d) {
        *why = 3;
        return NULL;
    }
    for (uint32_t i = 0; i < code_len; i++)
        slot[STUB_SIZE + i] = code[i];
    write_stub(slot, d);
    d->orig = slot + STUB_SIZE;
    d->role = (uint8_t)role;
    d->site = site;
    __builtin_memcpy(d->saved, site, 8);
    uint8_t jmp[5];
    if (make_writable(site, 1) != 0 || (tramp && make_writable(tramp, 1) != 0)) {
        *why = 2;
        return NULL;
    }
    /* the stub and descriptor are complete before a jump to them is visible */
    atomic_thread_fence(memory_order_seq_cst);
    if (tramp) {
        d->tramp = tramp;
        __builtin_memcpy(d->tsaved, tramp, 8);
        jmp32(jmp, tramp, slot);
        write_code5(tramp, jmp);
        uint8_t j8[2] = {0xeb, (uint8_t)(int8_t)((int64_t)tramp - ((int64_t)site + 2))};
        write_code2(site, j8);
        make_writable(tramp, 0);
    } else {
        jmp32(jmp, site, slot);
        write_code5(site, jmp);
    }
    make_writable(site, 0);
    d->patched = 1;
    atomic_fetch_add_explicit(&g_stat_stubs, 1, RLX);
    *why = 0;
    return slot;
}

/* Put the function's own bytes back. Returns 0, or -1 when its site no
 * longer holds our jump (the module was unloaded and something else mapped). */
EXPORT int lt_revert(void *stub)
{
    lt_desc *d = stub_desc(stub);
    if (!d->patched)
        return 0;
    if (d->site[0] != (d->tramp ? 0xeb : 0xe9))
        return -1;
    if (make_writable(d->site, 1) != 0)
        return -1;
    if (d->tramp) {
        write_code2(d->site, d->saved);
        if (make_writable(d->tramp, 1) == 0) {
            write_code5(d->tramp, d->tsaved);
            make_writable(d->tramp, 0);
        }
    } else {
        write_code5(d->site, d->saved);
    }
    make_writable(d->site, 0);
    d->patched = 0;
    return 0;
}

/* Flag function `fid` as a trigger (or not): its ENTRY appends a mark.
 * stub: its replaceFast stub, or NULL for an Interceptor-fallback function. */
EXPORT void lt_set_trigger(void *stub, uint32_t fid, uint32_t on)
{
    if (stub)
        atomic_store_explicit(&stub_desc(stub)->trigger, on ? 1 : 0, RLX);
    if (fid < LT_TRIG_FIDS) {
        if (on)
            atomic_fetch_or_explicit(&g_trig_fid[fid >> 3], (uint8_t)(1u << (fid & 7)), RLX);
        else
            atomic_fetch_and_explicit(&g_trig_fid[fid >> 3], (uint8_t)~(1u << (fid & 7)), RLX);
    }
}

/* A mark from the agent's JS side (crash from the lifecycle script,
 * manual). Returns 0, -ENOSPC when the mark array is full, -1 before init. */
EXPORT int lt_add_mark(uint32_t kind, uint32_t fid, uint32_t tid)
{
    if (!g_ctl)
        return -1;
    return lt_mark_add(g_ctl, lt_now_ns(), kind, fid, tid);
}

/* ------------------------------------------------------------------ */
/* lifecycle, called from agent.js on the Frida JS thread               */

EXPORT void lt_ignore_thread(uint32_t tid)
{
    for (int i = 0; i < LT_MAX_IGNORED; i++) {
        uint32_t z = 0;
        if (atomic_load_explicit(&g_ignored[i], RLX) == tid)
            return;
        /* pairs with the acquire in tid_ignored */
        if (atomic_compare_exchange_strong_explicit(&g_ignored[i], &z, tid, REL, RLX))
            return;
    }
}

/* Frida cloaks its own threads (they are missing from
 * Process.enumerateThreads) and leaves their names alone, so: every thread
 * of the process that agent.js did not see, except the main thread, is
 * Frida's. Returns how many were ignored. */
EXPORT int lt_ignore_foreign_threads(const uint32_t *visible, uint32_t n)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int count = 0;
    uint32_t self_pid = (uint32_t)getpid();
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        uint32_t tid = (uint32_t)strtoul(e->d_name, NULL, 10);
        int seen = tid == self_pid;
        for (uint32_t i = 0; i < n && !seen; i++)
            seen = visible[i] == tid;
        if (!seen) {
            lt_ignore_thread(tid);
            count++;
        }
    }
    closedir(d);
    return count;
}

/* A forked child inherits our hooks and the MAP_SHARED segment: it must not
 * write into the parent's lanes. Recording stops (a new agent may init the
 * child with its own segment) and the forking thread forgets its slot. */
static void fork_child(void)
{
    atomic_store_explicit(&g_recording, 0, RLX);
    atomic_store_explicit(&g_free_lock, 0, RLX); /* its holder did not come along */
    lt_thread *t = tls_self;
    if (t && t->state == T_ACTIVE) {
        t->prod.slot = NULL;
        t->prod.ring = NULL;
        t->prod.retired = 1;
    }
}

/* Map the session's segment and start recording. Returns 0 or -errno; err
 * (may be NULL) gets a message. A second init after lt_detach joins a new
 * session; the old mapping is kept (late frames may still reference it). */
static uint64_t g_populated; /* bytes of the segment prefaulted (lt_populate_step) */

EXPORT int lt_init(const char *shm_name, char *err, uint32_t errlen)
{
    static int once;
    if (!once) {
        once = 1;
        detect_xsave();
        g_key_ok = pthread_key_create(&g_key, thread_exit) == 0;
        pthread_atfork(NULL, NULL, fork_child);
    }
    lt_shm_map m;
    /* populated later (lt_populate_step), once the hooks are live: ~0.1 s
     * for the default segment, which would otherwise delay them */
    int rc = lt_shm_open_ex(shm_name, &m, err, errlen, 0);
    if (rc)
        return rc;
    g_map = m;
    g_ctl = lt_ctl_of(&g_map);
    g_populated = 0;
    /* acquire: pairs with lt_tsc_enable's release; the clock is fixed for
     * this session (lt_tsc_enable refuses once agent_state is set) */
    atomic_store_explicit(&g_clock_tsc, atomic_load_explicit(&g_ctl->clock, ACQ) == LT_CLOCK_TSC, RLX);
    lt_shm_set_agent_state(&g_map, 1);
    /* pairs with the acquire in thread_register / session_current */
    atomic_fetch_add_explicit(&g_epoch, 1, REL);
    atomic_store_explicit(&g_recording, 1, RLX);
    return 0;
}

/* Prefault the segment up to the detail rings, one chunk per call, so the
 * program takes no page fault on its first pass through each index ring.
 * In chunks: while a populate holds the address space, a thread's first
 * event (which maps its state) waits, so it must wait for one chunk only,
 * and the lifecycle thread answers RPCs between chunks. Returns 1 while
 * more remains. Lifecycle thread only. */
#define POPULATE_CHUNK (4ull << 20)

EXPORT int lt_populate_step(void)
{
    if (!g_ctl)
        return 0;
    uint64_t end = g_ctl->drings_off < g_map.size ? g_ctl->drings_off : g_map.size;
    if (g_populated >= end)
        return 0;
    uint64_t n = end - g_populated < POPULATE_CHUNK ? end - g_populated : POPULATE_CHUNK;
    uint8_t *at = (uint8_t *)g_map.base + g_populated;
    if (madvise(at, n, MADV_POPULATE_WRITE) != 0) { /* older kernel: touch each page */
        volatile uint8_t *b = at;
        for (uint64_t o = 0; o < n; o += 4096)
            (void)b[o];
    }
    g_populated += n;
    return g_populated < end;
}

/* Stop recording. Hooks are reverted by agent.js; frames that still return
 * through lt_exit_tramp pop without recording. */
EXPORT void lt_detach(void)
{
    atomic_store_explicit(&g_recording, 0, RLX);
    if (g_ctl)
        lt_shm_set_agent_state(&g_map, 2);
}

/* Flush hint for the calling thread (e.g. before a planned exit). */
EXPORT void lt_thread_retire_self(void)
{
    lt_thread *t = tls_self;
    if (t && t->state == T_ACTIVE) {
        thread_exit(t);
        if (g_key_ok)
            pthread_setspecific(g_key, NULL);
    }
}

/* out[0..7]: threads seen, stubs, recycled thread states, recording,
 * epoch, xsave size, shadow depth limit, sizeof(lt_thread) */
EXPORT void lt_agent_stats(uint64_t *out)
{
    out[0] = atomic_load_explicit(&g_stat_threads, RLX);
    out[1] = atomic_load_explicit(&g_stat_stubs, RLX);
    out[2] = atomic_load_explicit(&g_stat_recycled, RLX);
    out[3] = atomic_load_explicit(&g_recording, RLX);
    out[4] = atomic_load_explicit(&g_epoch, RLX);
    out[5] = g_xsave_size;
    out[6] = LT_SHADOW_MAX;
    out[7] = sizeof(lt_thread);
}
