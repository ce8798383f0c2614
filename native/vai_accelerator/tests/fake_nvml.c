/* fake_nvml.c - a fake libnvidia-ml.so.1: the few calls the shim makes to learn the device's SM
 * count inside an MPS client (measured on an H200: NVML still describes the whole GPU there,
 * nvmlDeviceGetNumGpuCores = 16896 = 132 SMs x 128 cores). FAKE_NVML_CORES overrides the count. */
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
static int inited;
static int dev_token;

EXPORT int nvmlInit_v2(void) {
  inited++;
  return 0;
}
EXPORT int nvmlShutdown(void) {
  if (!inited) return 1; /* NVML_ERROR_UNINITIALIZED */
  inited--;
  return 0;
}
EXPORT int nvmlDeviceGetHandleByUUID(const char *uuid, void **dev) {
  if (!inited) return 1;
  /* the fake libcuda.so.1's device 0 */
  if (!uuid || strcmp(uuid, "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf") != 0) return 6; /* NOT_FOUND */
  *dev = &dev_token;
  return 0;
}
EXPORT int nvmlDeviceGetNumGpuCores(void *dev, unsigned *cores) {
  if (!inited || dev != &dev_token) return 2; /* INVALID_ARGUMENT */
  const char *v = getenv("FAKE_NVML_CORES");
  *cores = v && *v ? (unsigned)strtoul(v, NULL, 10) : 16896u;
  return 0;
}
