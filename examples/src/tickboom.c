/* tickboom SECONDS BOOM_AT: 4 threads (tick-0..3) call tick() every ~1 ms for
 * SECONDS; thread tick-0 calls boom() exactly once, at the first tick at or
 * after BOOM_AT seconds since start (never if BOOM_AT >= SECONDS). A trigger
 * target for the flight recorder: steady background calls, one rare event.
 * Prints "pid <pid>" and "ready" like sleeper; stops early on SIGINT/SIGTERM. */
#define EXPECT_FUNCS(X)             \
    X(main, EXE)             \
    X(tick_thread, EXE)      \
    X(tick, EXE)             \
    X(boom, EXE)             \
    X(on_stop_signal, EXE)
#include "expect.h"
#include "ticker.h"

#define NTHREADS 4

struct ticker {
    pthread_t thread;
    int index;
    unsigned long ticks;
};

static unsigned long long start_ns, boom_at_ns;
static pid_t boom_tid;
static unsigned long long boom_ns; /* since start; written by tick-0 before join */

TRACED long tick(int index, unsigned long n)
{
    COUNT(tick);
    return (long)((n * 2654435761u + (unsigned long)index) % 1009);
}

TRACED long boom(int index, unsigned long n)
{
    COUNT(boom);
    boom_tid = gettid();
    boom_ns = expect_mono_ns() - start_ns;
    return (long)n * 1000 + index;
}

TRACED void on_stop_signal(int sig)
{
    COUNT(on_stop_signal);
    ticker_signal = sig;
}

TRACED void *tick_thread(void *arg)
{
    struct ticker *t = arg;
    char name[16];
    snprintf(name, sizeof name, "tick-%d", t->index);
    expect_thread_begin(name);
    COUNT(tick_thread);
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    long acc = 0;
    int boomed = 0;
    while (!atomic_load(&ticker_stop)) {
        acc += tick(t->index, ++t->ticks);
        if (t->ticks == 1)
            atomic_fetch_add(&ticker_started, 1);
        if (t->index == 0 && !boomed && expect_mono_ns() >= boom_at_ns) {
            boomed = 1;
            acc += boom(t->index, t->ticks);
        }
        ticker_next(&due);
    }
    return (void *)acc;
}

TRACED int main(int argc, char **argv)
{
    start_ns = expect_mono_ns();
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 3) {
        fprintf(stderr, "usage: tickboom SECONDS BOOM_AT\n");
        return 2;
    }
    double seconds = expect_arg_seconds(argv[1], "SECONDS");
    double boom_at = expect_arg_seconds(argv[2], "BOOM_AT");
    /* Past the end means never: the loop stops before the clock gets there. */
    boom_at_ns = boom_at < seconds ? start_ns + (unsigned long long)(boom_at * 1e9) : ~0ull;
    sigset_t set;
    ticker_block_signals(&set);
    static struct ticker threads[NTHREADS];
    for (int k = 0; k < NTHREADS; k++) {
        threads[k].index = k;
        int err = pthread_create(&threads[k].thread, NULL, tick_thread, &threads[k]);
        if (err) {
            fprintf(stderr, "tickboom: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    ticker_install(on_stop_signal, &set);
    ticker_main_wait(NTHREADS, seconds, start_ns);
    unsigned long ticks = 0;
    for (int k = 0; k < NTHREADS; k++) {
        pthread_join(threads[k].thread, NULL);
        ticks += threads[k].ticks;
    }
    char extra[256];
    if (boom_tid)
        snprintf(extra, sizeof extra,
                 "\"boom\": {\"tid\": %d, \"at_ns\": %llu}, \"stop\": \"%s\", \"signal\": %d",
                 (int)boom_tid, boom_ns, ticker_signal ? "signal" : "timeout", (int)ticker_signal);
    else
        snprintf(extra, sizeof extra, "\"boom\": null, \"stop\": \"%s\", \"signal\": %d",
                 ticker_signal ? "signal" : "timeout", (int)ticker_signal);
    printf("tickboom: ticks=%lu boom=%s\n", ticks, boom_tid ? "yes" : "no");
    return expect_write(extra) ? 1 : 0;
}
