// vmm_loop.cu - the VMM pattern CUDA documents for allocators: cuMemCreate, cuMemAddressReserve,
// cuMemMap, cuMemSetAccess, then cuMemRelease while the mapping lives. Loops in CHUNK_MIB steps
// until the driver (or the shim's quota) refuses, up to MAX_GIB. Prints one JSON line.
#include <cuda.h>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

int main() {
  size_t chunk = (size_t)(getenv("CHUNK_MIB") ? atoi(getenv("CHUNK_MIB")) : 256) << 20;
  size_t max = (size_t)(getenv("MAX_GIB") ? atoi(getenv("MAX_GIB")) : 16) << 30;
  if (cuInit(0) != CUDA_SUCCESS) { printf("{\"error\":\"cuInit\"}\n"); return 1; }
  CUdevice d; CUcontext c;
  cuDeviceGet(&d, 0);
  cuDevicePrimaryCtxRetain(&c, d);
  cuCtxSetCurrent(c);
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = d;
  size_t gran = 0;
  cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  chunk = (chunk + gran - 1) / gran * gran;
  size_t mapped = 0;
  CUresult last = CUDA_SUCCESS;
  const char *where = "max";
  while (mapped + chunk <= max) {
    CUmemGenericAllocationHandle h;
    if ((last = cuMemCreate(&h, chunk, &prop, 0)) != CUDA_SUCCESS) { where = "cuMemCreate"; break; }
    CUdeviceptr va;
    if ((last = cuMemAddressReserve(&va, chunk, 0, 0, 0)) != CUDA_SUCCESS) { where = "reserve"; break; }
    if ((last = cuMemMap(va, chunk, 0, h, 0)) != CUDA_SUCCESS) { where = "cuMemMap"; break; }
    CUmemAccessDesc acc = {};
    acc.location = prop.location;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if ((last = cuMemSetAccess(va, chunk, &acc, 1)) != CUDA_SUCCESS) { where = "access"; break; }
    if ((last = cuMemRelease(h)) != CUDA_SUCCESS) { where = "cuMemRelease"; break; }  // mapping lives on
    if ((last = cuMemsetD8(va, 1, chunk)) != CUDA_SUCCESS) { where = "memset"; break; }  // really backed
    mapped += chunk;
  }
  cuCtxSynchronize();
  size_t fr = 0, tot = 0;
  cuMemGetInfo(&fr, &tot);
  printf("{\"pid\":%d,\"chunk\":%zu,\"mapped\":%zu,\"stopped_at\":\"%s\",\"last_error\":%d,"
         "\"meminfo_free\":%zu,\"meminfo_total\":%zu}\n",
         (int)getpid(), chunk, mapped, where, (int)last, fr, tot);
  return 0;
}
