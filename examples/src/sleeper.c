/* sleeper SECONDS: a target for attach tests. Starts 3 threads (sleeper-0..2)
 * before anything else; each calls heartbeat_tick() and idle_work() every
 * ~1 ms until SECONDS elapse or SIGINT/SIGTERM arrives. Prints "pid <pid>" and
 * "ready" (flushed) once all threads have ticked, and writes the expectation
 * at exit. The expectation holds every call since start; a tracer that
 * attached later sees a suffix of them. */
#define EXPECT_FUNCS(X)             \
    X(main, EXE)              \
    X(sleeper_thread, EXE)    \
    X(heartbeat_tick, EXE)    \
    X(idle_work, EXE)         \
    X(on_stop_signal, EXE)
#include "expect.h"
#include "ticker.h"

#define NTHREADS 3

struct sleeper {
    pthread_t thread;
    int index;
    unsigned long beats;
};

TRACED unsigned long heartbeat_tick(struct sleeper *s)
{
    COUNT(heartbeat_tick);
    return ++s->beats;
}

TRACED long idle_work(int index, unsigned long beat)
{
    COUNT(idle_work);
    return (long)(beat * 31 + (unsigned long)index) % 977;
}

TRACED void on_stop_signal(int sig)
{
    COUNT(on_stop_signal);
    ticker_signal = sig;
}

TRACED void *sleeper_thread(void *arg)
{
    struct sleeper *s = arg;
    char name[16];
    snprintf(name, sizeof name, "sleeper-%d", s->index);
    expect_thread_begin(name);
    COUNT(sleeper_thread);
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    long acc = 0;
    int announced = 0;
    while (!atomic_load(&ticker_stop)) {
        acc += idle_work(s->index, heartbeat_tick(s));
        if (!announced) {
            announced = 1;
            atomic_fetch_add(&ticker_started, 1);
        }
        ticker_next(&due);
    }
    return (void *)acc;
}

TRACED int main(int argc, char **argv)
{
    unsigned long long t0 = expect_mono_ns();
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 2) {
        fprintf(stderr, "usage: sleeper SECONDS\n");
        return 2;
    }
    double seconds = expect_arg_seconds(argv[1], "SECONDS");
    sigset_t set;
    ticker_block_signals(&set);
    static struct sleeper threads[NTHREADS];
    for (int k = 0; k < NTHREADS; k++) {
        threads[k].index = k;
        int err = pthread_create(&threads[k].thread, NULL, sleeper_thread, &threads[k]);
        if (err) {
            fprintf(stderr, "sleeper: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    ticker_install(on_stop_signal, &set);
    ticker_main_wait(NTHREADS, seconds, t0);
    unsigned long beats = 0;
    for (int k = 0; k < NTHREADS; k++) {
        pthread_join(threads[k].thread, NULL);
        beats += threads[k].beats;
    }
    char extra[128];
    snprintf(extra, sizeof extra, "\"stop\": \"%s\", \"signal\": %d",
             ticker_signal ? "signal" : "timeout", (int)ticker_signal);
    printf("sleeper: beats=%lu stop=%s\n", beats, ticker_signal ? "signal" : "timeout");
    return expect_write(extra) ? 1 : 0;
}
