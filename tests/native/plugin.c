/* dlopen'd by target.c: plugin_call -> plugin_helper, both traced. */
__attribute__((noinline)) long plugin_helper(long x) { return x * 2; }
__attribute__((noinline)) long plugin_call(long x) { return plugin_helper(x) + 1; }
