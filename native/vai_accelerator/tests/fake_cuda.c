/* fake_cuda.c - a fake libcuda.so.1 for the shim's CPU tests.
 *
 * Emulates the documented / measured behaviour of the driver entry points the shim touches
 * (shared/docs/sm-partitioning.md, RESULTS.md): exec affinity only under MPS (else
 * CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY), affinity rounded up to an even count and, at or above
 * an MPS client's share, escaping it (the whole GPU), an MPS client
 * with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=p seeing floor-to-even(p% of the SMs), green contexts
 * splitting SMs in steps of 8, a per-thread context stack, and cuGetProcAddress resolving a base
 * name + CUDA version + stream flag to an ABI variant (cudaTypedefs.h). It records every call.
 *
 * It does NOT emulate: kernels, streams, real memory, multiple processes, or the exact error
 * codes of every misuse. Environment knobs (read at cuInit):
 *   FAKE_CUDA_SMS (132), FAKE_CUDA_MPS (0/1), FAKE_CUDA_NO_GREEN (0/1),
 *   FAKE_CUDA_MEM_TOTAL (bytes, default 80 GiB), FAKE_CUDA_GPA=internal (cuGetProcAddress hands
 *   out internal addresses that differ from the exported symbols, like some driver builds).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_api.h"
#include "vai_cuda.h"

#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- call log ---- */
static struct {
  const char *name;
  int count;
} calls[128];

static void record(const char *name) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < 128; i++) {
    if (!calls[i].name) calls[i].name = name;
    if (strcmp(calls[i].name, name) == 0) {
      calls[i].count++;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
}

EXPORT int fakecuda_calls(const char *name) {
  int n = 0;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < 128 && calls[i].name; i++)
    if (strcmp(calls[i].name, name) == 0) n = calls[i].count;
  pthread_mutex_unlock(&mu);
  return n;
}

/* ---- device state ---- */
static int inited, n_sms = 132, mps, no_green, gpa_internal, mps_pct_seen = -1;
static unsigned long long mem_total = 80ULL << 30, mem_used, mem_peak;
static unsigned last_affinity;

struct fake_ctx {
  int kind;
  int dev;
  unsigned sms;
  int destroyed;
};
struct CUgreenCtx_st {
  struct fake_ctx ctx;
};
struct CUdevResourceDesc_st {
  unsigned sms;
};

static struct fake_ctx primary = {FAKE_CTX_PRIMARY, 0, 0, 0};
static int primary_refs;
static __thread struct fake_ctx *stack[32];
static __thread int depth;

static unsigned visible_sms(void) {
  /* An MPS client with an active thread percentage sees that share, rounded down to even. */
  if (mps && mps_pct_seen > 0 && mps_pct_seen < 100) {
    unsigned v = (unsigned)(mps_pct_seen * n_sms / 100);
    return v & ~1u;
  }
  return (unsigned)n_sms;
}

static struct fake_ctx *as_ctx(CUcontext c) { return (struct fake_ctx *)c; }
static struct fake_ctx *current(void) { return depth ? stack[depth - 1] : NULL; }

EXPORT unsigned fakecuda_ctx_sms(CUcontext c) { return c ? as_ctx(c)->sms : 0; }
EXPORT int fakecuda_ctx_kind(CUcontext c) { return c ? as_ctx(c)->kind : FAKE_CTX_UNKNOWN; }
EXPORT int fakecuda_mps_pct_seen(void) { return mps_pct_seen; }
EXPORT unsigned fakecuda_last_affinity(void) { return last_affinity; }
EXPORT CUcontext fakecuda_primary(int dev) { return (CUcontext)&primary; }
EXPORT int fakecuda_primary_refs(void) { return primary_refs; }
EXPORT unsigned long long fakecuda_mem_peak(void) { return mem_peak; } /* most the driver held */

static unsigned long long env_ull(const char *k, unsigned long long d) {
  const char *v = getenv(k);
  return v && *v ? strtoull(v, NULL, 10) : d;
}

/* Every entry point is an exported wrapper around an internal implementation, so that
 * FAKE_CUDA_GPA=internal can hand out addresses that differ from the exported symbols. */
