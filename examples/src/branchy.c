/* branchy good|bad: the same program taking a different branch on its input,
 * for trace diffs. Both runs share a prefix and a suffix:
 *   main -> setup -> load_input -> classify -> step x 3 -> ... -> finish
 * and differ in the middle:
 *   good: handle_good -> commit
 *   bad:  handle_bad  -> rollback -> report_error
 * Both exit 0; any other input is a usage error (exit 2). */
#define EXPECT_FUNCS(X)         \
    X(main, EXE)          \
    X(setup, EXE)         \
    X(load_input, EXE)    \
    X(classify, EXE)      \
    X(step, EXE)          \
    X(handle_good, EXE)   \
    X(commit, EXE)        \
    X(handle_bad, EXE)    \
    X(rollback, EXE)      \
    X(report_error, EXE)  \
    X(finish, EXE)
#include "expect.h"

#define STEPS 3

TRACED long setup(void)
{
    COUNT(setup);
    return 17;
}

TRACED long load_input(const char *s, long state)
{
    COUNT(load_input);
    for (; *s; s++)
        state = state * 31 + (unsigned char)*s;
    return state;
}

TRACED int classify(const char *s)
{
    COUNT(classify);
    return strcmp(s, "good") == 0;
}

TRACED long step(long state, int i)
{
    COUNT(step);
    return (state * 131 + i) % 1000003;
}

TRACED long commit(long state)
{
    COUNT(commit);
    return state + 1;
}

TRACED long handle_good(long state)
{
    COUNT(handle_good);
    return commit(state * 2);
}

TRACED long report_error(long state)
{
    COUNT(report_error);
    return -state;
}

TRACED long rollback(long state)
{
    COUNT(rollback);
    return state - 1;
}

TRACED long handle_bad(long state)
{
    COUNT(handle_bad);
    return report_error(rollback(state));
}

TRACED long finish(long state)
{
    COUNT(finish);
    return state % 997;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 2 || (strcmp(argv[1], "good") && strcmp(argv[1], "bad"))) {
        fprintf(stderr, "usage: branchy good|bad\n");
        return 2;
    }
    long state = load_input(argv[1], setup());
    int good = classify(argv[1]);
    for (int i = 0; i < STEPS; i++)
        state = step(state, i);
    state = good ? handle_good(state) : handle_bad(state);
    for (int i = 0; i < STEPS; i++)
        state = step(state, STEPS + i);
    printf("branchy: %s -> %s (%ld)\n", argv[1], good ? "committed" : "rolled back", finish(state));
    return expect_write(NULL) ? 1 : 0;
}
