/* vai_cuda.h - the few CUDA driver API declarations the shim uses, vendored.
 *
 * Why vendored: the shim must build on a fresh CI machine (Debian, package registries only) where
 * /usr/local/cuda/include is absent, and it never links libcuda (it dlopens libcuda.so.1). Every
 * value and layout here is copied from CUDA 13.0's cuda.h; `make check-header` compiles a probe
 * against the real header (when present) and against this one and compares enum values, struct
 * sizes and field offsets, so a drift is caught wherever the real header exists.
 *
 * Only types are declared (no prototypes): the shim defines the exported hooks itself and reaches
 * the real driver through function pointers.
 */
#ifndef VAI_CUDA_H
#define VAI_CUDA_H

#include <stddef.h>
#include <stdint.h>

#define VAI_CUDA_HEADER_VERSION 13000

typedef int CUresult;
enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_NO_DEVICE = 100,
  CUDA_ERROR_INVALID_DEVICE = 101,
  CUDA_ERROR_INVALID_CONTEXT = 201,
  CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY = 224,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_NOT_READY = 600,
  CUDA_ERROR_NOT_PERMITTED = 800,
  CUDA_ERROR_NOT_SUPPORTED = 801,
};

typedef uint64_t cuuint64_t;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUgreenCtx_st *CUgreenCtx;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUdevResourceDesc_st *CUdevResourceDesc;
typedef struct CUmemAllocationProp_st CUmemAllocationProp; /* opaque: passed through */

typedef struct CUuuid_st {
  char bytes[16];
} CUuuid;

typedef int CUdevice_attribute;
enum {
  CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
  CU_DEVICE_ATTRIBUTE_MPS_ENABLED = 133,
};

/* Events (cuEventCreate flags) and memory-pool attributes (cuMemPoolGetAttribute). */
enum { CU_EVENT_DISABLE_TIMING = 0x2 };
enum {
  CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4,
  CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT = 5,
  CU_MEMPOOL_ATTR_USED_MEM_CURRENT = 7,
};
enum { CU_STREAM_CAPTURE_STATUS_NONE = 0 };

/* cuGetProcAddress flags and results. */
enum {
  CU_GET_PROC_ADDRESS_DEFAULT = 0,
  CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1 << 0,
  CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 1 << 1,
};
typedef int CUdriverProcAddressQueryResult;
enum {
  CU_GET_PROC_ADDRESS_SUCCESS = 0,
  CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
  CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2,
};

/* Execution affinity (cuCtxCreate_v3 / _v4). */
typedef int CUexecAffinityType;
enum { CU_EXEC_AFFINITY_TYPE_SM_COUNT = 0 };
typedef struct CUexecAffinitySmCount_st {
  unsigned int val;
} CUexecAffinitySmCount;
typedef struct CUexecAffinityParam_st {
  CUexecAffinityType type;
  union {
    CUexecAffinitySmCount smCount;
  } param;
} CUexecAffinityParam;

typedef int CUcigDataType;
typedef struct CUctxCigParam_st {
  CUcigDataType sharedDataType;
  void *sharedData;
} CUctxCigParam;
typedef struct CUctxCreateParams_st {
  CUexecAffinityParam *execAffinityParams;
  int numExecAffinityParams;
  CUctxCigParam *cigParams;
} CUctxCreateParams;

/* Green contexts (CUDA 12.4+; minSmPartitionSize/smCoscheduledAlignment filled from 13.0). */
typedef int CUdevResourceType;
enum { CU_DEV_RESOURCE_TYPE_INVALID = 0, CU_DEV_RESOURCE_TYPE_SM = 1 };
enum { CU_GREEN_CTX_DEFAULT_STREAM = 0x1 };
typedef struct CUdevSmResource_st {
  unsigned int smCount;
  unsigned int minSmPartitionSize;
  unsigned int smCoscheduledAlignment;
} CUdevSmResource;
typedef struct CUdevResource_st {
  CUdevResourceType type;
  unsigned char _internal_padding[92];
  union {
    CUdevSmResource sm;
    unsigned char _oversize[48];
  };
} CUdevResource;

#endif /* VAI_CUDA_H */
