/* Functions that take and return AVX vectors (ymm registers), each first
 * called on a fresh thread, built as distributions build plus -mavx2. A
 * thread's first traced call runs the tracer's per-thread set-up, which calls
 * into libc (whose string functions may clear the upper halves of the ymm
 * registers); the vector arguments must still arrive whole. Prints one
 * deterministic line per thread, or says the CPU has no AVX2. */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>

#define THREADS 8
#define ROUNDS 5

__attribute__((noinline)) __m256d vec_mix(__m256d a, __m256d b, __m256d c)
{
    return _mm256_add_pd(_mm256_mul_pd(a, b), c);
}

__attribute__((noinline)) double vec_sum(__m256d v)
{
    double lanes[4];
    _mm256_storeu_pd(lanes, v);
    return lanes[0] + 10 * lanes[1] + 100 * lanes[2] + 1000 * lanes[3];
}

static double results[THREADS];

static void *worker(void *arg)
{
    long k = (long)arg;
    double total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        __m256d a = _mm256_set_pd(k + 4.5, k + 3.5, k + 2.5, k + 1.5);
        __m256d b = _mm256_set_pd(r + 0.25, r + 0.5, r + 0.75, r + 1.0);
        __m256d c = _mm256_set_pd(7, 5, 3, 1);
        total += vec_sum(vec_mix(a, b, c));
    }
    results[k] = total;
    return NULL;
}

int main(void)
{
    unsigned a, b, c, d; /* cpuid inline: libgcc's feature probe would be traced too */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX2)) {
        puts("no avx2");
        return 0;
    }
    for (long k = 0; k < THREADS; k++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, (void *)k);
        pthread_join(t, NULL);
    }
    for (int k = 0; k < THREADS; k++)
        printf("thread %d: %.4f\n", k, results[k]);
    return 0;
}
