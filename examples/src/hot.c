/* hot ITERS: one tiny function called ITERS times from main on one thread,
 * the workload of bench/overhead.py. The loop times itself on CLOCK_MONOTONIC
 * and prints "loop_ns=<ns>", so every tracer is compared on the same
 * in-process timer, without spawn, injection or trace-flush time. It also
 * reports the thread's CPU time for the loop (loop_cpu_ns), which stays
 * meaningful on a loaded machine where preemption inflates loop_ns.
 * Built three ways from this file: hot (plain), hot_pfe
 * (-fpatchable-function-entry=5, for `uftrace record -P hot_fn`) and hot_pg
 * (-pg, for plain `uftrace record`). */
#define EXPECT_FUNCS(X)     \
    X(main, EXE)          \
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

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 2) {
        fprintf(stderr, "usage: %s ITERS\n", program_invocation_short_name);
        return 2;
    }
    long iters = expect_arg_long(argv[1], "ITERS", 0, 4000000000l);
    unsigned acc = 0;
    unsigned long calls = 0;
    struct timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    unsigned long long t0 = expect_mono_ns();
    /* Counted at the call site: a counter inside hot_fn would be part of
     * the cost being measured. */
    for (long i = 0; i < iters; i++, calls++)
        acc += (unsigned)hot_fn((int)i);
    unsigned long long loop_ns = expect_mono_ns() - t0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    unsigned long long cpu_ns = (unsigned long long)(c1.tv_sec - c0.tv_sec) * 1000000000ull
                                + (unsigned long long)c1.tv_nsec - (unsigned long long)c0.tv_nsec;
    COUNT_N(hot_fn, calls);
    printf("%s: iters=%ld loop_ns=%llu loop_cpu_ns=%llu ns_per_call=%.2f result=%u\n",
           program_invocation_short_name, iters, loop_ns, cpu_ns,
           iters ? (double)loop_ns / (double)iters : 0.0, acc);
    fflush(stdout);
    char extra[96];
    snprintf(extra, sizeof extra, "\"loop_ns\": %llu, \"loop_cpu_ns\": %llu", loop_ns, cpu_ns);
    return expect_write(extra) ? 1 : 0;
}
