/* test_static_blas.c - a program with "cuBLAS" linked in statically (its read-only data holds the
 * logging variable cuBLASLt reads) asking for the SM count the way the CUDA runtime does
 * (dlopen libcuda, cuGetProcAddress). Prints the count it was told. The whole program is
 * classified as cuBLAS: told the device's count (RESULTS.md, the SM count answer, limit). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "vai_cuda.h"

typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

int main(void) {
  const char *lvl = getenv("CUBLASLT_LOG_LEVEL"); /* what a static cuBLASLt carries */
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  gpa2_t gpa = lib ? (gpa2_t)dlsym(lib, "cuGetProcAddress_v2") : NULL;
  CUresult (*init)(unsigned) = NULL;
  CUresult (*attr)(int *, CUdevice_attribute, CUdevice) = NULL;
  if (!gpa || gpa("cuInit", (void **)&init, 13000, 0, NULL) ||
      gpa("cuDeviceGetAttribute", (void **)&attr, 13000, 0, NULL) || init(0))
    return 2;
  volatile int sms = -1;
  int v = -1;
  if (attr(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0)) return 3;
  sms = v;
  printf("told %d%s\n", sms, lvl ? " (log level set)" : "");
  return 0;
}
