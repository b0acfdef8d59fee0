/* Traced test program for the agent: known call counts per function and
 * thread, recursion, float/vector/x87 arguments and returns, longjmp out of
 * hooked frames, a tiny function, and (optionally) a dlopen'd library and
 * many short-lived threads.
 *
 *   target WAIT_FD THREADS CALLS [churn TOTAL ALIVE] [dlopen PATH] [spin]
 *          [add N] [phases FD]
 * add N: main calls add(i, 1000 + i) for i in 0..N-1 (detail-lane checks).
 * phases FD: after everything else, for every byte read from FD main runs
 * CALLS work() calls and prints "phase done"; EOF ends it.
 * It first reads one byte from WAIT_FD when WAIT_FD >= 0 (an attach test
 * hooks first, then lets it go), prints "result ..." lines the test checks,
 * and exits 0 only if every float/vector result is bit-exact. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <immintrin.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

volatile long sink;
static int failures;

NOINLINE long leaf(long x) { sink += x; return x * 3 + 1; }
NOINLINE long work(long x) { long s = 0; for (int i = 0; i < 3; i++) s += leaf(x + i); return s; }
NOINLINE long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

/* 8 doubles in xmm0-7 + 2 on the stack, mixed with ints */
NOINLINE double fmix(double a, float b, int c, double d, double e, double f, double g,
                     double h, double i, long j, double k, double l)
{
    return a * 1.5 + b * 2.25 - c + d / 3.0 + e * e - f + g * 0.5 + h - i * 4.0 + j + k * 0.125 - l;
}
NOINLINE float fret(float a) { return a * 0.5f + 0.25f; }
NOINLINE long double ldret(long double a) { return a * 3.0L + 0.5L; }
__attribute__((target("avx"))) NOINLINE __m256d vadd(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
typedef struct { long a, b, c, d; } big;
NOINLINE big bigret(long x) { big r = {x, x + 1, x + 2, x + 3}; return r; }
NOINLINE int tiny(void) { return 7; }
NOINLINE int add(int a, int b) { sink += a; sink ^= b; return a + b; }
/* a sibling call between two hooked functions (compiled as jmp) */
NOINLINE long tail_target(long x) { sink += x; return x * 7; }
__attribute__((optimize("optimize-sibling-calls"))) NOINLINE long tail_caller(long x)
{
    sink += x * 3;
    sink ^= x;
    return tail_target(x + 1);
}

static jmp_buf jb;
NOINLINE void thrower(int depth) { if (depth == 0) longjmp(jb, 1); thrower(depth - 1); }
NOINLINE int catcher(void)
{
    if (setjmp(jb) == 0) {
        thrower(2);
        return 0;
    }
    return leaf(5) > 0; /* a hooked call after the longjmp, from the setjmp frame */
}

static jmp_buf jb2;
NOINLINE void thrower2(void) { longjmp(jb2, 1); }
NOINLINE void inner2(void) { thrower2(); }

NOINLINE long deep(int n) { return n == 0 ? 0 : 1 + deep(n - 1) + (sink & 0); }

/* A hooked frame that stays live while the test detaches: blocks on a read. */
NOINLINE int holder(int fd)
{
    char c;
    return (int)read(fd, &c, 1);
}

/* signal handlers on an alternate stack, one of them siglongjmp'ing out */
static sigjmp_buf sjb;
NOINLINE void on_sig(int sig) { leaf(sig); }
NOINLINE void on_sig_jump(int sig) { siglongjmp(sjb, 1); }
NOINLINE void raiser(int sig) { raise(sig); sink++; }

static void run_signals(void)
{
    stack_t ss = {.ss_sp = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  .ss_size = 1 << 16};
    sigaltstack(&ss, NULL);
    struct sigaction a = {.sa_handler = on_sig, .sa_flags = SA_ONSTACK};
    sigaction(SIGUSR1, &a, NULL);
    a.sa_handler = on_sig_jump;
    sigaction(SIGUSR2, &a, NULL);
    raiser(SIGUSR1);
    if (!sigsetjmp(sjb, 1))
        raiser(SIGUSR2);
    leaf(2);
    printf("result signals ok\n");
}

/* a forked child runs hooked code: it must not write into our lanes */
static void run_fork(void)
{
    pid_t c = fork();
    if (c == 0) {
        for (int i = 0; i < 1000; i++)
            work(i);
        _exit(0);
    }
    int status = 0;
    waitpid(c, &status, 0);
    printf("result fork child %d exit %d\n", (int)c, WEXITSTATUS(status));
    work(1);
}

static long calls_per_thread;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open = 1;
NOINLINE void *worker_main(void *arg)
{
    pthread_mutex_lock(&gate_mu); /* prestart: threads exist before the attach */
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    for (long i = 0; i < calls_per_thread; i++)
        work(i);
    return NULL;
}

NOINLINE void *short_thread(void *arg) { leaf((long)arg); return NULL; }

static void check_floats(void)
{
    double r = fmix(1.0, 2.0f, 3, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10, 11.0, 12.0);
    double want = 1.0 * 1.5 + 2.0f * 2.25 - 3 + 4.0 / 3.0 + 5.0 * 5.0 - 6.0 + 7.0 * 0.5 + 8.0 - 9.0 * 4.0 + 10 + 11.0 * 0.125 - 12.0;
    if (r != want) { printf("fmix mismatch %.17g != %.17g\n", r, want); failures++; }
    if (fret(3.0f) != 1.75f) { printf("fret mismatch\n"); failures++; }
    if (ldret(2.0L) != 6.5L) { printf("ldret mismatch\n"); failures++; }
    big b = bigret(10);
    if (b.a != 10 || b.d != 13) { printf("bigret mismatch\n"); failures++; }
    if (tiny() != 7) { printf("tiny mismatch\n"); failures++; }
}

__attribute__((target("avx"))) static void check_avx(void)
{
    if (!__builtin_cpu_supports("avx"))
        return;
    __m256d a = _mm256_set_pd(1.0, 2.0, 3.0, 4.0), b = _mm256_set_pd(10.0, 20.0, 30.0, 40.0);
    double out[4];
    _mm256_storeu_pd(out, vadd(a, b));
    if (out[0] != 44.0 || out[1] != 33.0 || out[2] != 22.0 || out[3] != 11.0) {
        printf("vadd mismatch %g %g %g %g\n", out[0], out[1], out[2], out[3]);
        failures++;
    }
}

int main(int argc, char **argv)
{
    int wait_fd = atoi(argv[1]);
    int threads = atoi(argv[2]);
    calls_per_thread = atol(argv[3]);
    int churn_total = 0, churn_alive = 0, spin = 0, deep_n = 0, hold_fd = -1, prestart = 0, signals = 0, do_fork = 0;
    int add_n = 0, phases_fd = -1;
    const char *dl = NULL;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "churn")) { churn_total = atoi(argv[i + 1]); churn_alive = atoi(argv[i + 2]); i += 2; }
        else if (!strcmp(argv[i], "dlopen")) dl = argv[++i];
        else if (!strcmp(argv[i], "spin")) spin = 1;
        else if (!strcmp(argv[i], "prestart")) prestart = 1;
        else if (!strcmp(argv[i], "signals")) signals = 1;
        else if (!strcmp(argv[i], "fork")) do_fork = 1;
        else if (!strcmp(argv[i], "deep")) deep_n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "hold")) hold_fd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "add")) add_n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "phases")) phases_fd = atoi(argv[++i]);
    }
    pthread_t th[64];
    if (prestart) {
        gate_open = 0;
        for (int i = 0; i < threads; i++)
            pthread_create(&th[i], NULL, worker_main, NULL);
        printf("started\n");
        fflush(stdout);
    }
    if (wait_fd >= 0) {
        char c;
        if (read(wait_fd, &c, 1) != 1) return 3;
    }
    if (prestart) {
        pthread_mutex_lock(&gate_mu);
        gate_open = 1;
        pthread_cond_broadcast(&gate_cv);
        pthread_mutex_unlock(&gate_mu);
    }
    printf("main_tid %ld\n", (long)syscall(SYS_gettid));
    check_floats();
    check_avx();
    if (signals)
        run_signals();
    if (do_fork)
        run_fork();
    if (deep_n)
        printf("result deep %ld\n", deep(deep_n));
    if (hold_fd >= 0) {
        printf("holding\n");
        fflush(stdout);
        if (holder(hold_fd) != 1) return 5;
        printf("result after-detach fib %ld\n", fib(12));
    }
    printf("result fib %ld\n", fib(10));
    long tsum = 0;
    for (int i = 0; i < 3; i++)
        tsum += tail_caller(i);
    printf("result tail %ld\n", tsum);
    printf("result catcher %d\n", catcher());
    if (setjmp(jb2) == 0)
        inner2();
    leaf(1); /* first hooked call after longjmp out of inner2/thrower2 */
    for (int i = 0; i < threads && !prestart; i++)
        pthread_create(&th[i], NULL, worker_main, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < churn_total; i += churn_alive) {
        int n = churn_total - i < churn_alive ? churn_total - i : churn_alive;
        for (int k = 0; k < n; k++)
            pthread_create(&th[k], NULL, short_thread, (void *)(long)(i + k));
        for (int k = 0; k < n; k++)
            pthread_join(th[k], NULL);
    }
    if (dl) {
        void *h = dlopen(dl, RTLD_NOW);
        if (!h) { printf("dlopen failed: %s\n", dlerror()); return 4; }
        long (*plug)(long) = (long (*)(long))dlsym(h, "plugin_call");
        long s = 0;
        for (int i = 0; i < 10; i++) s += plug(i);
        printf("result plugin %ld\n", s);
    }
    if (add_n) {
        long s = 0;
        for (int i = 0; i < add_n; i++)
            s += add(i, 1000 + i);
        printf("result add %ld\n", s);
    }
    if (phases_fd >= 0) {
        char c;
        printf("phases ready\n");
        fflush(stdout);
        while (read(phases_fd, &c, 1) == 1) {
            for (long i = 0; i < calls_per_thread; i++)
                work(i);
            printf("phase done\n");
            fflush(stdout);
        }
    }
    (void)spin;
    printf("failures %d\n", failures);
    fflush(stdout);
    return failures ? 1 : 0;
}
