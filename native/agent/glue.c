/*
 * glue.c — CModule (TinyCC) listeners: the Interceptor.attach fallback for
 * functions our own patch cannot relocate. Deliberately trivial: TinyCC has no C11 atomics and its static
 * data / rdtsc crashed, so all real work happens in the gcc-built agent
 * library. The function id travels as the listener's function data (third
 * argument of Interceptor.attach). The argument and return registers are
 * passed on for the detail lane; the agent library ignores them while the
 * lane is off.
 */
#include <gum/guminterceptor.h>

extern void lt_cm_enter (guint32 fid, guint64 sp, guint64 rdi, guint64 rsi,
    guint64 rdx, guint64 rcx, guint64 r8, guint64 r9);
extern void lt_cm_leave (guint32 fid, guint64 slot, guint64 rax, guint64 rdx);

void
on_enter (GumInvocationContext * ic)
{
  GumCpuContext * c = ic->cpu_context;

  lt_cm_enter ((guint32) GPOINTER_TO_SIZE (
      gum_invocation_context_get_listener_function_data (ic)),
      (guint64) c->rsp, c->rdi, c->rsi, c->rdx, c->rcx, c->r8, c->r9);
}

void
on_leave (GumInvocationContext * ic)
{
  GumCpuContext * c = ic->cpu_context;

  /* Frida's leave context keeps the stack pointer of the entry: the slot */
  lt_cm_leave ((guint32) GPOINTER_TO_SIZE (
      gum_invocation_context_get_listener_function_data (ic)),
      (guint64) c->rsp, c->rax, c->rdx);
}
