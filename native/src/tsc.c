/*
 * tsc.c — the record clock outside the target (tsc.h): whether the TSC can
 * stand in for CLOCK_MONOTONIC here, its calibration by the segment's
 * creator, and the conversion of collected records back to CLOCK_MONOTONIC
 * ns by drainers. Never linked into the agent.
 */
#define _GNU_SOURCE
#include "lanetrace/tsc.h"

#include "lanetrace/detail.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release

/* whole word w in the space-separated list s */
static int has_word(const char *s, const char *w)
{
    size_t n = strlen(w);
    for (const char *p = s; (p = strstr(p, w)); p += n)
        if ((p == s || p[-1] == ' ' || p[-1] == '\t') && (p[n] == ' ' || p[n] == '\n' || p[n] == 0))
            return 1;
    return 0;
}

int lt_tsc_invariant(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return 0;
    char line[8192];
    int ok = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) == 0) {
            ok = has_word(line, "constant_tsc") && has_word(line, "nonstop_tsc");
            break;
        }
    }
    fclose(f);
    if (!ok)
        return 0;
    f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (f) {
        char cs[64] = "";
        if (!fgets(cs, sizeof cs, f))
            cs[0] = 0;
        fclose(f);
        ok = strcmp(cs, "tsc\n") == 0 || strcmp(cs, "tsc") == 0;
    }
    return ok;
}

uint32_t lt_tsc_enable(lt_ctl *c, uint64_t min_span_ns)
{
    uint32_t cur = atomic_load_explicit(&c->clock, ACQ);
    /* once an agent stamps records, their clock must not change under it */
    if (cur == LT_CLOCK_TSC || atomic_load_explicit(&c->agent_state, RLX) != 0 || !lt_tsc_invariant())
        return cur;
    uint64_t tsc = 0, ns = 0;
    for (;;) {
        lt_tsc_pair(&tsc, &ns);
        if (ns - c->created_ns >= min_span_ns)
            break;
        uint64_t rest = min_span_ns - (ns - c->created_ns);
        struct timespec ts = {(time_t)(rest / 1000000000ull), (long)(rest % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    uint64_t dticks = tsc - c->tsc_created, dns = ns - c->created_ns;
    if (tsc <= c->tsc_created || dns == 0)
        return cur;
    unsigned __int128 mult = ((unsigned __int128)dns << LT_TSC_SHIFT) / dticks;
    /* 10 MHz .. 100 GHz: anything else is not a TSC we understand */
    if (mult > ((unsigned __int128)100 << LT_TSC_SHIFT) || mult < ((unsigned __int128)1 << LT_TSC_SHIFT) / 100)
        return cur;
    c->tsc_base = tsc;
    c->tsc_base_ns = ns;
    c->tsc_mult = (uint64_t)mult;
    /* pairs with the acquire in lt_init and in lt_tsc_conv_of */
    atomic_store_explicit(&c->clock, LT_CLOCK_TSC, REL);
    return LT_CLOCK_TSC;
}

void lt_tsc_convert_index(lt_ctl *c, void *recs, size_t nbytes)
{
    lt_tsc_conv k;
    lt_tsc_conv_of(c, &k);
    if (k.clock != LT_CLOCK_TSC)
        return;
    lt_index_record *r = recs;
    for (size_t i = 0, n = nbytes / LT_INDEX_RECORD_SIZE; i < n; i++)
        r[i].ts_ns = lt_tsc_conv_ns(&k, r[i].ts_ns);
}

void lt_tsc_convert_detail(lt_ctl *c, void *buf, size_t nbytes)
{
    lt_tsc_conv k;
    lt_tsc_conv_of(c, &k);
    if (k.clock != LT_CLOCK_TSC)
        return;
    uint8_t *b = buf;
    lt_detail_record h;
    uint32_t size;
    /* a malformed tail is left as it is: its consumers stop there too */
    for (size_t off = 0; (size = lt_detail_at(b, nbytes, off, &h)); off += size) {
        uint64_t ns = lt_tsc_conv_ns(&k, h.ts_ns);
        memcpy(b + off + offsetof(lt_detail_record, ts_ns), &ns, sizeof ns);
    }
}
