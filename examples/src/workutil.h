/* libworkutil.so: linked by `workers` at build time (DT_NEEDED, rpath $ORIGIN).
 * Each library function counts its own calls in a TLS counter, so the
 * expectation is exact even for calls that come from the dlopen'ed plugin. */
#ifndef LANETRACE_EXAMPLES_WORKUTIL_H
#define LANETRACE_EXAMPLES_WORKUTIL_H

extern __thread unsigned long workutil_lib_scale_calls;
long lib_scale(long value, int factor);

#endif
