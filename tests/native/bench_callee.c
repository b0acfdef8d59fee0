/* Per-call cost of the hook path: a tight loop over one hooked function,
 * timed before and after the agent hooks it (see bench_hookcost.py). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
volatile long sink;
__attribute__((noinline)) long callee(long x) { sink += x; return x + 1; }
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc, char **argv) {
  long n = atol(argv[2]); int fd = atoi(argv[1]);
  for (long i = 0; i < 1000; i++) callee(i);
  double t0 = now(); for (long i = 0; i < n; i++) callee(i); double t1 = now();
  printf("base %.2f ns/call\n", (t1-t0)/n); fflush(stdout);
  char c; if (read(fd, &c, 1) != 1) return 3;
  callee(0);
  t0 = now(); for (long i = 0; i < n; i++) callee(i); t1 = now();
  printf("hooked %.2f ns/call\n", (t1-t0)/n);
  return 0;
}
