/* workers N [ITERS]: the bundled demo. A main thread and N worker threads
 * (worker-0 .. worker-N-1) run a small record pipeline with per-thread counts
 * that differ by worker index, so a trace that mixes up threads is caught:
 *
 *   worker_main -> process_record x (ITERS + k)
 *     process_record -> parse_record -> validate -> checksum | reject_record
 *                    -> lib_scale (libworkutil.so, linked)
 *                    -> plugin_transform (libplugin.so, dlopen'ed; calls
 *                       lib_scale again for odd inputs)
 *                    -> fib (recursive) on every 16th record
 */
#define EXPECT_FUNCS(X)                 \
    X(main, EXE)                  \
    X(load_plugin, EXE)           \
    X(worker_main, EXE)           \
    X(process_record, EXE)        \
    X(parse_record, EXE)          \
    X(validate, EXE)              \
    X(checksum, EXE)              \
    X(reject_record, EXE)         \
    X(fib, EXE)                   \
    X(lib_scale, "libworkutil.so")      \
    X(plugin_transform, "libplugin.so")
#include "expect.h"
#include "workutil.h"

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>

#define MAX_WORKERS 256
#define DEFAULT_ITERS 1000

struct record {
    int id;
    int fields[4];
};

struct worker {
    pthread_t thread;
    int index;
    long iters;
    long total;
};

static long (*plugin_fn)(long);
static void *plugin_handle;

TRACED void parse_record(int worker, long i, struct record *r)
{
    COUNT(parse_record);
    r->id = (int)i;
    for (int f = 0; f < 4; f++)
        r->fields[f] = (int)((i * 31 + worker * 7 + f * 13) % 101);
}

TRACED long checksum(const struct record *r)
{
    COUNT(checksum);
    long sum = r->id;
    for (int f = 0; f < 4; f++)
        sum = sum * 33 + r->fields[f];
    return sum & 0xffffff;
}

/* Every 7th record is rejected, so the pipeline has a second branch. */
TRACED int validate(const struct record *r)
{
    COUNT(validate);
    return r->id % 7 != 3;
}

TRACED long reject_record(const struct record *r)
{
    COUNT(reject_record);
    return -(long)r->id;
}

TRACED long fib(int n)
{
    COUNT(fib);
    if (n < 2)
        return n;
    return fib(n - 1) + fib(n - 2);
}

TRACED long process_record(int worker, long i)
{
    COUNT(process_record);
    struct record r;
    parse_record(worker, i, &r);
    long v = validate(&r) ? checksum(&r) : reject_record(&r);
    v = lib_scale(v, worker + 1);
    v = plugin_fn(v);
    if (i % 16 == worker % 16)
        v += fib(6 + (int)((i + worker) % 7));
    return v;
}

/* Library functions count themselves in TLS; fold those counts in. */
INLINE void collect_library_counts(void)
{
    expect_self->calls[FN_lib_scale] = workutil_lib_scale_calls;
    unsigned long *pc = dlsym(plugin_handle, "plugin_transform_calls");
    if (pc)
        expect_self->calls[FN_plugin_transform] = *pc;
}

TRACED void *worker_main(void *arg)
{
    struct worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", w->index);
    expect_thread_begin(name);
    COUNT(worker_main);
    long total = 0;
    for (long i = 0; i < w->iters + w->index; i++)
        total += process_record(w->index, i);
    w->total = total;
    collect_library_counts();
    return NULL;
}

/* The plugin sits next to the executable, wherever the checkout lives. */
TRACED int load_plugin(void)
{
    COUNT(load_plugin);
    char exe[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        perror("readlink /proc/self/exe");
        return -1;
    }
    exe[n] = '\0';
    snprintf(path, sizeof path, "%s/libplugin.so", dirname(exe));
    plugin_handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!plugin_handle) {
        fprintf(stderr, "workers: dlopen: %s\n", dlerror());
        return -1;
    }
    plugin_fn = (long (*)(long))dlsym(plugin_handle, "plugin_transform");
    if (!plugin_fn) {
        fprintf(stderr, "workers: dlsym plugin_transform: %s\n", dlerror());
        return -1;
    }
    return 0;
}

TRACED int main(int argc, char **argv)
{
    expect_init(argc, argv);
    COUNT(main);
    if (argc > 3 || (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
        fprintf(stderr, "usage: workers [N_THREADS=4] [ITERS=%d]\n", DEFAULT_ITERS);
        return 2;
    }
    int n = argc > 1 ? (int)expect_arg_long(argv[1], "N_THREADS", 1, MAX_WORKERS) : 4;
    long iters = argc > 2 ? expect_arg_long(argv[2], "ITERS", 0, 100000000) : DEFAULT_ITERS;
    if (load_plugin())
        return 1;

    /* One call of each library function from the main thread too. */
    long total = plugin_fn(lib_scale(n, 2));
    static struct worker workers[MAX_WORKERS];
    unsigned long long t0 = expect_mono_ns();
    for (int k = 0; k < n; k++) {
        workers[k].index = k;
        workers[k].iters = iters;
        int err = pthread_create(&workers[k].thread, NULL, worker_main, &workers[k]);
        if (err) {
            fprintf(stderr, "workers: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    for (int k = 0; k < n; k++) {
        pthread_join(workers[k].thread, NULL);
        total += workers[k].total;
    }
    unsigned long long loop_ns = expect_mono_ns() - t0;
    collect_library_counts();
    printf("workers: threads=%d iters=%ld total=%ld\n", n, iters, total);
    char extra[48];
    snprintf(extra, sizeof extra, "\"loop_ns\": %llu", loop_ns);
    return expect_write(extra) ? 1 : 0;
}
