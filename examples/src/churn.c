/* churn [TOTAL=2000] [MAX_ALIVE=8]: starts and joins TOTAL short-lived threads
 * (churn-0 .. churn-TOTAL-1), never more than MAX_ALIVE alive at once. Stresses
 * a tracer's thread registry: slots must be claimed and recycled far more
 * often than there are slots. Each thread runs
 *   churn_thread -> churn_step x 3 -> churn_leaf x 2 (per step)
 * and the thread with index i % 5 == 0 also calls churn_extra once. */
#define EXPECT_FUNCS(X)         \
    X(main, EXE)            \
    X(churn_thread, EXE)    \
    X(churn_step, EXE)      \
    X(churn_leaf, EXE)      \
    X(churn_extra, EXE)
#include "expect.h"

#define STEPS 3
#define LEAVES 2

struct slot {
    pthread_t thread;
    long index;
    long result;
};

TRACED long churn_leaf(long x)
{
    COUNT(churn_leaf);
    return x * 2654435761u % 1000003;
}

TRACED long churn_step(long index, int step)
{
    COUNT(churn_step);
    long v = index + step;
    for (int i = 0; i < LEAVES; i++)
        v += churn_leaf(v + i);
    return v;
}

TRACED long churn_extra(long v)
{
    COUNT(churn_extra);
    return v ^ 0x1234;
}

TRACED void *churn_thread(void *arg)
{
    struct slot *s = arg;
    char name[16];
    snprintf(name, sizeof name, "churn-%ld", s->index);
    expect_thread_begin(name);
    COUNT(churn_thread);
    long v = 0;
    for (int i = 0; i < STEPS; i++)
        v += churn_step(s->index, i);
    if (s->index % 5 == 0)
        v = churn_extra(v);
    s->result = v;
    return NULL;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc > 3 || (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fprintf(stderr, "usage: churn [TOTAL=2000] [MAX_ALIVE=8]\n");
        return 2;
    }
    long total = argc > 1 ? expect_arg_long(argv[1], "TOTAL", 0, 10000000) : 2000;
    long max_alive = argc > 2 ? expect_arg_long(argv[2], "MAX_ALIVE", 1, 4096) : 8;
    struct slot *slots = calloc((size_t)max_alive, sizeof *slots);
    if (!slots) {
        perror("calloc");
        return 1;
    }
    /* Sliding window: before starting thread i, join thread i - MAX_ALIVE,
     * which used the same slot. */
    long sum = 0;
    for (long i = 0; i < total + max_alive; i++) {
        struct slot *s = &slots[i % max_alive];
        if (i >= max_alive && i - max_alive < total) {
            pthread_join(s->thread, NULL);
            sum += s->result;
        }
        if (i < total) {
            s->index = i;
            int err = pthread_create(&s->thread, NULL, churn_thread, s);
            if (err) {
                fprintf(stderr, "churn: pthread_create: %s\n", strerror(err));
                return 1;
            }
        }
    }
    printf("churn: threads=%ld max_alive=%ld sum=%ld\n", total, max_alive, sum);
    return expect_write(NULL) ? 1 : 0;
}
