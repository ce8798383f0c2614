/* test_linked.c - a program linked against libcuda.so.1 directly (like workloads built with
 * -lcuda): its cu* calls bind through the global scope, where the preloaded shim comes first.
 * Expects BLESS_LIMIT_PCT=50 (green, 64 SMs on the fake; the program is told its 64)
 * and VAI_MEMORY_LIMIT=1Mi. */
#include <stdio.h>

#include "vai_cuda.h"

CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuDeviceGetAttribute(int *, CUdevice_attribute, CUdevice);
unsigned fakecuda_ctx_sms(CUcontext);

int main(void) {
  int bad = 0;
  CUcontext c = NULL;
  CUdeviceptr p = 0;
  int sms = 0;
  if (cuInit(0) != CUDA_SUCCESS) bad |= 1;
  if (cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS || fakecuda_ctx_sms(c) != 64) bad |= 2;
  if (cuCtxSetCurrent(c) != CUDA_SUCCESS) bad |= 4;
  if (cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) || sms != 64) bad |= 8;
  if (cuMemAlloc_v2(&p, 512 << 10) != CUDA_SUCCESS) bad |= 16;
  if (cuMemAlloc_v2(&p, 768 << 10) != CUDA_ERROR_OUT_OF_MEMORY) bad |= 32;
  printf("linked: %s (code %d, sms %u)\n", bad ? "FAILED" : "passed", bad, fakecuda_ctx_sms(c));
  return bad ? 1 : 0;
}
