/* Shared by sleeper and tickboom: a steady ~1 ms period on absolute deadlines
 * (no drift), and a stop flag set by SIGINT/SIGTERM or the time limit. Only the
 * main thread takes the signals, so the handler's call lands on a known
 * thread in the expectation. */
#ifndef LANETRACE_EXAMPLES_TICKER_H
#define LANETRACE_EXAMPLES_TICKER_H

#include <signal.h>
#include <stdatomic.h>

#define TICK_PERIOD_NS 1000000ll

static atomic_int ticker_stop;
static volatile sig_atomic_t ticker_signal;
static atomic_int ticker_started;

INLINE void ticker_next(struct timespec *due)
{
    due->tv_nsec += TICK_PERIOD_NS;
    if (due->tv_nsec >= 1000000000l) {
        due->tv_nsec -= 1000000000l;
        due->tv_sec++;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, due, NULL) == EINTR)
        ;
}

/* Blocks the stop signals; threads created afterwards inherit the mask. */
INLINE void ticker_block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

INLINE void ticker_install(void (*handler)(int), const sigset_t *set)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_sigmask(SIG_UNBLOCK, set, NULL);
}

/* Main thread: wait until every thread has ticked once, announce, then sleep
 * until the deadline or a stop signal. */
INLINE void ticker_main_wait(int nthreads, double seconds, unsigned long long t0)
{
    while (atomic_load(&ticker_started) < nthreads && !ticker_signal) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    printf("pid %d\nready\n", (int)getpid());
    fflush(stdout);
    unsigned long long deadline = t0 + (unsigned long long)(seconds * 1e9);
    while (!ticker_signal) {
        unsigned long long now = expect_mono_ns();
        if (now >= deadline)
            break;
        unsigned long long left = deadline - now;
        if (left > 10000000ull)
            left = 10000000ull;
        struct timespec ts = {0, (long)left};
        nanosleep(&ts, NULL); /* EINTR on a signal: loop re-checks */
    }
    atomic_store(&ticker_stop, 1);
}

#endif
