/* header_probe.c - prints the values and layouts the shim relies on, compiled once against the
 * real cuda.h (-DUSE_REAL) and once against src/vai_cuda.h; `make check-header` diffs the two. */
#include <stddef.h>
#include <stdio.h>
#ifdef USE_REAL
#include <cuda.h>
#else
#include "vai_cuda.h"
#endif
#define V(x) printf("%s=%lld\n", #x, (long long)(x))
int main(void) {
  V(CUDA_SUCCESS); V(CUDA_ERROR_INVALID_VALUE); V(CUDA_ERROR_OUT_OF_MEMORY);
  V(CUDA_ERROR_NOT_INITIALIZED); V(CUDA_ERROR_NO_DEVICE); V(CUDA_ERROR_INVALID_DEVICE);
  V(CUDA_ERROR_INVALID_CONTEXT); V(CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY); V(CUDA_ERROR_NOT_FOUND);
  V(CUDA_ERROR_NOT_PERMITTED); V(CUDA_ERROR_NOT_SUPPORTED);
  V(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT); V(CU_DEVICE_ATTRIBUTE_MPS_ENABLED);
  V(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR); V(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  V(CUDA_ERROR_NOT_READY); V(CU_EVENT_DISABLE_TIMING); V(CU_MEMPOOL_ATTR_RELEASE_THRESHOLD);
  V(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT); V(CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
  V(CU_STREAM_CAPTURE_STATUS_NONE);
  V(CU_GET_PROC_ADDRESS_DEFAULT); V(CU_GET_PROC_ADDRESS_LEGACY_STREAM);
  V(CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM); V(CU_GET_PROC_ADDRESS_SUCCESS);
  V(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND); V(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  V(CU_EXEC_AFFINITY_TYPE_SM_COUNT); V(CU_DEV_RESOURCE_TYPE_SM); V(CU_GREEN_CTX_DEFAULT_STREAM);
  V(sizeof(CUdevice)); V(sizeof(CUdeviceptr)); V(sizeof(CUmemGenericAllocationHandle));
  V(sizeof(CUresult)); V(sizeof(CUuuid)); V(sizeof(cuuint64_t));
  V(sizeof(CUexecAffinityParam)); V(offsetof(CUexecAffinityParam, param));
  V(sizeof(CUctxCreateParams)); V(offsetof(CUctxCreateParams, numExecAffinityParams));
  V(offsetof(CUctxCreateParams, cigParams)); V(sizeof(CUctxCigParam));
  V(sizeof(CUdevResource)); V(offsetof(CUdevResource, sm));
  V(offsetof(CUdevResource, sm.minSmPartitionSize)); V(offsetof(CUdevResource, sm.smCoscheduledAlignment));
  V(sizeof(CUdevSmResource));
  return 0;
}
