/* Calls the hand-written shapes of distro_shapes.S a known number of times
 * and prints one deterministic line. */
#include <stdio.h>
#include <stdlib.h>

long loop_to_entry(long n, long acc);
void ret_only(void);
long jmp_only(long x);
long tail_first(long x);
long tail_shared(long x);
long enter_by_jump(long x);

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 40;
    long total = 0;
    for (int r = 0; r < rounds; r++) {
        total += loop_to_entry(r % 9 + 1, r);
        ret_only();
        total += jmp_only(r);
        total += tail_first(r);
        total += tail_shared(r * 5);
        total += enter_by_jump(r);
    }
    printf("distro_shapes rounds=%d total=%ld\n", rounds, total);
    return 0;
}
