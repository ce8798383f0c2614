/* fake_blas.c - stand-ins for the libraries that ask for the SM count, built several ways
 * (Makefile): as libcublasLt.so.13 (found by its name), as a bundle that links "cuBLAS"
 * statically (found by the marker string cuBLAS carries: the name of its logging variable,
 * -DSTATIC_BLAS), as a library that re-exports cuBLAS symbols (-DEXPORTS_BLAS), and as a plain
 * library (the share). Each asks through the function pointer it is given, from its own code. */
#include <stdlib.h>

#include "vai_cuda.h"

typedef CUresult (*attr_fn)(int *, CUdevice_attribute, CUdevice);

#ifdef STATIC_BLAS
/* What a statically linked cuBLASLt keeps in its read-only data. */
const char *fake_blas_log_env(void) { return getenv("CUBLASLT_LOG_LEVEL"); }
#endif
#ifdef EXPORTS_BLAS
int cublasCreate_v2(void **h) { return h ? 0 : 1; }
#endif

__attribute__((noinline)) int fake_blas_sms(attr_fn f) {
  volatile int v = -1;
  int x = -1;
  if (f(&x, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) != CUDA_SUCCESS) return -2;
  v = x; /* work after the call: no tail call, the return address stays in this library */
  return v;
}
