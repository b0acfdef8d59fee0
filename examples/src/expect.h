/* Ground truth for trace tests: every example program counts, per thread, the
 * calls of its traced functions and writes them as JSON to $LANETRACE_EXPECT at
 * exit, so a test compares a trace with what the program really did.
 *
 * Include in exactly one translation unit per program (the registry is static).
 * Everything here is static always_inline and the counters are plain TLS
 * increments: the bookkeeping adds no function of its own to the binary, so a
 * tracer hooking "every function of the module" sees only the program's own
 * functions (plus the crt startup code, which the expectation does not cover).
 *
 * A program declares its traced functions, with the module (file name) that
 * defines each, in an X-macro before including:
 *
 *   #define EXPECT_FUNCS(X) X(main, EXE) X(work, EXE) X(lib_fn, "libx.so")
 *   #include "expect.h"
 *
 * and counts a call with COUNT(work) as the first statement of work().
 */
#ifndef LANETRACE_EXAMPLES_EXPECT_H
#define LANETRACE_EXAMPLES_EXPECT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* Traced functions: noipa keeps them out-of-line and un-cloned (no
 * hot_fn.constprop.0), so every source-level call is one real call of the
 * symbol the test names. */
#define TRACED __attribute__((noipa, used))
#define INLINE static inline __attribute__((always_inline))

#ifndef EXPECT_FUNCS
#error "define EXPECT_FUNCS(X) before including expect.h"
#endif

#define EXPECT_ENUM_(name, module) FN_##name,
enum { EXPECT_FUNCS(EXPECT_ENUM_) FN_COUNT_ };
#define EXPECT_NAME_(name, module) #name,
static const char *const expect_fn_names[] = { EXPECT_FUNCS(EXPECT_NAME_) };
/* EXE: the main executable, named at run time (hot, hot_pfe and hot_pg share
 * one source). */
#define EXE NULL
#define EXPECT_MODULE_(name, module) module,
static const char *const expect_fn_modules[] = { EXPECT_FUNCS(EXPECT_MODULE_) };

struct expect_thread {
    pid_t tid;
    char name[16];
    unsigned long calls[FN_COUNT_];
    struct expect_thread *next;
};

static __thread struct expect_thread *expect_self;
static struct expect_thread *expect_head, **expect_tail = &expect_head;
static pthread_mutex_t expect_lock = PTHREAD_MUTEX_INITIALIZER;
static int expect_argc;
static char **expect_argv;

#define COUNT(fn) (expect_self->calls[FN_##fn]++)
/* Calls counted at the call site, for callees that must stay branch-free. */
#define COUNT_N(fn, n) (expect_self->calls[FN_##fn] += (n))

INLINE unsigned long long expect_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Registers the calling thread; name==NULL keeps the inherited name (main). */
INLINE void expect_thread_begin(const char *name)
{
    struct expect_thread *t = calloc(1, sizeof *t);
    if (!t) {
        perror("calloc");
        abort();
    }
    if (name)
        pthread_setname_np(pthread_self(), name);
    t->tid = gettid();
    /* The kernel's comm is what a tracer reads from /proc/<pid>/task/<tid>. */
    prctl(PR_GET_NAME, t->name, 0, 0, 0);
    pthread_mutex_lock(&expect_lock);
    *expect_tail = t;
    expect_tail = &t->next;
    pthread_mutex_unlock(&expect_lock);
    expect_self = t;
}

INLINE void expect_init(int argc, char **argv)
{
    expect_argc = argc;
    expect_argv = argv;
    expect_thread_begin(NULL);
}

INLINE void expect_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* Writes the expectation; `extra` (may be NULL) adds program-specific keys as
 * a JSON fragment ("\"key\": value, ..."), without braces. Written to a temp
 * file and renamed, so a reader never sees half a file. Returns 0 if
 * LANETRACE_EXPECT is unset or the write succeeded. */
INLINE int expect_write(const char *extra)
{
    const char *path = getenv("LANETRACE_EXPECT");
    if (!path || !*path)
        return 0;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp) {
        fprintf(stderr, "LANETRACE_EXPECT path too long\n");
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    const char *exe_base = strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe;

    pthread_mutex_lock(&expect_lock);
    fprintf(f, "{\"pid\": %d, \"program\": ", (int)getpid());
    expect_json_str(f, program_invocation_short_name);
    fputs(", \"executable\": ", f);
    expect_json_str(f, exe);
    fputs(", \"argv\": [", f);
    for (int i = 0; i < expect_argc; i++) {
        if (i)
            fputs(", ", f);
        expect_json_str(f, expect_argv[i]);
    }
    fputs("],\n \"functions\": {", f);
    for (int i = 0; i < FN_COUNT_; i++) {
        fprintf(f, "%s\"%s\": ", i ? ", " : "", expect_fn_names[i]);
        expect_json_str(f, expect_fn_modules[i] ? expect_fn_modules[i] : exe_base);
    }
    fputs("},\n", f);
    if (extra && *extra)
        fprintf(f, " %s,\n", extra);
    fputs(" \"threads\": [", f);
    int first = 1;
    for (struct expect_thread *t = expect_head; t; t = t->next) {
        fprintf(f, "%s\n  {\"tid\": %d, \"name\": ", first ? "" : ",", (int)t->tid);
        expect_json_str(f, t->name);
        fputs(", \"calls\": {", f);
        int k = 0;
        for (int i = 0; i < FN_COUNT_; i++) {
            if (!t->calls[i])
                continue;
            fprintf(f, "%s\"%s\": %lu", k++ ? ", " : "", expect_fn_names[i], t->calls[i]);
        }
        fputs("}}", f);
        first = 0;
    }
    fputs("\n ]}\n", f);
    pthread_mutex_unlock(&expect_lock);

    if (fflush(f) || fsync(fileno(f)) || fclose(f)) {
        fprintf(stderr, "cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    if (rename(tmp, path)) {
        fprintf(stderr, "cannot rename %s to %s: %s\n", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Strict positive-integer argument parsing shared by the programs' CLIs. */
INLINE long expect_arg_long(const char *s, const char *what, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: %s must be an integer in [%ld, %ld], got '%s'\n",
                program_invocation_short_name, what, lo, hi, s);
        exit(2);
    }
    return v;
}

INLINE double expect_arg_seconds(const char *s, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0) || v > 86400) {
        fprintf(stderr, "%s: %s must be a number of seconds in [0, 86400], got '%s'\n",
                program_invocation_short_name, what, s);
        exit(2);
    }
    return v;
}

#endif
