/* bench_async_free.c - N stream-ordered frees pending at once, through the shim, against the
 * fake libcuda.so.1 (bench/shim_async_free.py builds and runs it).
 *
 * usage: bench_async_free window|behind N STREAMS   (VAI_MEMORY_LIMIT set: the shim keeps a quota)
 * window: round-robin over STREAMS streams, cuMemAllocAsync 64Ki then cuMemFreeAsync it; nothing
 *   runs until all N are pending (each allocation polls the pending frees); then every stream runs
 *   (fakecuda_progress) and one cuMemGetInfo credits all N.
 * behind: the first N/2 pairs on stream 0, which does not run, the other N/2 round-robin on the
 *   other streams, which are synchronised; one cuMemGetInfo then credits those N/2, queued behind
 *   N/2 frees that have not run.
 * After a full synchronisation the quota must be whole again. Prints one JSON line: seconds for
 * the N pairs, for the credit, and in all. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vai_cuda.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench_async_free window|behind N STREAMS\n");
    return 2;
  }
  int behind = !strcmp(argv[1], "behind"), n = atoi(argv[2]), ns = atoi(argv[3]);
  if ((!behind && strcmp(argv[1], "window")) || n < 2 || ns < 2 || ns > 15) {
    fprintf(stderr, "window|behind, N >= 2 and 2 <= STREAMS <= 15\n");
    return 2;
  }
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "cannot dlopen libcuda.so.1: %s\n", dlerror());
    return 2;
  }
  /* dlsym on libcuda: the shim hands out its hooks, as to PyTorch's loaders. */
  CUresult (*init)(unsigned) = dlsym(lib, "cuInit");
  CUresult (*retain)(CUcontext *, CUdevice) = dlsym(lib, "cuDevicePrimaryCtxRetain");
  CUresult (*setcur)(CUcontext) = dlsym(lib, "cuCtxSetCurrent");
  CUresult (*screate)(CUstream *, unsigned) = dlsym(lib, "cuStreamCreate");
  CUresult (*ssync)(CUstream) = dlsym(lib, "cuStreamSynchronize");
  CUresult (*alloc)(CUdeviceptr *, size_t, CUstream) = dlsym(lib, "cuMemAllocAsync");
  CUresult (*freeasync)(CUdeviceptr, CUstream) = dlsym(lib, "cuMemFreeAsync");
  CUresult (*info)(size_t *, size_t *) = dlsym(lib, "cuMemGetInfo_v2");
  void (*progress)(void) = (void (*)(void))dlsym(lib, "fakecuda_progress");
  CUcontext c;
  if (!init || !progress || init(0) || retain(&c, 0) || setcur(c)) {
    fprintf(stderr, "init failed\n");
    return 1;
  }
  CUstream s[15];
  for (int k = 0; k < ns; k++)
    if (screate(&s[k], 0)) return 1;
  size_t fr0 = 0, tot = 0, fr = 0;
  info(&fr0, &tot);
  double t0 = now();
  for (int i = 0; i < n; i++) {
    CUdeviceptr p = 0;
    CUstream st = !behind ? s[i % ns] : i < n / 2 ? s[0] : s[1 + i % (ns - 1)];
    if (alloc(&p, 64 << 10, st) || freeasync(p, st)) {
      fprintf(stderr, "allocation %d failed\n", i);
      return 1;
    }
  }
  double t1 = now();
  info(&fr, &tot);
  int pending_ok = fr0 - fr == (size_t)n << 16; /* none has run: all still charged */
  if (behind)
    for (int k = 1; k < ns; k++) ssync(s[k]);
  else
    progress();
  double t2 = now();
  info(&fr, &tot); /* credits the executed frees */
  double t3 = now();
  if (behind) pending_ok = pending_ok && fr0 - fr == (size_t)(n / 2) << 16;
  for (int k = 0; k < ns; k++) ssync(s[k]);
  info(&fr, &tot);
  int whole = fr == fr0;
  printf("{\"mode\": \"%s\", \"n\": %d, \"streams\": %d, \"pairs_s\": %.6f, \"credit_s\": %.6f, \"total_s\": %.6f, "
         "\"charged_while_pending\": %s, \"quota_whole_after\": %s}\n",
         argv[1], n, ns, t1 - t0, t3 - t2, (t1 - t0) + (t3 - t2), pending_ok ? "true" : "false",
         whole ? "true" : "false");
  return pending_ok && whole ? 0 : 1;
}
