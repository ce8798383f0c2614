// common.h - shared by workloads a-c: error checks, the SM-id census, a file barrier, JSON output.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CK(x)                                                                                \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      printf("{\"error\":\"%s\",\"at\":\"%s:%d\"}\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)
#define CKD(x)                                                                               \
  do {                                                                                       \
    CUresult r_ = (x);                                                                       \
    if (r_ != CUDA_SUCCESS) {                                                                \
      printf("{\"error\":\"driver %d\",\"at\":\"%s:%d\"}\n", (int)r_, __FILE__, __LINE__);   \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

static double now_s() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double env_d(const char* k, double d) {
  const char* v = getenv(k);
  return v && *v ? atof(v) : d;
}

// Every block notes the SM it ran on; blocks spin long enough that all allowed SMs get work.
__global__ void smid_census(unsigned* flags, int iters) {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  if (threadIdx.x == 0 && id < 1024) flags[id] = 1;
  float a = 1.f;
  for (int i = 0; i < iters; i++) a = a * 1.0000001f + 1e-7f;
  if (a == 0.f) flags[0] = 2;
}

static int count_sms(bool graph = false) {
  unsigned *flags, h[1024];
  CK(cudaMalloc(&flags, sizeof h));
  CK(cudaMemset(flags, 0, sizeof h));
  if (!graph) {
    smid_census<<<8192, 128>>>(flags, 20000);
  } else {  // through a CUDA graph: launches that bypass per-launch interception still stay capped
    cudaStream_t s;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamCreate(&s));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    smid_census<<<8192, 128, 0, s>>>(flags, 20000);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(h, flags, sizeof h, cudaMemcpyDeviceToHost));
  CK(cudaFree(flags));
  int n = 0;
  for (int i = 0; i < 1024; i++) n += h[i] ? 1 : 0;
  return n;
}

static int attr_sms() {
  int dev = 0, v = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
  return v;
}

// File barrier: each process drops <dir>/<pid> and waits until VAI_BARRIER_N files exist, so the
// timed windows of concurrent processes overlap.
static void barrier() {
  const char* dir = getenv("VAI_BARRIER_DIR");
  int n = (int)env_d("VAI_BARRIER_N", 0);
  if (!dir || n <= 1) return;
  char p[512];
  snprintf(p, sizeof p, "%s/%d", dir, (int)getpid());
  FILE* f = fopen(p, "w");
  if (f) fclose(f);
  double t0 = now_s();
  for (;;) {
    int c = 0;
    DIR* d = opendir(dir);
    if (d) {
      for (dirent* e; (e = readdir(d));) c += e->d_name[0] != '.';
      closedir(d);
    }
    if (c >= n || now_s() - t0 > 120) break;
    usleep(200);
  }
}

// Context modes (VAI_WL_CTX), set up before the runtime starts; the runtime adopts the context
// current on the thread (no cudaSetDevice: it would switch to the primary context).
//   explicit   cuCtxCreate through the driver API (VAI_WL_AFFINITY=N adds an SM-count affinity),
//              so the shim's cuCtxCreate hook is what caps the work;
//   green:N    a green context of N SMs made here, without the shim (a reference for overheads).
static const char* setup_context() {
  static char label[64];
  const char* m = getenv("VAI_WL_CTX");
  if (!m || !*m || strcmp(m, "primary") == 0) return "primary";
  CKD(cuInit(0));
  CUdevice d;
  CKD(cuDeviceGet(&d, 0));
  CUcontext c;
  if (strcmp(m, "explicit") == 0) {
    int aff = (int)env_d("VAI_WL_AFFINITY", 0);
    CUexecAffinityParam p;
    p.type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
    p.param.smCount.val = (unsigned)aff;
    CUctxCreateParams cp;
    memset(&cp, 0, sizeof cp);
    cp.execAffinityParams = &p;
    cp.numExecAffinityParams = 1;
    CKD(cuCtxCreate(&c, aff > 0 ? &cp : (CUctxCreateParams*)NULL, 0, d));
    CUexecAffinityParam got;
    memset(&got, 0, sizeof got);
    CUresult gr = cuCtxGetExecAffinity(&got, CU_EXEC_AFFINITY_TYPE_SM_COUNT);
    snprintf(label, sizeof label, "explicit:%d:driver=%d", aff,
             gr == CUDA_SUCCESS ? (int)got.param.smCount.val : -(int)gr);
    return label;
  }
  if (strncmp(m, "green:", 6) == 0) {
    unsigned want = (unsigned)atoi(m + 6), n = 1;
    CUdevResource res, split, rest;
    CKD(cuDeviceGetDevResource(d, &res, CU_DEV_RESOURCE_TYPE_SM));
    CKD(cuDevSmResourceSplitByCount(&split, &n, &res, &rest, 0, want));
    CUdevResourceDesc desc;
    CKD(cuDevResourceGenerateDesc(&desc, &split, 1));
    CUgreenCtx g;
    CKD(cuGreenCtxCreate(&g, desc, d, CU_GREEN_CTX_DEFAULT_STREAM));
    CKD(cuCtxFromGreenCtx(&c, g));
    CKD(cuCtxSetCurrent(c));
    snprintf(label, sizeof label, "green:%u", split.sm.smCount);
    return label;
  }
  printf("{\"error\":\"bad VAI_WL_CTX=%s\"}\n", m);
  exit(1);
}

static const char* env_s(const char* k) {
  const char* v = getenv(k);
  return v ? v : "";
}
