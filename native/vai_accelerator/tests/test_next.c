/* test_next.c - linked against next_a then next_b; checks RTLD_NEXT semantics under the shim. */
#include <stdio.h>
void *next_a_lookup(void);
int main(void) {
  int (*f)(void) = (int (*)(void))next_a_lookup();
  int v = f ? f() : 0;
  printf("rtld_next: %s (next_probe after next_a -> %d, expected 2)\n", v == 2 ? "passed" : "FAILED", v);
  return v == 2 ? 0 : 1;
}
