/* add: calls int add(int a, int b) with known values, for tests of argument
 * and return registers (System V: a in edi, b in esi, result in eax). Prints
 * "add(A, B) = R" per call; the expectation lists the calls in order under
 * "add_calls". */
#define EXPECT_FUNCS(X) \
    X(main, EXE)      \
    X(add, EXE)
#include "expect.h"

static const int inputs[][2] = {
    {1, 2}, {-5, 7}, {40, 2}, {100000, -1}, {0, 0}, {2147483000, 647}, {-1000, -24},
};
#define NCALLS (int)(sizeof inputs / sizeof inputs[0])

TRACED int add(int a, int b)
{
    COUNT(add);
    return a + b;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc != 1) {
        fprintf(stderr, "usage: add\n");
        return 2;
    }
    char extra[1024];
    int off = snprintf(extra, sizeof extra, "\"add_calls\": [");
    for (int i = 0; i < NCALLS; i++) {
        int r = add(inputs[i][0], inputs[i][1]);
        printf("add(%d, %d) = %d\n", inputs[i][0], inputs[i][1], r);
        off += snprintf(extra + off, sizeof extra - (size_t)off, "%s{\"a\": %d, \"b\": %d, \"ret\": %d}",
                        i ? ", " : "", inputs[i][0], inputs[i][1], r);
    }
    snprintf(extra + off, sizeof extra - (size_t)off, "]");
    return expect_write(extra) ? 1 : 0;
}
