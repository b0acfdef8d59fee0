/* crasher [main|thread]: two threads (crash-0, crash-1) each run
 *   crash_worker -> crash_compute x 5 -> crash_leaf x 2 (per compute)
 * then the process dies of SIGSEGV in crash_here(), reached through
 * prepare_crash(): on the main thread after both workers joined (mode "main",
 * the default), or on crash-1 after crash-0 joined (mode "thread").
 * The expectation is written inside crash_here, just before the faulting
 * store, and names the crashing thread under "crash". Core dumps are
 * disabled (RLIMIT_CORE 0) so no core file lands in the working directory. */
#define EXPECT_FUNCS(X)             \
    X(main, EXE)              \
    X(crash_worker, EXE)      \
    X(crash_compute, EXE)     \
    X(crash_leaf, EXE)        \
    X(prepare_crash, EXE)     \
    X(crash_here, EXE)
#include "expect.h"

#include <semaphore.h>
#include <sys/resource.h>

#define COMPUTES 5
#define LEAVES 2

struct worker {
    pthread_t thread;
    int index;
    int crashes;
    long result;
};

static sem_t go_crash;

TRACED long crash_leaf(long x)
{
    COUNT(crash_leaf);
    return (x * 7919) % 10007;
}

TRACED long crash_compute(int index, int i)
{
    COUNT(crash_compute);
    long v = index * 100 + i;
    for (int k = 0; k < LEAVES; k++)
        v += crash_leaf(v + k);
    return v;
}

/* p comes in as an argument, so the compiler cannot turn the store into a trap
 * instruction: this is a genuine SIGSEGV at a genuine address (0). */
TRACED void crash_here(volatile int *p)
{
    COUNT(crash_here);
    char extra[128];
    snprintf(extra, sizeof extra,
             "\"crash\": {\"tid\": %d, \"function\": \"crash_here\", \"signal\": 11}", (int)gettid());
    expect_write(extra);
    printf("crasher: crashing in crash_here on tid %d\n", (int)gettid());
    fflush(stdout);
    *p = 42;
}

TRACED void prepare_crash(volatile int *p)
{
    COUNT(prepare_crash);
    crash_here(p);
}

TRACED void *crash_worker(void *arg)
{
    struct worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "crash-%d", w->index);
    expect_thread_begin(name);
    COUNT(crash_worker);
    for (int i = 0; i < COMPUTES; i++)
        w->result += crash_compute(w->index, i);
    if (w->crashes) {
        while (sem_wait(&go_crash))
            ;
        prepare_crash(NULL);
    }
    return NULL;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    int on_thread = 0;
    if (argc > 2 || (argc == 2 && strcmp(argv[1], "main") && !(on_thread = !strcmp(argv[1], "thread")))) {
        fprintf(stderr, "usage: crasher [main|thread]\n");
        return 2;
    }
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    sem_init(&go_crash, 0, 0);
    static struct worker workers[2];
    for (int k = 0; k < 2; k++) {
        workers[k].index = k;
        workers[k].crashes = on_thread && k == 1;
        int err = pthread_create(&workers[k].thread, NULL, crash_worker, &workers[k]);
        if (err) {
            fprintf(stderr, "crasher: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    /* crash-1 crashes only after crash-0 is done, so every count is final
     * when crash_here writes the expectation. */
    pthread_join(workers[0].thread, NULL);
    if (on_thread)
        sem_post(&go_crash);
    pthread_join(workers[1].thread, NULL);
    prepare_crash(NULL);
    return 1; /* not reached */
}
