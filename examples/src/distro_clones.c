/* Built the way distributions build (-O2, sibling calls, -fcf-protection, no
 * noipa), so gcc emits what real packages contain: .constprop, .isra, .part
 * and .cold clones, tail calls (jmp to another function's entry, also through
 * a pointer) and recursion through several functions. Prints one
 * deterministic line; the fidelity tests compare traced and untraced runs and
 * per-function counts with callgrind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define unlikely(x) __builtin_expect(!!(x), 0)

struct record {
    long key;
    long weight;
    char pad[48];
};

/* Only ever called with k == 3: gcc clones it into scale.constprop.0. */
static __attribute__((noinline)) long scale(long x, long k)
{
    long r = 0;
    for (long i = 0; i < k; i++)
        r += x ^ (i * 7);
    return r;
}

/* Reads one field of a large struct passed by value: gcc passes the field
 * alone to weight_of.isra.0. */
static __attribute__((noinline)) long weight_of(struct record r)
{
    return r.weight * 3 + 1;
}

static __attribute__((noinline, cold)) void report_bad(long v)
{
    fprintf(stderr, "bad value %ld\n", v);
}

/* The unlikely branch goes to checked_sum.cold. */
static __attribute__((noinline)) long checked_sum(const long *v, int n)
{
    long s = 0;
    for (int i = 0; i < n; i++) {
        if (unlikely(v[i] < 0)) {
            report_bad(v[i]);
            abort();
        }
        s += v[i];
    }
    return s;
}

/* A cheap test inlined into callers and a big rest split off into
 * mix_slow.part.0 (ipa-split). */
static long mix_slow(long x)
{
    if (x < 4)
        return x;
    char buf[64];
    long h = 1469598103934665603L;
    int n = snprintf(buf, sizeof buf, "%ld:%ld:%ld", x, x * 31, x ^ 0x5bd1e995);
    for (int i = 0; i < n; i++)
        h = (h ^ buf[i]) * 1099511628211L;
    for (int i = 0; i < n; i++)
        h += buf[n - 1 - i] * (i + 1);
    for (int i = 0; i < n; i++)
        h ^= (h << 7) + buf[i] * 13 + (h >> 3);
    n += snprintf(buf, sizeof buf, "%lx", h);
    return (h & 0xffff) + (long)strlen(buf) + n;
}

/* Two callers so that inlining the whole of mix_slow does not pay. */
__attribute__((noinline)) long mix_even(long x) { return mix_slow(x * 2) + 1; }
__attribute__((noinline)) long mix_odd(long x) { return mix_slow(x * 2 + 1) + 2; }

/* Tail (sibling) calls: step_a ends in jmp step_b, step_b in jmp step_c. */
__attribute__((noinline)) long step_c(long x) { return x * 2 + scale(x, 3); }
__attribute__((noinline)) long step_b(long x) { if (x & 1) return step_c(x + 1); return step_c(x + 3); }
__attribute__((noinline)) long step_a(long x) { return step_b(x ^ 5); }

/* A tail call through a pointer: the callee is reached by jmp *reg. */
__attribute__((noinline)) long via_ptr_target(long x) { return x + 11; }
long (*volatile dispatch)(long) = via_ptr_target;
__attribute__((noinline)) long via_ptr(long x) { return dispatch(x * 3); }

/* Recursion through three functions. */
long ring_one(long n);
__attribute__((noinline)) long ring_three(long n) { return n <= 0 ? 1 : ring_one(n - 1) + 2; }
__attribute__((noinline)) long ring_two(long n) { return n <= 0 ? 2 : ring_three(n - 1) * 2 % 1000003; }
__attribute__((noinline)) long ring_one(long n) { return n <= 0 ? 3 : ring_two(n - 1) + n; }

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 50;
    long vals[8] = {3, 1, 4, 1, 5, 9, 2, 6};
    long total = 0;
    for (int r = 0; r < rounds; r++) {
        struct record rec = {.key = r, .weight = r % 7};
        vals[r % 8] += r % 3;
        total += scale(r, 3);
        total += weight_of(rec);
        total += checked_sum(vals, 8);
        total += mix_slow(r) + mix_even(r) + mix_odd(r);
        total += step_a(r);
        total += via_ptr(r);
        if (r % 10 == 0)
            total += ring_one(r % 23);
        total %= 1000000007L;
    }
    printf("distro_clones rounds=%d total=%ld\n", rounds, total);
    return 0;
}
