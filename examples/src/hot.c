/* hot ITERS [THREADS]: one tiny function called ITERS times from main on one
 * thread, the workload of bench/overhead.py; with THREADS > 1, THREADS - 1
 * more threads (hot-1, ...) make the same ITERS calls at the same time
 * (bench/throughput.py), and the times cover all of them. The loop times itself on CLOCK_MONOTONIC
 * and prints "loop_ns=<ns>", so every tracer is compared on the same
 * in-process timer, without spawn, injection or trace-flush time. It also
 * reports the thread's CPU time for the loop (loop_cpu_ns), which stays
 * meaningful on a loaded machine where preemption inflates loop_ns.
 * Built three ways from this file: hot (plain), hot_pfe
 * (-fpatchable-function-entry=5, for `uftrace record -P hot_fn`) and hot_pg
 * (-pg, for plain `uftrace record`). */
#define EXPECT_FUNCS(X)     \
    X(main, EXE)          \
    X(hot_thread, EXE)    \
    X(hot_fn, EXE)
#include "expect.h"

/* A few dependent multiply/xor-shift steps: long enough (> 16 bytes) for any
 * hook to patch, short enough that the hook's cost dominates. */
TRACED int hot_fn(int x)
{
    unsigned v = (unsigned)x * 2654435761u;
    v ^= v >> 15;
    v *= 0x2c1b3c6du;
    v ^= v >> 12;
    return (int)v;
}

struct hot_run {
    long iters;
    unsigned acc;
    unsigned long long cpu_ns;
};

INLINE unsigned long long thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* The loop of one thread; its CPU time goes into r->cpu_ns. */
INLINE void hot_loop(struct hot_run *r)
{
    unsigned acc = 0;
    unsigned long calls = 0;
    unsigned long long c0 = thread_cpu_ns();
    /* Counted at the call site: a counter inside hot_fn would be part of
     * the cost being measured. */
    for (long i = 0; i < r->iters; i++, calls++)
        acc += (unsigned)hot_fn((int)i);
    r->cpu_ns = thread_cpu_ns() - c0;
    COUNT_N(hot_fn, calls);
    r->acc = acc;
}

#define MAX_THREADS 64
static struct hot_run runs[MAX_THREADS];

TRACED void *hot_thread(void *arg)
{
    struct hot_run *r = arg;
    char name[16];
    snprintf(name, sizeof name, "hot-%d", (int)(r - runs));
    expect_thread_begin(name);
    COUNT(hot_thread);
    hot_loop(r);
    return NULL;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s ITERS [THREADS]\n", program_invocation_short_name);
        return 2;
    }
    long iters = expect_arg_long(argv[1], "ITERS", 0, 4000000000l);
    int threads = argc == 3 ? (int)expect_arg_long(argv[2], "THREADS", 1, MAX_THREADS) : 1;
    static pthread_t tids[MAX_THREADS];
    for (int k = 0; k < threads; k++)
        runs[k].iters = iters;
    unsigned long long t0 = expect_mono_ns();
    for (int k = 1; k < threads; k++) {
        int err = pthread_create(&tids[k], NULL, hot_thread, &runs[k]);
        if (err) {
            fprintf(stderr, "hot: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    hot_loop(&runs[0]);
    unsigned acc = runs[0].acc;
    unsigned long long cpu_ns = runs[0].cpu_ns;
    for (int k = 1; k < threads; k++) {
        pthread_join(tids[k], NULL);
        acc += runs[k].acc;
        cpu_ns += runs[k].cpu_ns;
    }
    unsigned long long loop_ns = expect_mono_ns() - t0;
    long total = iters * threads;
    printf("%s: iters=%ld threads=%d loop_ns=%llu loop_cpu_ns=%llu ns_per_call=%.2f result=%u\n",
           program_invocation_short_name, iters, threads, loop_ns, cpu_ns,
           total ? (double)loop_ns / (double)total : 0.0, acc);
    fflush(stdout);
    char extra[96];
    snprintf(extra, sizeof extra, "\"loop_ns\": %llu, \"loop_cpu_ns\": %llu", loop_ns, cpu_ns);
    return expect_write(extra) ? 1 : 0;
}
