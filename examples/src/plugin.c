/* libplugin.so: loaded by `workers` with dlopen at run time, so a tracer has to
 * notice a module that was not there when it attached. Calls back into
 * libworkutil.so to give the trace a cross-library edge. */
#include "workutil.h"

/* Read by the host through dlsym, which yields the calling thread's copy. */
__attribute__((visibility("default"))) __thread unsigned long plugin_transform_calls;

__attribute__((noipa, visibility("default")))
long plugin_transform(long value)
{
    plugin_transform_calls++;
    if (value & 1)
        value = lib_scale(value, 3);
    return value ^ 0x5a5a;
}
