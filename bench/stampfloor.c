/* stampfloor ITERS: what the clock and the ring alone cost, no hook. The
 * loop of examples/bin/hot, each call bracketed by what lanetrace's hook
 * must do at the least: an rdtsc and a 32-byte record with a published fill
 * before and after it. bench/hookclock.py prints it as the floor of the
 * TSC-stamped hook cost on this machine (under a hypervisor an rdtsc can
 * cost far more than on bare metal). Prints loop_cpu_ns like hot. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) int hot_fn(int x)
{
    unsigned v = (unsigned)x * 2654435761u;
    v ^= v >> 15;
    v *= 0x2c1b3c6du;
    v ^= v >> 12;
    return (int)v;
}

typedef struct {
    uint64_t ts, seq;
    uint32_t tid, func_id;
    uint16_t kind, depth;
    uint32_t flags;
} record;

#define RING_RECORDS 8192u /* one 256 KiB ring, reused: no page faults */
static record ring[RING_RECORDS];
static volatile uint32_t fill;

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void emit(uint64_t *seq, uint16_t kind)
{
    record *r = &ring[*seq % RING_RECORDS];
    r->ts = rdtsc();
    r->seq = ++*seq;
    r->tid = 1;
    r->func_id = 7;
    r->kind = kind;
    r->depth = 0;
    r->flags = 0;
    fill = (uint32_t)*seq;
}

static unsigned long long cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: stampfloor ITERS\n");
        return 2;
    }
    long iters = atol(argv[1]);
    uint64_t seq = 0;
    unsigned acc = 0;
    unsigned long long c0 = cpu_ns();
    for (long i = 0; i < iters; i++) {
        emit(&seq, 1);
        acc += (unsigned)hot_fn((int)i);
        emit(&seq, 2);
    }
    unsigned long long c1 = cpu_ns();
    printf("stampfloor: iters=%ld loop_cpu_ns=%llu result=%u\n", iters, c1 - c0, acc);
    return 0;
}
