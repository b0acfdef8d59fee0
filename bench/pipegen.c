/* pipegen THREADS EVENTS_PER_SEC SECONDS [detail]: a synthetic target for
 * bench/throughput.py. It links native/agent/lanes.c (the agent's own
 * producer code) and native/src/shm.c, reads the name of its segment from
 * stdin (the bench creates the segment for this pid after the start), and
 * writes ENTRY/RETURN pairs into it from THREADS threads at a steady total
 * rate of EVENTS_PER_SEC (paced on CLOCK_MONOTONIC in slices of 64 events,
 * sleeping in between) for SECONDS. No hook, no Frida: what the drainers and
 * the writer sustain on their own. With "detail", every event also writes a
 * detail record (6 argument registers + rsp and a 128-byte stack copy, as the
 * agent does with the flight recorder on).
 * Prints "events=<total written>" when done. */
#define _GNU_SOURCE
#include "lanetrace/shm.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define FUNCTIONS 64
#define SLICE 64

static lt_shm_map g_map;
static double g_rate, g_seconds;
static int g_detail;

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void *run(void *arg)
{
    unsigned long *written = arg;
    lt_producer p;
    memset(&p, 0, sizeof p);
    /* a slot that cannot be claimed is counted as drops by the producer */
    lt_prod_claim(&p, lt_ctl_of(&g_map), (uint32_t)syscall(SYS_gettid));
    uint64_t regs[7] = {1, 2, 3, 4, 5, 6, 0x7ffc0000};
    uint8_t stack[LT_DETAIL_MAX_STACK];
    memset(stack, 0xa5, sizeof stack);
    lt_detail_src ds = {regs, 7, 128, stack};
    unsigned long long t0 = now_ns(), end = t0 + (unsigned long long)(g_seconds * 1e9);
    unsigned long n = 0;
    uint32_t fid = 1;
    for (;;) {
        unsigned long long t = now_ns();
        if (t >= end)
            break;
        unsigned long due = (unsigned long)((double)(t - t0) * g_rate / 1e9);
        if (n >= due) {
            unsigned long long next = t0 + (unsigned long long)((double)(n + SLICE) * 1e9 / g_rate);
            struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            continue;
        }
        /* whole calls only: an ENTRY is always followed by its RETURN */
        for (int i = 0; i < SLICE && n < due; i += 2, n += 2) {
            uint64_t ts = lt_now_ns();
            if (g_detail) {
                lt_prod_emit_detail(&p, ts, fid, LT_KIND_ENTRY, 0, &ds);
                lt_prod_emit_detail(&p, ts + 3, fid, LT_KIND_RETURN, 0, &ds);
            } else {
                lt_prod_emit(&p, ts, fid, LT_KIND_ENTRY, 0);
                lt_prod_emit(&p, ts + 3, fid, LT_KIND_RETURN, 0);
            }
            fid = fid % FUNCTIONS + 1;
        }
    }
    lt_prod_retire(&p);
    *written = n;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: pipegen THREADS EVENTS_PER_SEC SECONDS [detail]\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    double total_rate = atof(argv[2]);
    g_seconds = atof(argv[3]);
    g_detail = argc > 4 && strcmp(argv[4], "detail") == 0;
    if (threads < 1 || threads > 64 || !(total_rate > 0) || !(g_seconds > 0)) {
        fprintf(stderr, "pipegen: bad arguments\n");
        return 2;
    }
    g_rate = total_rate / threads;
    char name[256];
    if (!fgets(name, sizeof name, stdin)) {
        fprintf(stderr, "pipegen: no segment name on stdin\n");
        return 1;
    }
    name[strcspn(name, "\n")] = '\0';
    char err[256];
    if (lt_shm_open(name, &g_map, err, sizeof err)) {
        fprintf(stderr, "pipegen: %s\n", err);
        return 1;
    }
    pthread_t th[64];
    unsigned long written[64] = {0};
    for (int k = 0; k < threads; k++)
        pthread_create(&th[k], NULL, run, &written[k]);
    unsigned long total = 0;
    for (int k = 0; k < threads; k++) {
        pthread_join(th[k], NULL);
        total += written[k];
    }
    printf("events=%lu\n", total);
    fflush(stdout);
    return 0;
}
