/* rategen THREADS CALLS_PER_SEC SECONDS: each of THREADS threads calls work()
 * at a steady CALLS_PER_SEC (paced on CLOCK_MONOTONIC in slices of 64 calls,
 * sleeping in between, so the rate is exact over the run) for SECONDS.
 * bench/flightrec.py traces it to find the highest event rate the drainers
 * and the writer persist with zero drops. Prints "calls=<total>". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double rate, seconds;
static volatile long sink;

__attribute__((noipa, used)) long work(long x)
{
    return x * 2654435761u ^ (x >> 7);
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void *run(void *arg)
{
    unsigned long *calls = arg;
    unsigned long long t0 = now_ns(), end = t0 + (unsigned long long)(seconds * 1e9);
    long acc = 0;
    unsigned long n = 0;
    for (;;) {
        unsigned long long t = now_ns();
        if (t >= end)
            break;
        unsigned long due = (unsigned long)((double)(t - t0) * rate / 1e9);
        if (n >= due) {
            /* ahead of schedule: sleep until the next slice of 64 is due, so
             * the generator leaves the CPUs to the tracer */
            unsigned long long next = t0 + (unsigned long long)((double)(n + 64) * 1e9 / rate);
            struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            continue;
        }
        for (int i = 0; i < 64 && n < due; i++, n++)
            acc += work((long)n);
    }
    sink = acc;
    *calls = n;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: rategen THREADS CALLS_PER_SEC SECONDS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    rate = atof(argv[2]);
    seconds = atof(argv[3]);
    if (threads < 1 || threads > 64 || !(rate > 0) || !(seconds > 0)) {
        fprintf(stderr, "rategen: bad arguments\n");
        return 2;
    }
    pthread_t th[64];
    unsigned long calls[64] = {0};
    for (int k = 0; k < threads; k++)
        pthread_create(&th[k], NULL, run, &calls[k]);
    unsigned long total = 0;
    for (int k = 0; k < threads; k++) {
        pthread_join(th[k], NULL);
        total += calls[k];
    }
    printf("calls=%lu\n", total);
    return 0;
}
