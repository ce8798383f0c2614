/* next_a.c / next_b.c: dlsym(RTLD_NEXT) must search after the *caller* even with the shim's
 * dlsym interposed. next_a's lookup must find next_b's definition, not next_a's own.
 * (No tail call here: glibc takes the caller from the return address.) */
#define _GNU_SOURCE
#include <dlfcn.h>
int next_probe(void) { return 1; }
void *next_a_lookup(void) {
  void *volatile p = dlsym(RTLD_NEXT, "next_probe");
  return p;
}
