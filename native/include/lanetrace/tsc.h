/*
 * lanetrace/tsc.h — the clock of a segment's records.
 *
 * Where the CPU's time-stamp counter is invariant (constant_tsc and
 * nonstop_tsc, and the kernel itself keeps time with it), the agent stamps
 * index and detail records with raw TSC ticks: one rdtsc instead of a vDSO
 * clock_gettime on every ENTRY and RETURN. The creator calibrates the TSC
 * against CLOCK_MONOTONIC outside the target (lt_tsc_enable, tsc.c) and
 * stores the conversion in the control block (shm.h, lt_ctl: clock, tsc_*);
 * drainers convert each collected batch back to CLOCK_MONOTONIC ns
 * (lt_tsc_convert_*), so everything past the drainer, and the trace, sees
 * nanoseconds only. Elsewhere the records keep clock_gettime nanoseconds and
 * the conversion is the identity.
 *
 * Which clock a segment's records use is decided once per agent init
 * (lt_init reads ctl.clock); the fields are written once, before the release
 * store of ctl.clock, and never change afterwards.
 *
 * Values in the segment that processes other than the target compare (marks,
 * heartbeats, mode/fallback moments) are always CLOCK_MONOTONIC ns: the agent
 * converts its TSC reading before it stores or compares one of those.
 */
#ifndef LANETRACE_TSC_H
#define LANETRACE_TSC_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "lanetrace/shm.h"

/* ctl.clock */
#define LT_CLOCK_MONOTONIC 0u /* records hold CLOCK_MONOTONIC ns */
#define LT_CLOCK_TSC 1u       /* records hold TSC ticks; convert with ctl.tsc_* */

/* ctl.tsc_mult is ns per tick in fixed point with this many fraction bits */
#define LT_TSC_SHIFT 48u

/* A process-local copy of the conversion (read once per batch). */
typedef struct lt_tsc_conv {
    uint32_t clock;    /* LT_CLOCK_* */
    uint64_t tsc_base; /* ticks at ns_base */
    uint64_t ns_base;
    uint64_t mult;     /* ns per tick << LT_TSC_SHIFT */
} lt_tsc_conv;

/* Not ordered with earlier loads and stores (no lfence): a hook's stamp may
 * be taken a few cycles early, never out of order with the same thread's
 * previous stamp by more than that. */
static inline uint64_t lt_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* acquire: pairs with the release store of ctl.clock in lt_tsc_enable */
static inline void lt_tsc_conv_of(lt_ctl *c, lt_tsc_conv *out)
{
    out->clock = atomic_load_explicit(&c->clock, memory_order_acquire);
    out->tsc_base = c->tsc_base;
    out->ns_base = c->tsc_base_ns;
    out->mult = c->tsc_mult;
}

/* A record timestamp in the segment's clock -> CLOCK_MONOTONIC ns. Signed
 * arithmetic: a stamp taken just before the calibration anchor converts too. */
static inline uint64_t lt_tsc_conv_ns(const lt_tsc_conv *k, uint64_t ts)
{
    if (k->clock != LT_CLOCK_TSC)
        return ts;
    __int128 d = (__int128)(int64_t)(ts - k->tsc_base) * (__int128)k->mult;
    return k->ns_base + (uint64_t)(int64_t)(d >> LT_TSC_SHIFT);
}

static inline uint64_t lt_clock_to_ns(lt_ctl *c, uint64_t ts)
{
    lt_tsc_conv k;
    lt_tsc_conv_of(c, &k);
    return lt_tsc_conv_ns(&k, ts);
}

/* ---- outside the target ---- */

/* One (TSC, CLOCK_MONOTONIC ns) pair: the tightest of a few back-to-back
 * readings, the TSC taken halfway. Calibration anchors: ctl.tsc_created
 * with created_ns at creation (shm.c), tsc_base with tsc_base_ns at enable. */
static inline void lt_tsc_pair(uint64_t *tsc, uint64_t *ns)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        struct timespec t;
        uint32_t lo, hi;
        __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi)::"memory");
        uint64_t t0 = ((uint64_t)hi << 32) | lo;
        clock_gettime(CLOCK_MONOTONIC, &t);
        __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi)::"memory");
        uint64_t t1 = ((uint64_t)hi << 32) | lo;
        if (t1 - t0 < best) {
            best = t1 - t0;
            *tsc = t0 + (t1 - t0) / 2;
            *ns = (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
        }
    }
}

/* (tsc.c; cffi extension only) */

/* 1 when the TSC may stand in for CLOCK_MONOTONIC here: /proc/cpuinfo has
 * constant_tsc and nonstop_tsc, and the kernel's clocksource is the TSC (a
 * kernel that found the TSC unsynchronized across CPUs switched away). */
int lt_tsc_invariant(void);
/* Second anchor and switch the segment's record clock to the TSC, before
 * the agent's init: the ticks per ns come from the span between the two
 * anchors (at least min_span_ns: waits for the rest). Returns LT_CLOCK_TSC,
 * or LT_CLOCK_MONOTONIC when the TSC is not invariant here (clock unchanged). */
uint32_t lt_tsc_enable(lt_ctl *c, uint64_t min_span_ns);
/* Convert collected records in place to CLOCK_MONOTONIC ns. */
void lt_tsc_convert_index(lt_ctl *c, void *recs, size_t nbytes);
void lt_tsc_convert_detail(lt_ctl *c, void *buf, size_t nbytes);

#endif /* LANETRACE_TSC_H */
