/* longjmp out of several frames at once, built as distributions build: the
 * frames of dive_outer -> dive_middle -> dive_inner are abandoned, not
 * returned from, every time the inner one bails out. Prints one
 * deterministic line. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

static jmp_buf escape;
static volatile long sink;

__attribute__((noinline)) long dive_inner(long x)
{
    if (x % 3 == 0)
        longjmp(escape, (int)(x % 100) + 1);
    sink += x;
    return x * 2;
}

__attribute__((noinline)) long dive_middle(long x)
{
    long r = dive_inner(x + 1);
    sink ^= r;
    return r + 1;
}

__attribute__((noinline)) long dive_outer(long x)
{
    long r = dive_middle(x * 2);
    sink += r;
    return r + 3;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 60;
    volatile long total = 0, escapes = 0;  /* live across longjmp */
    for (int r = 0; r < rounds; r++) {
        int code = setjmp(escape);
        if (code == 0) {
            total += dive_outer(r);
        } else {
            escapes++;
            total += code;
        }
    }
    printf("distro_longjmp rounds=%d escapes=%ld total=%ld\n", rounds, escapes, total);
    return 0;
}
