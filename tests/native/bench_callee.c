/* Per-call cost of the hook path: a tight loop over one hooked function,
 * timed before and after the agent hooks it (see bench_hookcost.py). Prints
 * wall-clock and thread-CPU ns/call: on a loaded machine the CPU time is the
 * steadier of the two (preemption does not count). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
volatile long sink;
__attribute__((noinline)) long callee(long x) { sink += x; return x + 1; }
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static void loop(const char *label, long n)
{
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < n; i++)
        callee(i);
    double w1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_THREAD_CPUTIME_ID);
    printf("%s %.2f ns/call (cpu %.2f)\n", label, (w1 - w0) / n, (c1 - c0) / n);
    fflush(stdout);
}
int main(int argc, char **argv)
{
    long n = atol(argv[2]);
    int fd = atoi(argv[1]);
    for (long i = 0; i < 1000; i++)
        callee(i);
    loop("base", n);
    char c;
    if (read(fd, &c, 1) != 1)
        return 3;
    callee(0);
    loop("hooked", n);
    return 0;
}
