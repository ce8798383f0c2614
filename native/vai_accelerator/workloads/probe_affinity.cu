// probe_affinity.cu - under MPS, does a driver query made before cuCtxCreate (as the shim makes
// at cuInit) change whether the new context's SM-count affinity is applied?
// usage: probe_affinity QUERY AFFINITY   QUERY: none|attr_mps|attr_sms|devres|uuid|all
#include "common.h"

int main(int argc, char** argv) {
  const char* q = argc > 1 ? argv[1] : "none";
  unsigned aff = argc > 2 ? (unsigned)atoi(argv[2]) : 34;
  CKD(cuInit(0));
  CUdevice d;
  CKD(cuDeviceGet(&d, 0));
  int v = 0;
  bool all = !strcmp(q, "all");
  if (all || !strcmp(q, "attr_mps")) CKD(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MPS_ENABLED, d));
  if (all || !strcmp(q, "attr_sms")) CKD(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d));
  if (all || !strcmp(q, "devres")) {
    CUdevResource r;
    CKD(cuDeviceGetDevResource(d, &r, CU_DEV_RESOURCE_TYPE_SM));
  }
  if (all || !strcmp(q, "uuid")) {
    CUuuid u;
    CKD(cuDeviceGetUuid(&u, d));
  }
  CUexecAffinityParam p;
  p.type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
  p.param.smCount.val = aff;
  CUctxCreateParams cp;
  memset(&cp, 0, sizeof cp);
  cp.execAffinityParams = &p;
  cp.numExecAffinityParams = 1;
  CUcontext c;
  CKD(cuCtxCreate(&c, &cp, 0, d));
  CUexecAffinityParam got;
  memset(&got, 0, sizeof got);
  CUresult gr = cuCtxGetExecAffinity(&got, CU_EXEC_AFFINITY_TYPE_SM_COUNT);
  int seen = count_sms(false);
  printf("{\"workload\":\"probe_affinity\",\"query\":\"%s\",\"affinity\":%u,\"ctx_affinity\":%d,"
         "\"ctx_affinity_rc\":%d,\"sms_seen\":%d,\"mps_pct\":\"%s\"}\n",
         q, aff, (int)got.param.smCount.val, (int)gr, seen, env_s("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
  return 0;
}