#define FN(name, params, args)                                                                    \
  static CUresult impl_##name params;                                                             \
  EXPORT CUresult name params {                                                                   \
    record(#name);                                                                                \
    return impl_##name args;                                                                      \
  }                                                                                               \
  static CUresult impl_##name params

#define NEED_INIT                                                                                 \
  if (!inited) return CUDA_ERROR_NOT_INITIALIZED
#define NEED_CTX                                                                                  \
  NEED_INIT;                                                                                      \
  if (!current()) return CUDA_ERROR_INVALID_CONTEXT

FN(cuInit, (unsigned f), (f)) {
  n_sms = (int)env_ull("FAKE_CUDA_SMS", 132);
  mps = (int)env_ull("FAKE_CUDA_MPS", 0);
  no_green = (int)env_ull("FAKE_CUDA_NO_GREEN", 0);
  mem_total = env_ull("FAKE_CUDA_MEM_TOTAL", 80ULL << 30);
  const char *g = getenv("FAKE_CUDA_GPA");
  gpa_internal = g && strcmp(g, "internal") == 0;
  const char *p = getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE");
  if (!inited) mps_pct_seen = p ? atoi(p) : -1; /* the driver reads it once, at init */
  primary.sms = visible_sms();
  inited = 1;
  return CUDA_SUCCESS;
}

FN(cuDriverGetVersion, (int *v), (v)) {
  *v = 13000;
  return CUDA_SUCCESS;
}

FN(cuDeviceGet, (CUdevice * d, int ord), (d, ord)) {
  NEED_INIT;
  if (ord != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}

FN(cuDeviceGetCount, (int *n), (n)) {
  NEED_INIT;
  *n = 1;
  return CUDA_SUCCESS;
}

FN(cuDeviceGetAttribute, (int *pi, CUdevice_attribute a, CUdevice d), (pi, a, d)) {
  NEED_INIT;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (a == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
    *pi = (int)visible_sms();
  else if (a == CU_DEVICE_ATTRIBUTE_MPS_ENABLED)
    *pi = mps;
  else
    *pi = 0;
  return CUDA_SUCCESS;
}

static void fill_uuid(CUuuid *u) {
  for (int i = 0; i < 16; i++) u->bytes[i] = (char)(0xa0 + i);
}
FN(cuDeviceGetUuid, (CUuuid * u, CUdevice d), (u, d)) {
  NEED_INIT;
  fill_uuid(u);
  return CUDA_SUCCESS;
}
FN(cuDeviceGetUuid_v2, (CUuuid * u, CUdevice d), (u, d)) {
  NEED_INIT;
  fill_uuid(u);
  return CUDA_SUCCESS;
}

/* ---- contexts ---- */
FN(cuDevicePrimaryCtxRetain, (CUcontext * c, CUdevice d), (c, d)) {
  NEED_INIT;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  primary_refs++;
  *c = (CUcontext)&primary;
  return CUDA_SUCCESS;
}
FN(cuDevicePrimaryCtxRelease_v2, (CUdevice d), (d)) {
  NEED_INIT;
  if (primary_refs > 0) primary_refs--;
  return CUDA_SUCCESS;
}
FN(cuDevicePrimaryCtxRelease, (CUdevice d), (d)) { return impl_cuDevicePrimaryCtxRelease_v2(d); }
FN(cuDevicePrimaryCtxReset_v2, (CUdevice d), (d)) {
  NEED_INIT;
  primary_refs = 0;
  return CUDA_SUCCESS;
}
FN(cuDevicePrimaryCtxReset, (CUdevice d), (d)) { return impl_cuDevicePrimaryCtxReset_v2(d); }
FN(cuDevicePrimaryCtxGetState, (CUdevice d, unsigned *flags, int *active), (d, flags, active)) {
  NEED_INIT;
  if (flags) *flags = 0;
  if (active) *active = primary_refs > 0;
  return CUDA_SUCCESS;
}

static void push(struct fake_ctx *c) {
  if (depth < 32) stack[depth++] = c;
}

static CUresult create(CUcontext *pc, unsigned aff, CUdevice d) {
  NEED_INIT;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  unsigned sms = visible_sms();
  last_affinity = aff;
  if (aff) {
    if (!mps) return CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY; /* measured without MPS */
    unsigned even = (aff + 1) & ~1u;                      /* measured: rounded up to even */
    /* Measured on an H200 with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE set: an affinity at or above
     * the client's share gives the context the whole GPU; a smaller one is honoured. */
    sms = even >= sms ? (unsigned)n_sms : even;
  }
  struct fake_ctx *c = calloc(1, sizeof *c);
  c->kind = FAKE_CTX_CREATED;
  c->sms = sms;
  push(c);
  *pc = (CUcontext)c;
  return CUDA_SUCCESS;
}

static unsigned find_aff(const CUexecAffinityParam *p, int n) {
  unsigned v = 0;
  for (int i = 0; p && i < n; i++)
    if (p[i].type == CU_EXEC_AFFINITY_TYPE_SM_COUNT) v = p[i].param.smCount.val;
  return v;
}

FN(cuCtxCreate_v2, (CUcontext * pc, unsigned f, CUdevice d), (pc, f, d)) { return create(pc, 0, d); }
FN(cuCtxCreate, (CUcontext * pc, unsigned f, CUdevice d), (pc, f, d)) { return create(pc, 0, d); }
FN(cuCtxCreate_v3, (CUcontext * pc, CUexecAffinityParam *p, int n, unsigned f, CUdevice d),
   (pc, p, n, f, d)) {
  return create(pc, find_aff(p, n), d);
}
FN(cuCtxCreate_v4, (CUcontext * pc, CUctxCreateParams *cp, unsigned f, CUdevice d), (pc, cp, f, d)) {
  return create(pc, cp ? find_aff(cp->execAffinityParams, cp->numExecAffinityParams) : 0, d);
}
FN(cuCtxDestroy_v2, (CUcontext c), (c)) {
  NEED_INIT;
  if (!c || as_ctx(c)->kind != FAKE_CTX_CREATED) return CUDA_ERROR_INVALID_CONTEXT;
  as_ctx(c)->destroyed = 1;
  if (current() == as_ctx(c)) depth--;
  return CUDA_SUCCESS;
}
FN(cuCtxSetCurrent, (CUcontext c), (c)) {
  NEED_INIT;
  if (!c) {
    if (depth) depth--;
    return CUDA_SUCCESS;
  }
  if (as_ctx(c)->destroyed) return CUDA_ERROR_INVALID_CONTEXT;
  if (depth)
    stack[depth - 1] = as_ctx(c);
  else
    push(as_ctx(c));
  return CUDA_SUCCESS;
}
FN(cuCtxGetCurrent, (CUcontext * c), (c)) {
  NEED_INIT;
  *c = (CUcontext)current();
  return CUDA_SUCCESS;
}
FN(cuCtxPushCurrent_v2, (CUcontext c), (c)) {
  NEED_INIT;
  if (!c) return CUDA_ERROR_INVALID_CONTEXT;
  push(as_ctx(c));
  return CUDA_SUCCESS;
}
FN(cuCtxPopCurrent_v2, (CUcontext * c), (c)) {
  NEED_INIT;
  if (!depth) return CUDA_ERROR_INVALID_CONTEXT;
  struct fake_ctx *top = stack[--depth];
  if (c) *c = (CUcontext)top;
  return CUDA_SUCCESS;
}
FN(cuCtxGetDevice, (CUdevice * d), (d)) {
  NEED_CTX;
  *d = current()->dev;
  return CUDA_SUCCESS;
}

/* ---- green contexts ---- */
FN(cuDeviceGetDevResource, (CUdevice d, CUdevResource *r, CUdevResourceType t), (d, r, t)) {
  NEED_INIT;
  if (no_green) return CUDA_ERROR_NOT_SUPPORTED;
  if (t != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  memset(r, 0, sizeof *r);
  r->type = CU_DEV_RESOURCE_TYPE_SM;
  r->sm.smCount = visible_sms(); /* measured: an MPS client's resource is its share */
  r->sm.minSmPartitionSize = 8;
  r->sm.smCoscheduledAlignment = 8;
  return CUDA_SUCCESS;
}
FN(cuDevSmResourceSplitByCount,
   (CUdevResource * res, unsigned *nb, const CUdevResource *in, CUdevResource *rem, unsigned fl,
    unsigned min),
   (res, nb, in, rem, fl, min)) {
  NEED_INIT;
  if (!in || in->type != CU_DEV_RESOURCE_TYPE_SM || !nb) return CUDA_ERROR_INVALID_VALUE;
  unsigned want = min < 8 ? 8 : (min + 7) / 8 * 8;
  if (want > in->sm.smCount) return CUDA_ERROR_INVALID_VALUE;
  if (res) {
    *res = *in;
    res->sm.smCount = want;
  }
  if (rem) {
    *rem = *in;
    rem->sm.smCount = in->sm.smCount - want;
  }
  *nb = 1;
  return CUDA_SUCCESS;
}
FN(cuDevResourceGenerateDesc, (CUdevResourceDesc * d, CUdevResource *r, unsigned n), (d, r, n)) {
  NEED_INIT;
  if (!r || n != 1 || r->type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  struct CUdevResourceDesc_st *x = calloc(1, sizeof *x);
  x->sms = r->sm.smCount;
  *d = x;
  return CUDA_SUCCESS;
}
FN(cuGreenCtxCreate, (CUgreenCtx * g, CUdevResourceDesc desc, CUdevice d, unsigned flags),
   (g, desc, d, flags)) {
  NEED_INIT;
  if (no_green) return CUDA_ERROR_NOT_SUPPORTED;
  if (!(flags & CU_GREEN_CTX_DEFAULT_STREAM) || !desc) return CUDA_ERROR_INVALID_VALUE;
  struct CUgreenCtx_st *x = calloc(1, sizeof *x);
  x->ctx.kind = FAKE_CTX_GREEN;
  x->ctx.sms = desc->sms;
  primary_refs++; /* documented: a green context retains the primary context */
  *g = x;
  return CUDA_SUCCESS;
}
FN(cuCtxFromGreenCtx, (CUcontext * c, CUgreenCtx g), (c, g)) {
  NEED_INIT;
  if (!g) return CUDA_ERROR_INVALID_VALUE;
  *c = (CUcontext)&g->ctx;
  return CUDA_SUCCESS;
}
FN(cuGreenCtxDestroy, (CUgreenCtx g), (g)) {
  NEED_INIT;
  if (!g || g->ctx.destroyed) return CUDA_ERROR_INVALID_CONTEXT;
  g->ctx.destroyed = 1;
  if (primary_refs > 0) primary_refs--;
  return CUDA_SUCCESS;
}

/* ---- memory ---- */
static struct {
  unsigned long long key, size;
} allocs[4096];
static const unsigned long long next_ptr = 0x100000000000ULL;
static unsigned long long next_handle = 1;

static CUresult fake_alloc(unsigned long long *out, unsigned long long n, int handle) {
  NEED_CTX;
  if (n == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  if (mem_used + n <= mem_total) {
    for (int i = 0; i < 4096; i++) {
      if (allocs[i].key) continue;
      /* Slot i always maps to the same address, so freed addresses come back at once (as a
       * real allocator's do): races between a free and a new allocation show up in tests. */
      allocs[i].key = handle ? next_handle++ : next_ptr + ((unsigned long long)i << 32);
      allocs[i].size = n;
      mem_used += n;
      if (mem_used > mem_peak) mem_peak = mem_used;
      *out = allocs[i].key;
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

static int slow_free = -1;

static CUresult fake_free(unsigned long long key) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < 4096; i++) {
    if (allocs[i].key == key) {
      mem_used -= allocs[i].size;
      allocs[i].key = 0;
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  /* FAKE_CUDA_SLOW_FREE=1: return late, after the address is already free for others. */
  if (slow_free < 0) slow_free = (int)env_ull("FAKE_CUDA_SLOW_FREE", 0);
  if (slow_free) usleep(20);
  return r;
}

FN(cuMemAlloc_v2, (CUdeviceptr * p, size_t n), (p, n)) { return fake_alloc(p, n, 0); }
FN(cuMemAllocManaged, (CUdeviceptr * p, size_t n, unsigned f), (p, n, f)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocAsync, (CUdeviceptr * p, size_t n, CUstream s), (p, n, s)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocAsync_ptsz, (CUdeviceptr * p, size_t n, CUstream s), (p, n, s)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocFromPoolAsync, (CUdeviceptr * p, size_t n, CUmemoryPool pool, CUstream s),
   (p, n, pool, s)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr * p, size_t n, CUmemoryPool pool, CUstream s),
   (p, n, pool, s)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocPitch_v2, (CUdeviceptr * p, size_t *pitch, size_t w, size_t h, unsigned e),
   (p, pitch, w, h, e)) {
  size_t pt = (w + 511) / 512 * 512;
  CUresult r = fake_alloc(p, (unsigned long long)pt * h, 0);
  if (r == CUDA_SUCCESS) *pitch = pt;
  return r;
}
FN(cuMemFree_v2, (CUdeviceptr p), (p)) { return fake_free(p); }
FN(cuMemFreeAsync, (CUdeviceptr p, CUstream s), (p, s)) { return fake_free(p); }
FN(cuMemFreeAsync_ptsz, (CUdeviceptr p, CUstream s), (p, s)) { return fake_free(p); }
FN(cuMemCreate,
   (CUmemGenericAllocationHandle * h, size_t n, const CUmemAllocationProp *prop,
    unsigned long long f),
   (h, n, prop, f)) {
  return fake_alloc(h, n, 1);
}
FN(cuMemRelease, (CUmemGenericAllocationHandle h), (h)) { return fake_free(h); }
FN(cuMemGetInfo_v2, (size_t *fr, size_t *tot), (fr, tot)) {
  NEED_CTX;
  *fr = (size_t)(mem_total - mem_used);
  *tot = (size_t)mem_total;
  return CUDA_SUCCESS;
}
FN(cuLaunchKernel,
   (void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned sh, CUstream s, void **params, void **extra),
   (f, gx, gy, gz, bx, by, bz, sh, s, params, extra)) {
  NEED_CTX;
  return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress: base name + version + stream flag -> ABI variant ---- */
typedef CUresult (*gpa1_t)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static CUresult impl_cuGetProcAddress_v2(const char *, void **, int, cuuint64_t,
                                         CUdriverProcAddressQueryResult *);
static CUresult impl_cuGetProcAddress(const char *, void **, int, cuuint64_t);
EXPORT CUresult cuGetProcAddress_v2(const char *s, void **p, int v, cuuint64_t f,
                                    CUdriverProcAddressQueryResult *q);
EXPORT CUresult cuGetProcAddress(const char *s, void **p, int v, cuuint64_t f);

#define SYM(base, ver, ptsz, name) {base, ver, ptsz, #name, (void *)name, (void *)impl_##name}
static const struct {
  const char *base;
  int min_version;
  int ptsz; /* -1 any */
  const char *name;
  void *exported, *internal;
} syms[] = {
    SYM("cuInit", 2000, -1, cuInit),
    SYM("cuDriverGetVersion", 2020, -1, cuDriverGetVersion),
    SYM("cuGetProcAddress", 12000, -1, cuGetProcAddress_v2),
    SYM("cuGetProcAddress", 11030, -1, cuGetProcAddress),
    SYM("cuDeviceGet", 2000, -1, cuDeviceGet),
    SYM("cuDeviceGetCount", 2000, -1, cuDeviceGetCount),
    SYM("cuDeviceGetAttribute", 2000, -1, cuDeviceGetAttribute),
    SYM("cuDeviceGetUuid", 11040, -1, cuDeviceGetUuid_v2),
    SYM("cuDeviceGetUuid", 9020, -1, cuDeviceGetUuid),
    SYM("cuDevicePrimaryCtxRetain", 7000, -1, cuDevicePrimaryCtxRetain),
    SYM("cuDevicePrimaryCtxRelease", 11000, -1, cuDevicePrimaryCtxRelease_v2),
    SYM("cuDevicePrimaryCtxRelease", 7000, -1, cuDevicePrimaryCtxRelease),
    SYM("cuDevicePrimaryCtxReset", 11000, -1, cuDevicePrimaryCtxReset_v2),
    SYM("cuDevicePrimaryCtxReset", 7000, -1, cuDevicePrimaryCtxReset),
    SYM("cuDevicePrimaryCtxGetState", 7000, -1, cuDevicePrimaryCtxGetState),
    SYM("cuCtxCreate", 12050, -1, cuCtxCreate_v4),
    SYM("cuCtxCreate", 11040, -1, cuCtxCreate_v3),
    SYM("cuCtxCreate", 3020, -1, cuCtxCreate_v2),
    SYM("cuCtxCreate", 2000, -1, cuCtxCreate),
    SYM("cuCtxDestroy", 4000, -1, cuCtxDestroy_v2),
    SYM("cuCtxSetCurrent", 4000, -1, cuCtxSetCurrent),
    SYM("cuCtxGetCurrent", 4000, -1, cuCtxGetCurrent),
    SYM("cuCtxPushCurrent", 4000, -1, cuCtxPushCurrent_v2),
    SYM("cuCtxPopCurrent", 4000, -1, cuCtxPopCurrent_v2),
    SYM("cuCtxGetDevice", 2000, -1, cuCtxGetDevice),
    SYM("cuDeviceGetDevResource", 12040, -1, cuDeviceGetDevResource),
    SYM("cuDevSmResourceSplitByCount", 12040, -1, cuDevSmResourceSplitByCount),
    SYM("cuDevResourceGenerateDesc", 12040, -1, cuDevResourceGenerateDesc),
    SYM("cuGreenCtxCreate", 12040, -1, cuGreenCtxCreate),
    SYM("cuGreenCtxDestroy", 12040, -1, cuGreenCtxDestroy),
    SYM("cuCtxFromGreenCtx", 12040, -1, cuCtxFromGreenCtx),
    SYM("cuMemAlloc", 3020, -1, cuMemAlloc_v2),
    SYM("cuMemAllocPitch", 3020, -1, cuMemAllocPitch_v2),
    SYM("cuMemAllocManaged", 6000, -1, cuMemAllocManaged),
    SYM("cuMemAllocAsync", 11020, 1, cuMemAllocAsync_ptsz),
    SYM("cuMemAllocAsync", 11020, 0, cuMemAllocAsync),
    SYM("cuMemAllocFromPoolAsync", 11020, 1, cuMemAllocFromPoolAsync_ptsz),
    SYM("cuMemAllocFromPoolAsync", 11020, 0, cuMemAllocFromPoolAsync),
    SYM("cuMemFree", 3020, -1, cuMemFree_v2),
    SYM("cuMemFreeAsync", 11020, 1, cuMemFreeAsync_ptsz),
    SYM("cuMemFreeAsync", 11020, 0, cuMemFreeAsync),
    SYM("cuMemCreate", 10020, -1, cuMemCreate),
    SYM("cuMemRelease", 10020, -1, cuMemRelease),
    SYM("cuMemGetInfo", 3020, -1, cuMemGetInfo_v2),
    SYM("cuLaunchKernel", 4000, -1, cuLaunchKernel),
};

EXPORT void *fakecuda_own(const char *name) {
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
    if (strcmp(syms[i].name, name) == 0) return syms[i].exported;
  return NULL;
}

static CUresult lookup(const char *s, void **p, int v, cuuint64_t f,
                       CUdriverProcAddressQueryResult *q) {
  int ptsz = (f & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? 1 : 0;
  int found = 0;
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    if (strcmp(syms[i].base, s) != 0) continue;
    found = 1;
    if (v < syms[i].min_version) continue;
    if (syms[i].ptsz >= 0 && syms[i].ptsz != ptsz) continue;
    *p = gpa_internal ? syms[i].internal : syms[i].exported;
    if (q) *q = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  *p = NULL;
  if (q) *q = found ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_ERROR_NOT_FOUND;
}

static CUresult impl_cuGetProcAddress_v2(const char *s, void **p, int v, cuuint64_t f,
                                         CUdriverProcAddressQueryResult *q) {
  return lookup(s, p, v, f, q);
}
static CUresult impl_cuGetProcAddress(const char *s, void **p, int v, cuuint64_t f) {
  return lookup(s, p, v, f, NULL);
}
EXPORT CUresult cuGetProcAddress_v2(const char *s, void **p, int v, cuuint64_t f,
                                    CUdriverProcAddressQueryResult *q) {
  record("cuGetProcAddress_v2");
  return impl_cuGetProcAddress_v2(s, p, v, f, q);
}
EXPORT CUresult cuGetProcAddress(const char *s, void **p, int v, cuuint64_t f) {
  record("cuGetProcAddress");
  return impl_cuGetProcAddress(s, p, v, f);
}
