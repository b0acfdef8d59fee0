/* Test producer for the shared-memory lanes: links native/agent/lanes.c (the
 * very producer code the agent uses) and native/src/shm.c, and plays a
 * multi-threaded target.
 *   producer NAME TOTAL_THREADS MAX_ALIVE EVENTS_PER_THREAD [TID_BASE] [noretire] [detail]
 * Threads run in waves of MAX_ALIVE (created, then joined). Thread i uses the
 * synthetic tid TID_BASE+i and func ids 1..7. Prints "ok" at the end.
 * detail: every event also carries detail data derived from its seq (regs
 * seq, tid, ~seq; a 24-byte stack of seq's bytes), so a reader can tell a
 * torn or misplaced record from a good one. */
#define _GNU_SOURCE
#include "lanetrace/shm.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lt_shm_map g_map;
static unsigned g_events, g_tid_base;
static int g_retire = 1, g_detail;

static void *worker(void *arg)
{
    unsigned idx = (unsigned)(uintptr_t)arg;
    lt_producer p;
    memset(&p, 0, sizeof p);
    lt_prod_claim(&p, lt_ctl_of(&g_map), g_tid_base + idx); /* may fail: drops counted */
    uint16_t depth = 0;
    for (unsigned e = 0; e < g_events; e++) {
        int entry = (e % 2) == 0;
        if (g_detail) {
            uint64_t seq = p.seq + 1;
            uint64_t regs[3] = {seq, g_tid_base + idx, ~seq};
            uint64_t stack[3] = {seq, seq * 3, seq * 5};
            lt_detail_src ds = {regs, 3, sizeof stack, (const uint8_t *)stack};
            lt_prod_emit_detail(&p, lt_now_ns(), 1 + (idx + e / 2) % 7,
                                entry ? LT_KIND_ENTRY : LT_KIND_RETURN, depth, &ds);
        } else {
            lt_prod_emit(&p, lt_now_ns(), 1 + (idx + e / 2) % 7,
                         entry ? LT_KIND_ENTRY : LT_KIND_RETURN, depth);
        }
    }
    if (g_retire)
        lt_prod_retire(&p);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s NAME TOTAL MAX_ALIVE EVENTS [TID_BASE] [noretire]\n", argv[0]);
        return 2;
    }
    char err[256];
    if (lt_shm_open(argv[1], &g_map, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    unsigned total = atoi(argv[2]), alive = atoi(argv[3]);
    g_events = atoi(argv[4]);
    g_tid_base = argc > 5 ? atoi(argv[5]) : 100000;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "noretire") == 0)
            g_retire = 0;
        else if (strcmp(argv[i], "detail") == 0)
            g_detail = 1;
    }
    pthread_t th[64];
    for (unsigned i = 0; i < total; i += alive) {
        unsigned n = total - i < alive ? total - i : alive;
        for (unsigned k = 0; k < n; k++)
            pthread_create(&th[k], NULL, worker, (void *)(uintptr_t)(i + k));
        for (unsigned k = 0; k < n; k++)
            pthread_join(th[k], NULL);
    }
    puts("ok");
    return 0;
}
