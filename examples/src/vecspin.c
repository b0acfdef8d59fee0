/* Keeps one known value in all sixteen ymm registers inside an assembly loop
 * and counts the passes in which any of them changed: something that borrows
 * the running thread (an injector's remote calls) and puts back only the
 * general registers shows up here. Prints "ready PID", then on SIGTERM (or
 * after SECONDS, default 600) "passes N changed M" and exits 0; or prints
 * "no avx2". */
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int have_avx2(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 5) & 1;
}

/* One pass: ~20M rounds comparing ymm1..ymm15 with ymm0 (and ymm0 with
 * memory); 1 if any differed. */
static uint64_t pass(const uint64_t *pat)
{
    uint64_t changed;
    __asm__ volatile(
        "vmovdqu (%1), %%ymm0\n"
        "vmovdqa %%ymm0, %%ymm1\n vmovdqa %%ymm0, %%ymm2\n vmovdqa %%ymm0, %%ymm3\n"
        "vmovdqa %%ymm0, %%ymm4\n vmovdqa %%ymm0, %%ymm5\n vmovdqa %%ymm0, %%ymm6\n"
        "vmovdqa %%ymm0, %%ymm7\n vmovdqa %%ymm0, %%ymm8\n vmovdqa %%ymm0, %%ymm9\n"
        "vmovdqa %%ymm0, %%ymm10\n vmovdqa %%ymm0, %%ymm11\n vmovdqa %%ymm0, %%ymm12\n"
        "vmovdqa %%ymm0, %%ymm13\n vmovdqa %%ymm0, %%ymm15\n"
        "xor %0, %0\n"
        "mov $20000000, %%ecx\n"
        "1:\n"
        "vpxor %%ymm0, %%ymm2, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm1, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm3, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm4, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm5, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm6, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm7, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm8, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm9, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm10, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm11, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm12, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm13, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vpxor %%ymm0, %%ymm15, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "vmovdqu (%1), %%ymm14\n vpxor %%ymm0, %%ymm14, %%ymm14\n vptest %%ymm14, %%ymm14\n jnz 2f\n"
        "dec %%ecx\n jnz 1b\n jmp 3f\n"
        "2: mov $1, %0\n"
        "3: vzeroupper\n"
        : "=&r"(changed)
        : "r"(pat)
        : "rcx", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return changed;
}

int main(int argc, char **argv)
{
    if (!have_avx2()) {
        puts("no avx2");
        return 0;
    }
    static const uint64_t pat[4] = {0x0123456789abcdefull, 0xfedcba9876543210ull,
                                    0x1111222233334444ull, 0x5555666677778888ull};
    int seconds = argc > 1 ? atoi(argv[1]) : 600;
    signal(SIGTERM, on_term);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    time_t end = time(NULL) + seconds;
    uint64_t passes = 0, changed = 0;
    while (!stop && time(NULL) < end) {
        changed += pass(pat);
        passes++;
    }
    printf("passes %llu changed %llu\n", (unsigned long long)passes, (unsigned long long)changed);
    return 0;
}
