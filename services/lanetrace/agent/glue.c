/*
 * glue.c — CModule (TinyCC) listener for functions Interceptor.replaceFast
 * refuses (very short ones). Deliberately trivial: TinyCC has no C11
 * atomics and its static data / rdtsc crashed, so all real work happens in
 * the gcc-built agent library. The function id travels as the listener's
 * function data (third argument of Interceptor.attach).
 */
#include <gum/guminterceptor.h>

extern void lt_cm_enter (guint32 fid, guint64 sp);
extern void lt_cm_leave (guint32 fid);

void
on_enter (GumInvocationContext * ic)
{
  lt_cm_enter ((guint32) GPOINTER_TO_SIZE (
      gum_invocation_context_get_listener_function_data (ic)),
      (guint64) ic->cpu_context->rsp);
}

void
on_leave (GumInvocationContext * ic)
{
  lt_cm_leave ((guint32) GPOINTER_TO_SIZE (
      gum_invocation_context_get_listener_function_data (ic)));
}
