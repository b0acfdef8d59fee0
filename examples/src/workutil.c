#include "workutil.h"

__thread unsigned long workutil_lib_scale_calls;

__attribute__((noipa, visibility("default")))
long lib_scale(long value, int factor)
{
    workutil_lib_scale_calls++;
    return value * factor + (value >> 3);
}
