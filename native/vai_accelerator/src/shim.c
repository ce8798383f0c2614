/* shim.c - libvai_accelerator.so: caps a CUDA process to BLESS_LIMIT_PCT percent of the GPU's SMs.
 *
 * Loaded with LD_PRELOAD. It never links libcuda: the real driver is dlopen'ed on first use, so
 * the library loads (and does nothing) in processes and on machines without a GPU.
 *
 * How calls reach the hooks (all three are needed; PyTorch uses only the last two):
 *   1. programs linked against libcuda bind cu* symbols to our exports (preload wins);
 *   2. dlsym(handle, "cu...") is interposed: a hooked name yields our hook;
 *   3. cuGetProcAddress / cuGetProcAddress_v2 (how the CUDA runtime finds every driver entry
 *      point, with the per-thread-default-stream flag) hand out our hook whenever the driver's
 *      answer is one of the functions we wrap (matched by address, else by name and ABI version).
 *
 * Mechanisms, chosen once at cuInit and written to the status line:
 *   none  - BLESS_LIMIT_PCT unset or 100: pass-through (memory quota still applies);
 *   mps   - the device is shared through MPS: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE is set before the
 *           driver initialises (constructor and cuInit), so every context of the process, the
 *           runtime's primary context included, is capped to the share; explicitly created
 *           contexts also get an SM-count execution affinity of that share (or the caller's
 *           smaller request);
 *   green - no MPS: a green context with the rounded SM count stands in for the primary context
 *           on every thread, and for explicitly created contexts;
 *   failed- neither works: cuInit fails (fail closed: a pod never silently gets the whole GPU).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vai_internal.h"

#define VAI_MAX_DEV 64
#define VAI_MAX_EXPLICIT 256

/* ---- the real dlsym, and our dlsym interposer ------------------------------------------------ */

typedef void *(*dlsym_fn)(void *, const char *);
VAI_HIDDEN dlsym_fn vai_real_dlsym_ptr;

static dlsym_fn real_dlsym(void) {
  if (!vai_real_dlsym_ptr) {
    static const char *versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !vai_real_dlsym_ptr; i++)
      vai_real_dlsym_ptr = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
  }
  return vai_real_dlsym_ptr;
}

static void *hook_for_name(const char *name);

/* Everything but RTLD_NEXT. RTLD_NEXT must be answered relative to the *caller's* object, so the
 * exported entry below jumps (not calls) into the real dlsym for it, keeping the caller's return
 * address; glibc then searches after the caller, as if we were not there. */
VAI_HIDDEN void *vai_dlsym_impl(void *handle, const char *name) {
  dlsym_fn rd = real_dlsym();
  if (!rd) return NULL;
  void *p = rd(handle, name);
  if (p && name && name[0] == 'c' && name[1] == 'u') {
    void *h = hook_for_name(name);
    if (h) return h;
  }
  return p;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym,@function\n"
        "dlsym:\n"
        "  cmpq $-1, %rdi\n"
        "  jne 1f\n"
        "  movq vai_real_dlsym_ptr(%rip), %rax\n"
        "  testq %rax, %rax\n"
        "  je 1f\n"
        "  jmp *%rax\n"
        "1:\n"
        "  jmp vai_dlsym_impl\n"
        ".size dlsym, .-dlsym\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym,%function\n"
        "dlsym:\n"
        "  cmn x0, #1\n"
        "  b.ne 1f\n"
        "  adrp x16, vai_real_dlsym_ptr\n"
        "  ldr x16, [x16, :lo12:vai_real_dlsym_ptr]\n"
        "  cbz x16, 1f\n"
        "  br x16\n"
        "1:\n"
        "  b vai_dlsym_impl\n"
        ".size dlsym, .-dlsym\n");
#else
/* Elsewhere RTLD_NEXT lookups are answered relative to this library (documented limitation). */
VAI_EXPORT void *dlsym(void *handle, const char *name) { return vai_dlsym_impl(handle, name); }
#endif

/* ---- the real driver ----------------------------------------------------------------------- */

typedef CUresult (*gpa1_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static struct {
  void *lib;
  CUresult (*cuInit)(unsigned);
  gpa1_fn cuGetProcAddress;
  gpa2_fn cuGetProcAddress_v2;
  CUresult (*cuDeviceGet)(CUdevice *, int);
  CUresult (*cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*cuDeviceGetUuid_v2)(CUuuid *, CUdevice);
  CUresult (*cuDeviceGetUuid)(CUuuid *, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
  CUresult (*cuDevicePrimaryCtxRelease_v2)(CUdevice);
  CUresult (*cuDevicePrimaryCtxReset)(CUdevice);
  CUresult (*cuDevicePrimaryCtxReset_v2)(CUdevice);
  CUresult (*cuDevicePrimaryCtxGetState)(CUdevice, unsigned *, int *);
  CUresult (*cuCtxCreate)(CUcontext *, unsigned, CUdevice); /* pre-3.2 ABI, same signature */
  CUresult (*cuCtxCreate_v2)(CUcontext *, unsigned, CUdevice);
  CUresult (*cuCtxCreate_v3)(CUcontext *, CUexecAffinityParam *, int, unsigned, CUdevice);
  CUresult (*cuCtxCreate_v4)(CUcontext *, CUctxCreateParams *, unsigned, CUdevice);
  CUresult (*cuCtxDestroy)(CUcontext);
  CUresult (*cuCtxDestroy_v2)(CUcontext);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxGetCurrent)(CUcontext *);
  CUresult (*cuCtxPushCurrent)(CUcontext);
  CUresult (*cuCtxPushCurrent_v2)(CUcontext);
  CUresult (*cuCtxPopCurrent)(CUcontext *);
  CUresult (*cuCtxPopCurrent_v2)(CUcontext *);
  CUresult (*cuCtxGetDevice)(CUdevice *);
  CUresult (*cuMemAlloc_v2)(CUdeviceptr *, size_t);
  CUresult (*cuMemAllocPitch_v2)(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
  CUresult (*cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned);
  CUresult (*cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
  CUresult (*cuMemAllocAsync_ptsz)(CUdeviceptr *, size_t, CUstream);
  CUresult (*cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  CUresult (*cuMemAllocFromPoolAsync_ptsz)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  CUresult (*cuMemFree_v2)(CUdeviceptr);
  CUresult (*cuMemFreeAsync)(CUdeviceptr, CUstream);
  CUresult (*cuMemFreeAsync_ptsz)(CUdeviceptr, CUstream);
  CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                          unsigned long long);
  CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
  CUresult (*cuMemGetInfo_v2)(size_t *, size_t *);
  CUresult (*cuDeviceGetDevResource)(CUdevice, CUdevResource *, CUdevResourceType);
  CUresult (*cuDevSmResourceSplitByCount)(CUdevResource *, unsigned *, const CUdevResource *,
                                          CUdevResource *, unsigned, unsigned);
  CUresult (*cuDevResourceGenerateDesc)(CUdevResourceDesc *, CUdevResource *, unsigned);
  CUresult (*cuGreenCtxCreate)(CUgreenCtx *, CUdevResourceDesc, CUdevice, unsigned);
  CUresult (*cuGreenCtxDestroy)(CUgreenCtx);
  CUresult (*cuCtxFromGreenCtx)(CUcontext *, CUgreenCtx);
  CUresult (*cuCtxGetExecAffinity)(CUexecAffinityParam *, CUexecAffinityType);
  CUresult (*cuGreenCtxGetDevResource)(CUgreenCtx, CUdevResource *, CUdevResourceType);
  CUresult (*cuCtxGetDevResource)(CUcontext, CUdevResource *, CUdevResourceType);
  CUresult (*cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*cuMemUnmap)(CUdeviceptr, size_t);
  CUresult (*cuMemRetainAllocationHandle)(CUmemGenericAllocationHandle *, void *);
  CUresult (*cuMemPoolCreate)(CUmemoryPool *, const void *);
  CUresult (*cuMemPoolDestroy)(CUmemoryPool);
  CUresult (*cuMemPoolTrimTo)(CUmemoryPool, size_t);
  CUresult (*cuMemPoolGetAttribute)(CUmemoryPool, int, void *);
  CUresult (*cuDeviceGetMemPool)(CUmemoryPool *, CUdevice);
  CUresult (*cuEventCreate)(CUevent *, unsigned);
  CUresult (*cuEventRecord)(CUevent, CUstream);
  CUresult (*cuEventQuery)(CUevent);
  CUresult (*cuEventSynchronize)(CUevent);
  CUresult (*cuEventDestroy_v2)(CUevent);
  CUresult (*cuStreamIsCapturing)(CUstream, int *);
  CUresult (*cuStreamSynchronize)(CUstream);
  /* The pre-3.2 ABI (32-bit sizes and pointers), still exported by libcuda for old binaries. */
  CUresult (*cuMemAlloc)(unsigned *, unsigned);
  CUresult (*cuMemFree)(unsigned);
  CUresult (*cuMemGetInfo)(unsigned *, unsigned *);
  CUresult (*cuMemAllocPitch)(unsigned *, unsigned *, unsigned, unsigned, unsigned);
} real;

/* The hooks (defined below) and the exported names they stand for. */
#define VAI_HOOKS(X)                                                                              \
  X(cuInit)                                                                                       \
  X(cuGetProcAddress)                                                                             \
  X(cuGetProcAddress_v2)                                                                          \
  X(cuDeviceGetAttribute)                                                                         \
  X(cuDevicePrimaryCtxRetain)                                                                     \
  X(cuDevicePrimaryCtxRelease)                                                                    \
  X(cuDevicePrimaryCtxRelease_v2)                                                                 \
  X(cuDevicePrimaryCtxReset)                                                                      \
  X(cuDevicePrimaryCtxReset_v2)                                                                   \
  X(cuDevicePrimaryCtxGetState)                                                                   \
  X(cuCtxCreate)                                                                                  \
  X(cuCtxCreate_v2)                                                                               \
  X(cuCtxCreate_v3)                                                                               \
  X(cuCtxCreate_v4)                                                                               \
  X(cuCtxDestroy)                                                                                 \
  X(cuCtxDestroy_v2)                                                                              \
  X(cuCtxSetCurrent)                                                                              \
  X(cuCtxGetCurrent)                                                                              \
  X(cuCtxPushCurrent)                                                                             \
  X(cuCtxPushCurrent_v2)                                                                          \
  X(cuCtxPopCurrent)                                                                              \
  X(cuCtxPopCurrent_v2)                                                                           \
  X(cuMemAlloc_v2)                                                                                \
  X(cuMemAllocPitch_v2)                                                                           \
  X(cuMemAllocManaged)                                                                            \
  X(cuMemAllocAsync)                                                                              \
  X(cuMemAllocAsync_ptsz)                                                                         \
  X(cuMemAllocFromPoolAsync)                                                                      \
  X(cuMemAllocFromPoolAsync_ptsz)                                                                 \
  X(cuMemFree_v2)                                                                                 \
  X(cuMemFreeAsync)                                                                               \
  X(cuMemFreeAsync_ptsz)                                                                          \
  X(cuMemCreate)                                                                                  \
  X(cuMemRelease)                                                                                 \
  X(cuMemGetInfo_v2)                                                                              \
  X(cuMemMap)                                                                                     \
  X(cuMemUnmap)                                                                                   \
  X(cuMemRetainAllocationHandle)                                                                  \
  X(cuMemPoolCreate)                                                                              \
  X(cuMemPoolDestroy)                                                                             \
  X(cuMemPoolTrimTo)                                                                              \
  X(cuMemAlloc)                                                                                   \
  X(cuMemFree)                                                                                    \
  X(cuMemGetInfo)                                                                                 \
  X(cuMemAllocPitch)                                                                              \
  X(cuDeviceGetDevResource)                                                                       \
  X(cuCtxGetDevResource)                                                                          \
  X(cuGreenCtxCreate)                                                                             \
  X(cuCtxFromGreenCtx)

#define DECLARE_HOOK(n) VAI_EXPORT CUresult n();
/* Declared without prototypes only to take their addresses in the table. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
VAI_HOOKS(DECLARE_HOOK)
#pragma GCC diagnostic pop

typedef struct {
  const char *name;
  void *hook;
  void **real; /* slot in `real` */
} hook_entry;

#define HOOK_ENTRY(n) {#n, (void *)n, (void **)&real.n},
static const hook_entry hooks[] = {VAI_HOOKS(HOOK_ENTRY)};
#define N_HOOKS (sizeof hooks / sizeof hooks[0])

static const hook_entry *entry_by_name(const char *name) {
  for (size_t i = 0; i < N_HOOKS; i++)
    if (strcmp(hooks[i].name, name) == 0) return &hooks[i];
  return NULL;
}

static void *hook_for_name(const char *name) {
  const hook_entry *e = entry_by_name(name);
  return e ? e->hook : NULL;
}

/* cuGetProcAddress takes a base name plus the caller's CUDA version and stream flag; this maps
 * them to the exported ABI variant, following cudaTypedefs.h (PFN_<name>_v<version>). Used only
 * when the driver answers with an address we do not know (an internal entry point). */
static const struct {
  const char *base;
  int min_version;
  int ptsz; /* -1 any, 0 legacy stream, 1 per-thread default stream */
  const char *variant;
} variants[] = {
    {"cuGetProcAddress", 12000, -1, "cuGetProcAddress_v2"},
    {"cuGetProcAddress", 0, -1, "cuGetProcAddress"},
    {"cuCtxCreate", 12050, -1, "cuCtxCreate_v4"},
    {"cuCtxCreate", 11040, -1, "cuCtxCreate_v3"},
    {"cuCtxCreate", 3020, -1, "cuCtxCreate_v2"},
    {"cuCtxCreate", 0, -1, "cuCtxCreate"},
    {"cuCtxDestroy", 4000, -1, "cuCtxDestroy_v2"},
    {"cuCtxDestroy", 0, -1, "cuCtxDestroy"},
    {"cuCtxPushCurrent", 4000, -1, "cuCtxPushCurrent_v2"},
    {"cuCtxPushCurrent", 0, -1, "cuCtxPushCurrent"},
    {"cuCtxPopCurrent", 4000, -1, "cuCtxPopCurrent_v2"},
    {"cuCtxPopCurrent", 0, -1, "cuCtxPopCurrent"},
    {"cuDevicePrimaryCtxRelease", 11000, -1, "cuDevicePrimaryCtxRelease_v2"},
    {"cuDevicePrimaryCtxRelease", 0, -1, "cuDevicePrimaryCtxRelease"},
    {"cuDevicePrimaryCtxReset", 11000, -1, "cuDevicePrimaryCtxReset_v2"},
    {"cuDevicePrimaryCtxReset", 0, -1, "cuDevicePrimaryCtxReset"},
    {"cuMemAlloc", 3020, -1, "cuMemAlloc_v2"},
    {"cuMemAlloc", 0, -1, "cuMemAlloc"},
    {"cuMemAllocPitch", 3020, -1, "cuMemAllocPitch_v2"},
    {"cuMemAllocPitch", 0, -1, "cuMemAllocPitch"},
    {"cuMemFree", 3020, -1, "cuMemFree_v2"},
    {"cuMemFree", 0, -1, "cuMemFree"},
    {"cuMemGetInfo", 3020, -1, "cuMemGetInfo_v2"},
    {"cuMemGetInfo", 0, -1, "cuMemGetInfo"},
    {"cuMemMap", 0, -1, "cuMemMap"},
    {"cuMemUnmap", 0, -1, "cuMemUnmap"},
    {"cuMemRetainAllocationHandle", 0, -1, "cuMemRetainAllocationHandle"},
    {"cuMemPoolCreate", 0, -1, "cuMemPoolCreate"},
    {"cuMemPoolDestroy", 0, -1, "cuMemPoolDestroy"},
    {"cuMemPoolTrimTo", 0, -1, "cuMemPoolTrimTo"},
    {"cuDeviceGetDevResource", 0, -1, "cuDeviceGetDevResource"},
    {"cuCtxGetDevResource", 0, -1, "cuCtxGetDevResource"},
    {"cuGreenCtxCreate", 0, -1, "cuGreenCtxCreate"},
    {"cuCtxFromGreenCtx", 0, -1, "cuCtxFromGreenCtx"},
    {"cuMemAllocAsync", 0, 1, "cuMemAllocAsync_ptsz"},
    {"cuMemAllocAsync", 0, 0, "cuMemAllocAsync"},
    {"cuMemAllocFromPoolAsync", 0, 1, "cuMemAllocFromPoolAsync_ptsz"},
    {"cuMemAllocFromPoolAsync", 0, 0, "cuMemAllocFromPoolAsync"},
    {"cuMemFreeAsync", 0, 1, "cuMemFreeAsync_ptsz"},
    {"cuMemFreeAsync", 0, 0, "cuMemFreeAsync"},
    {"cuInit", 0, -1, "cuInit"},
    {"cuDeviceGetAttribute", 0, -1, "cuDeviceGetAttribute"},
    {"cuDevicePrimaryCtxRetain", 0, -1, "cuDevicePrimaryCtxRetain"},
    {"cuDevicePrimaryCtxGetState", 0, -1, "cuDevicePrimaryCtxGetState"},
    {"cuCtxSetCurrent", 0, -1, "cuCtxSetCurrent"},
    {"cuCtxGetCurrent", 0, -1, "cuCtxGetCurrent"},
    {"cuMemAllocManaged", 0, -1, "cuMemAllocManaged"},
    {"cuMemCreate", 0, -1, "cuMemCreate"},
    {"cuMemRelease", 0, -1, "cuMemRelease"},
};

/* The hook to hand out for a cuGetProcAddress answer, or the answer itself. */
static void *redirect_proc(const char *symbol, void *pfn, int version, cuuint64_t flags) {
  for (size_t i = 0; i < N_HOOKS; i++)
    if (*hooks[i].real && *hooks[i].real == pfn) return hooks[i].hook;
  int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? 1 : 0;
  for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
    if (strcmp(variants[i].base, symbol) != 0 || version < variants[i].min_version) continue;
    if (variants[i].ptsz >= 0 && variants[i].ptsz != ptsz) continue;
    const hook_entry *e = entry_by_name(variants[i].variant);
    if (e && *e->real) {
      vai_log(VAI_LOG_DEBUG, "cuGetProcAddress(%s, %d): unknown address, hooked as %s", symbol,
              version, e->name);
      return e->hook;
    }
    break;
  }
  return pfn;
}

static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load_real(void) {
  dlsym_fn rd = real_dlsym();
  const char *path = "libcuda.so.1";
  real.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!real.lib || !rd) {
    vai_log(VAI_LOG_INFO, "cannot load %s: %s", path, dlerror());
    return;
  }
  for (size_t i = 0; i < N_HOOKS; i++) *hooks[i].real = rd(real.lib, hooks[i].name);
#define LOAD(n) real.n = (__typeof__(real.n))rd(real.lib, #n)
  LOAD(cuDeviceGet);
  LOAD(cuDeviceGetUuid_v2);
  LOAD(cuDeviceGetUuid);
  LOAD(cuCtxGetDevice);
  LOAD(cuDevSmResourceSplitByCount);
  LOAD(cuDevResourceGenerateDesc);
  LOAD(cuGreenCtxDestroy);
  LOAD(cuCtxGetExecAffinity);
  LOAD(cuGreenCtxGetDevResource);
  LOAD(cuMemPoolGetAttribute);
  LOAD(cuDeviceGetMemPool);
  LOAD(cuEventCreate);
  LOAD(cuEventRecord);
  LOAD(cuEventQuery);
  LOAD(cuEventSynchronize);
  LOAD(cuEventDestroy_v2);
  LOAD(cuStreamIsCapturing);
  LOAD(cuStreamSynchronize);
#undef LOAD
}

static inline int ensure_loaded(void) {
  pthread_once(&load_once, load_real);
  return real.lib != NULL;
}

/* ---- mechanism state --------------------------------------------------------------------------- */

enum { MECH_NONE, MECH_MPS, MECH_GREEN, MECH_FAILED };
static const char *mech_names[] = {"none", "mps", "green", "failed"};

typedef struct {
  int planned;            /* plan computed */
  unsigned device_sms;    /* SMs of the device (resource or attribute) */
  unsigned want, granted; /* green: SMs asked of the split, SMs it gave */
  unsigned granule;       /* partition step (8 on Hopper) */
  CUgreenCtx green;       /* the stand-in primary context, once created */
  CUcontext ctx;
  CUcontext real_primary; /* the driver's primary context, mapped to ctx wherever it shows up */
  int refs;
  CUdevResource split;    /* the share's SM resource: what cuDeviceGetDevResource hands out */
} devstate;

static struct {
  int mech;
  CUresult init_result; /* what cuInit answers after the first call */
  int initialized;
  vai_status status;
  unsigned mps_affinity; /* SM count for explicit contexts under MPS */
  devstate dev[VAI_MAX_DEV];
  struct {
    CUcontext ctx;
    CUgreenCtx green;
  } explicit_ctx[VAI_MAX_EXPLICIT];
  unsigned long long status_peak_written;
} st;

static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER;
static int n_mapped; /* 1 + highest device index whose primary context has a green stand-in */
static pthread_once_t mech_once = PTHREAD_ONCE_INIT;

static int attr(CUdevice d, CUdevice_attribute a) {
  int v = 0;
  if (real.cuDeviceGetAttribute && real.cuDeviceGetAttribute(&v, a, d) == CUDA_SUCCESS) return v;
  return 0;
}

/* SMs of the device as the green-context API sees them, plus its partition granule. */
static unsigned device_resource(CUdevice d, CUdevResource *res, unsigned *granule,
                                unsigned *min_part) {
  memset(res, 0, sizeof *res);
  *granule = 8; /* Hopper's; older drivers leave the fields 0 */
  *min_part = 8;
  if (!real.cuDeviceGetDevResource ||
      real.cuDeviceGetDevResource(d, res, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS)
    return 0;
  if (res->sm.smCoscheduledAlignment) *granule = res->sm.smCoscheduledAlignment;
  if (res->sm.minSmPartitionSize) *min_part = res->sm.minSmPartitionSize;
  return res->sm.smCount;
}

/* Splits want SMs off the device; fills split and returns its SM count (0 on failure). */
static unsigned split_sms(CUdevResource *res, unsigned want, CUdevResource *split) {
  CUdevResource rest;
  unsigned n = 1;
  memset(split, 0, sizeof *split);
  memset(&rest, 0, sizeof rest);
  if (!real.cuDevSmResourceSplitByCount ||
      real.cuDevSmResourceSplitByCount(split, &n, res, &rest, 0, want) != CUDA_SUCCESS || n < 1)
    return 0;
  return split->sm.smCount;
}

/* Green plan for device d (caller holds st_mu). */
static devstate *plan_device(CUdevice d) {
  if (d < 0 || d >= VAI_MAX_DEV) return NULL;
  devstate *ds = &st.dev[d];
  if (ds->planned) return ds;
  CUdevResource res, split;
  unsigned granule, min_part;
  unsigned total = device_resource(d, &res, &granule, &min_part);
  if (!total) return NULL;
  ds->device_sms = total;
  ds->granule = granule > min_part ? granule : min_part;
  ds->want = vai_green_sms(vai_cfg.limit_pct, total, granule, min_part);
  ds->granted = split_sms(&res, ds->want, &split);
  if (!ds->granted || ds->granted > ds->want) return NULL; /* never more than the share */
  ds->split = split;
  ds->planned = 1;
  return ds;
}

/* Creates a green context of `want` SMs on d; returns its SM count, 0 on failure. */
static unsigned make_green(CUdevice d, unsigned want, CUgreenCtx *g, CUcontext *ctx, CUresult *rc) {
  CUdevResource res, split;
  unsigned granule, min_part;
  *rc = CUDA_ERROR_NOT_SUPPORTED;
  if (!device_resource(d, &res, &granule, &min_part)) return 0;
  unsigned got = split_sms(&res, want, &split);
  if (!got || !real.cuDevResourceGenerateDesc || !real.cuGreenCtxCreate || !real.cuCtxFromGreenCtx)
    return 0;
  CUdevResourceDesc desc = NULL;
  if ((*rc = real.cuDevResourceGenerateDesc(&desc, &split, 1)) != CUDA_SUCCESS) return 0;
  if ((*rc = real.cuGreenCtxCreate(g, desc, d, CU_GREEN_CTX_DEFAULT_STREAM)) != CUDA_SUCCESS)
    return 0;
  if ((*rc = real.cuCtxFromGreenCtx(ctx, *g)) != CUDA_SUCCESS) {
    if (real.cuGreenCtxDestroy) real.cuGreenCtxDestroy(*g);
    return 0;
  }
  return got;
}

static void format_uuid(const CUuuid *u, char *out, size_t len) {
  const unsigned char *b = (const unsigned char *)u->bytes;
  snprintf(out, len,
           "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* The device's SM count from NVML inside this process: inside an MPS client the driver reports
 * only the share, while NVML still describes the whole GPU (nvmlDeviceGetNumGpuCores / cores per
 * SM: 16896 / 128 = 132 on an H200). 0 when NVML is absent or does not know. */
static unsigned nvml_device_sms(const char *uuid, int major, int minor) {
  unsigned per = vai_cores_per_sm(major, minor);
  dlsym_fn rd = real_dlsym();
  if (!per || !rd || !uuid[0]) return 0;
  void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return 0;
  int (*init)(void) = (int (*)(void))rd(h, "nvmlInit_v2");
  int (*shutdown)(void) = (int (*)(void))rd(h, "nvmlShutdown");
  int (*by_uuid)(const char *, void **) = (int (*)(const char *, void **))rd(h, "nvmlDeviceGetHandleByUUID");
  int (*cores)(void *, unsigned *) = (int (*)(void *, unsigned *))rd(h, "nvmlDeviceGetNumGpuCores");
  unsigned n = 0;
  if (init && by_uuid && cores && init() == 0) {
    void *dev = NULL;
    unsigned c = 0;
    if (by_uuid(uuid, &dev) == 0 && cores(dev, &c) == 0 && c % per == 0) n = c / per;
    if (shutdown) shutdown();
  }
  return n;
}

static void fail_closed(CUresult rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_closed(CUresult rc, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  st.mech = MECH_FAILED;
  st.init_result = rc;
  fprintf(stderr, "vai_accelerator[%d]: %s; refusing CUDA\n", (int)getpid(), msg);
}

static void choose_mechanism(void) {
  vai_status *s = &st.status;
  s->limit_pct = vai_cfg.limit_pct;
  CUdevice d0 = 0;
  int have_dev = real.cuDeviceGet && real.cuDeviceGet(&d0, 0) == CUDA_SUCCESS;
  if (have_dev) {
    CUuuid u;
    memset(&u, 0, sizeof u);
    if ((real.cuDeviceGetUuid_v2 && real.cuDeviceGetUuid_v2(&u, d0) == CUDA_SUCCESS) ||
        (real.cuDeviceGetUuid && real.cuDeviceGetUuid(&u, d0) == CUDA_SUCCESS))
      format_uuid(&u, s->gpu_uuid, sizeof s->gpu_uuid);
  }
  unsigned attr_sms = have_dev ? (unsigned)attr(d0, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) : 0;
  CUdevResource res;
  unsigned granule, min_part;
  unsigned res_sms = have_dev ? device_resource(d0, &res, &granule, &min_part) : 0;
  unsigned driver_sms = res_sms > attr_sms ? res_sms : attr_sms;
  int mps = have_dev && attr(d0, CU_DEVICE_ATTRIBUTE_MPS_ENABLED);
  int capped = vai_cfg.limit_pct < 100;

  /* The device's own SM count: the plugin's (file/env), else NVML, else the driver's answer
   * (the whole device without MPS; only the share inside an MPS client). */
  unsigned dev_sms = 0;
  const char *src = "driver";
  if (vai_cfg.device_sms) {
    dev_sms = vai_cfg.device_sms;
    src = vai_cfg.device_sms_src;
  } else if (capped && have_dev) {
    dev_sms = nvml_device_sms(s->gpu_uuid, attr(d0, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                              attr(d0, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
    if (dev_sms) src = "nvml";
  }
  if (!mps && driver_sms && dev_sms != driver_sms) { /* without MPS the driver sees the device */
    if (dev_sms) vai_log(VAI_LOG_WARN, "VAI_DEVICE_SM_COUNT=%u but the driver reports %u SMs; using %u",
                         dev_sms, driver_sms, driver_sms);
    dev_sms = driver_sms;
    src = "driver";
  }
  if (dev_sms < driver_sms) {
    dev_sms = driver_sms;
    src = "driver";
  }
  s->sms_device = dev_sms;
  s->sms_device_source = src;

  if (!capped) {
    st.mech = MECH_NONE;
    s->sms_asked = s->sms_granted = driver_sms;
  } else if (!have_dev) {
    st.mech = MECH_NONE; /* nothing to cap; every later context call fails in the driver */
  } else if (vai_cfg.mechanism == VAI_MECH_REQ_MPS && !mps) {
    fail_closed(CUDA_ERROR_NOT_SUPPORTED,
                "the limits ask VAI_MECHANISM=mps but this process is not an MPS client (no MPS "
                "daemon at CUDA_MPS_PIPE_DIRECTORY)");
  } else if (vai_cfg.mechanism == VAI_MECH_REQ_GREEN && mps) {
    fail_closed(CUDA_ERROR_NOT_SUPPORTED,
                "the limits ask VAI_MECHANISM=green but the device is shared through MPS here");
  } else if (mps) {
    /* The driver applies CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: an MPS client sees only its share
     * (measured on an H200: 25% -> 32, 50% -> 66, 75% -> 98 of 132, both through the attribute
     * and the device resource). Read back what it granted: never more than the share. */
    st.mech = MECH_MPS;
    unsigned share = strcmp(src, "driver") ? vai_mps_sms(vai_cfg.limit_pct, dev_sms) : attr_sms;
    s->sms_asked = share;
    s->sms_granted = attr_sms;
    st.mps_affinity = attr_sms;
    if (strcmp(src, "driver") == 0)
      vai_log(VAI_LOG_WARN, "device SM count unknown (no VAI_DEVICE_SM_COUNT, no NVML): cuBLAS is "
                            "told the share (%u SMs), which gives wrong GEMMs at some shares", attr_sms);
    if (attr_sms > share || (res_sms && res_sms > share))
      fail_closed(CUDA_ERROR_NOT_PERMITTED,
                  "MPS granted %u SMs (device resource %u), more than the %u of BLESS_LIMIT_PCT=%d "
                  "on this %u-SM GPU",
                  attr_sms, res_sms, share, vai_cfg.limit_pct, dev_sms);
  } else {
    pthread_mutex_lock(&st_mu);
    devstate *ds = plan_device(d0);
    pthread_mutex_unlock(&st_mu);
    if (ds && real.cuGreenCtxCreate && real.cuCtxFromGreenCtx && real.cuDevResourceGenerateDesc) {
      st.mech = MECH_GREEN;
      s->sms_asked = ds->want;
      s->sms_granted = ds->granted;
    } else {
      fail_closed(CUDA_ERROR_NOT_SUPPORTED,
                  "cannot enforce BLESS_LIMIT_PCT=%d: no MPS daemon reachable and this driver has "
                  "no green contexts",
                  vai_cfg.limit_pct);
    }
  }
  s->mechanism = mech_names[st.mech];
  st.initialized = 1;
  vai_log(VAI_LOG_INFO,
          "mechanism=%s limit_pct=%d sms asked=%u granted=%u of %u (%s) gpu=%s limits=%s",
          s->mechanism, s->limit_pct, s->sms_asked, s->sms_granted, s->sms_device, src,
          s->gpu_uuid, vai_cfg.limits_path[0] ? vai_cfg.limits_path : "-");
  vai_status_write(s, "init");
}

/* Calls of the hooks that could sit on a hot path, printed at exit with VAI_LOG_LEVEL=debug. */
enum { CNT_GET_CURRENT, CNT_SET_CURRENT, CNT_PUSH, CNT_POP, CNT_ATTR, CNT_GPA, CNT_N };
static const char *cnt_names[CNT_N] = {"cuCtxGetCurrent", "cuCtxSetCurrent", "cuCtxPushCurrent",
                                       "cuCtxPopCurrent", "cuDeviceGetAttribute", "cuGetProcAddress"};
static unsigned long cnt[CNT_N];
#define COUNT(i) __atomic_fetch_add(&cnt[i], 1, __ATOMIC_RELAXED)

/* ---- process start and exit -------------------------------------------------------------------- */

/* Sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE to the limit (keeping a lower value already there), so
 * the driver caps every context of this process if it is an MPS client. Harmless without MPS. */
static void apply_mps_env(void) {
  if (vai_cfg.n_errors || vai_cfg.limit_pct >= 100) return;
  const char *cur = getenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE");
  int have = 0;
  char err[VAI_ERR_LEN];
  if (cur && vai_parse_pct(cur, &have, err, sizeof err) == 0 && have <= vai_cfg.limit_pct) return;
  char buf[8];
  snprintf(buf, sizeof buf, "%d", vai_cfg.limit_pct);
  setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", buf, 1);
}

__attribute__((constructor)) static void vai_start(void) {
  real_dlsym();
  vai_config_load(&vai_cfg);
  apply_mps_env();
}

__attribute__((destructor)) static void vai_stop(void) {
  if (!st.initialized) return;
  vai_status_write(&st.status, "exit");
  for (int i = 0; i < CNT_N; i++) vai_log(VAI_LOG_DEBUG, "calls %s: %lu", cnt_names[i], cnt[i]);
}

/* Rewrites the status line when the peak grew by over 1/8 or 64 MiB since the last write. */
static void maybe_status_peak(void) {
  if (!st.initialized || !vai_cfg.status_dir[0]) return;
  unsigned long long peak = 0;
  vai_mem_stats(NULL, &peak);
  unsigned long long last = __atomic_load_n(&st.status_peak_written, __ATOMIC_RELAXED);
  if (peak <= last + (last >> 3) && peak <= last + (64ULL << 20)) return;
  if (__atomic_compare_exchange_n(&st.status_peak_written, &last, peak, 0, __ATOMIC_RELAXED,
                                  __ATOMIC_RELAXED))
    vai_status_write(&st.status, "running");
}

/* ---- hooks: initialisation and entry points ---------------------------------------------------- */

VAI_EXPORT CUresult cuInit(unsigned flags) {
  if (vai_cfg.n_errors) {
    static int reported;
    if (!__atomic_exchange_n(&reported, 1, __ATOMIC_RELAXED)) {
      for (int i = 0; i < vai_cfg.n_errors && i < VAI_MAX_ERRORS; i++)
        fprintf(stderr, "vai_accelerator[%d]: %s\n", (int)getpid(), vai_cfg.errors[i]);
    }
    return CUDA_ERROR_NOT_PERMITTED;
  }
  if (!ensure_loaded() || !real.cuInit) return CUDA_ERROR_NO_DEVICE;
  apply_mps_env();
  CUresult r = real.cuInit(flags);
  if (r != CUDA_SUCCESS) return r;
  pthread_once(&mech_once, choose_mechanism);
  return st.init_result;
}

VAI_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                        cuuint64_t flags, CUdriverProcAddressQueryResult *status) {
  COUNT(CNT_GPA);
  if (!ensure_loaded() || !real.cuGetProcAddress_v2) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuGetProcAddress_v2(symbol, pfn, version, flags, status);
  if (r == CUDA_SUCCESS && pfn && *pfn && symbol) *pfn = redirect_proc(symbol, *pfn, version, flags);
  return r;
}

VAI_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  COUNT(CNT_GPA);
  if (!ensure_loaded() || !real.cuGetProcAddress) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuGetProcAddress(symbol, pfn, version, flags);
  if (r == CUDA_SUCCESS && pfn && *pfn && symbol) *pfn = redirect_proc(symbol, *pfn, version, flags);
  return r;
}

/* The SM count is answered per caller (sm_caller.c): the device's count to cuBLAS/cuBLASLt, whose
 * kernel choice returns wrong products for many shares when told the share; the SMs the process
 * runs on to everyone else (green: the granted SMs; MPS: the driver's own answer), so that grids
 * sized from it (cooperative launches) fit. VAI_SM_ATTRIBUTE=granted|device forces one answer.
 * noinline: the return address must be our caller's. */
__attribute__((noinline)) VAI_EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute a,
                                                                    CUdevice d) {
  void *caller = __builtin_return_address(0);
  COUNT(CNT_ATTR);
  if (!ensure_loaded() || !real.cuDeviceGetAttribute) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuDeviceGetAttribute(pi, a, d);
  if (r != CUDA_SUCCESS || !pi || a != CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) return r;
  if (st.mech != MECH_GREEN && st.mech != MECH_MPS) return r;
  int mode = vai_cfg.sm_attribute;
  int device = mode == VAI_SMATTR_DEVICE || (mode == VAI_SMATTR_AUTO && vai_caller_is_blas(caller));
  if (device) {
    if (st.status.sms_device > (unsigned)*pi) *pi = (int)st.status.sms_device;
    __atomic_fetch_add(&st.status.attr_told_device, 1, __ATOMIC_RELAXED);
  } else {
    if (st.mech == MECH_GREEN) {
      pthread_mutex_lock(&st_mu);
      devstate *ds = plan_device(d);
      if (ds) *pi = (int)ds->granted;
      pthread_mutex_unlock(&st_mu);
    }
    __atomic_fetch_add(&st.status.attr_told_share, 1, __ATOMIC_RELAXED);
  }
  return r;
}

/* ---- hooks: green contexts made by the program itself ----------------------------------------- */

/* The most SMs one context of this process may have: the share. 0 = no cap. */
static unsigned share_cap(CUdevice d) {
  if (st.mech == MECH_MPS) return st.status.sms_granted;
  if (st.mech != MECH_GREEN) return 0;
  pthread_mutex_lock(&st_mu);
  devstate *ds = plan_device(d);
  unsigned v = ds ? ds->granted : 1;
  pthread_mutex_unlock(&st_mu);
  return v;
}

/* Caps an SM resource handed to the program to the share's split (the driver's internal SM set
 * is in the opaque part of CUdevResource: a smaller smCount alone would not do). */
static void cap_resource(CUdevice d, CUdevResource *res) {
  if (st.mech != MECH_GREEN || !res || res->type != CU_DEV_RESOURCE_TYPE_SM) return;
  pthread_mutex_lock(&st_mu);
  devstate *ds = plan_device(d);
  if (ds && res->sm.smCount > ds->granted) *res = ds->split;
  pthread_mutex_unlock(&st_mu);
}

VAI_EXPORT CUresult cuDeviceGetDevResource(CUdevice d, CUdevResource *res, CUdevResourceType t) {
  if (!ensure_loaded() || !real.cuDeviceGetDevResource) return CUDA_ERROR_NOT_INITIALIZED;
  if (st.mech == MECH_FAILED) return st.init_result;
  CUresult r = real.cuDeviceGetDevResource(d, res, t);
  if (r == CUDA_SUCCESS && t == CU_DEV_RESOURCE_TYPE_SM) cap_resource(d, res);
  return r;
}

VAI_EXPORT CUresult cuCtxGetDevResource(CUcontext c, CUdevResource *res, CUdevResourceType t) {
  if (!ensure_loaded() || !real.cuCtxGetDevResource) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuCtxGetDevResource(c, res, t);
  if (r == CUDA_SUCCESS && t == CU_DEV_RESOURCE_TYPE_SM) cap_resource(0, res);
  return r;
}

/* Reads back the SMs of a green context; 0 when within the share, else an error (logged). */
static CUresult check_green(CUgreenCtx g, CUdevice d, const char *what) {
  unsigned cap = share_cap(d);
  if (!cap) return CUDA_SUCCESS;
  CUdevResource r;
  memset(&r, 0, sizeof r);
  if (!real.cuGreenCtxGetDevResource ||
      real.cuGreenCtxGetDevResource(g, &r, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS) {
    fprintf(stderr, "vai_accelerator[%d]: %s: cannot read back the green context's SMs; refusing it\n",
            (int)getpid(), what);
    return CUDA_ERROR_NOT_PERMITTED;
  }
  if (r.sm.smCount > cap) {
    fprintf(stderr,
            "vai_accelerator[%d]: %s: a green context of %u SMs exceeds this process's share of %u "
            "(BLESS_LIMIT_PCT=%d); refusing it\n",
            (int)getpid(), what, r.sm.smCount, cap, vai_cfg.limit_pct);
    return CUDA_ERROR_NOT_PERMITTED;
  }
  return CUDA_SUCCESS;
}

VAI_EXPORT CUresult cuGreenCtxCreate(CUgreenCtx *g, CUdevResourceDesc desc, CUdevice d, unsigned flags) {
  if (!ensure_loaded() || !real.cuGreenCtxCreate) return CUDA_ERROR_NOT_INITIALIZED;
  if (st.mech == MECH_FAILED) return st.init_result;
  CUresult r = real.cuGreenCtxCreate(g, desc, d, flags);
  if (r != CUDA_SUCCESS || !g) return r;
  CUresult c = check_green(*g, d, "cuGreenCtxCreate");
  if (c != CUDA_SUCCESS) {
    if (real.cuGreenCtxDestroy) real.cuGreenCtxDestroy(*g);
    *g = NULL;
  }
  return c;
}

VAI_EXPORT CUresult cuCtxFromGreenCtx(CUcontext *pc, CUgreenCtx g) {
  if (!ensure_loaded() || !real.cuCtxFromGreenCtx) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult c = g ? check_green(g, 0, "cuCtxFromGreenCtx") : CUDA_SUCCESS;
  if (c != CUDA_SUCCESS) return c;
  return real.cuCtxFromGreenCtx(pc, g);
}

/* ---- hooks: contexts --------------------------------------------------------------------------- */

/* The green stand-in for the primary context of d (creating it on first use). */
static CUresult green_primary(CUdevice d, CUcontext *out, int retain) {
  CUresult rc = CUDA_SUCCESS;
  pthread_mutex_lock(&st_mu);
  devstate *ds = plan_device(d);
  if (!ds) {
    rc = CUDA_ERROR_INVALID_DEVICE;
  } else if (!ds->ctx) {
    unsigned got = make_green(d, ds->want, &ds->green, &ds->ctx, &rc);
    if (!got) {
      ds->ctx = NULL;
      fprintf(stderr,
              "vai_accelerator[%d]: cannot create a green context of %u SMs on device %d "
              "(error %d); refusing the primary context\n",
              (int)getpid(), ds->want, d, rc);
      if (rc == CUDA_SUCCESS) rc = CUDA_ERROR_NOT_SUPPORTED;
    } else {
      ds->granted = got;
      /* The green context retained the driver's primary context; learn its handle so that it
       * can be mapped to the stand-in wherever it shows up (refcount stays balanced). */
      CUcontext p = NULL;
      if (real.cuDevicePrimaryCtxRetain && real.cuDevicePrimaryCtxRetain(&p, d) == CUDA_SUCCESS) {
        ds->real_primary = p;
        if (d + 1 > n_mapped) __atomic_store_n(&n_mapped, d + 1, __ATOMIC_RELEASE);
        if (real.cuDevicePrimaryCtxRelease_v2) real.cuDevicePrimaryCtxRelease_v2(d);
      }
      vai_log(VAI_LOG_INFO, "device %d: green context of %u SMs stands in for the primary", d, got);
    }
  }
  if (rc == CUDA_SUCCESS) {
    if (retain) ds->refs++;
    *out = ds->ctx;
  }
  pthread_mutex_unlock(&st_mu);
  return rc;
}

/* Maps the driver's primary context to its green stand-in (cheap: runs on every cuCtxGetCurrent). */
static CUcontext map_ctx(CUcontext c) {
  if (!c || st.mech != MECH_GREEN) return c;
  int n = __atomic_load_n(&n_mapped, __ATOMIC_ACQUIRE);
  for (int i = 0; i < n; i++)
    if (st.dev[i].real_primary == c && st.dev[i].ctx) return st.dev[i].ctx;
  return c;
}

VAI_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice d) {
  if (!ensure_loaded() || !real.cuDevicePrimaryCtxRetain) return CUDA_ERROR_NOT_INITIALIZED;
  if (st.mech == MECH_FAILED) return st.init_result;
  if (st.mech != MECH_GREEN) return real.cuDevicePrimaryCtxRetain(pctx, d);
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  return green_primary(d, pctx, 1);
}

static CUresult primary_release(CUdevice d, CUresult (*fn)(CUdevice)) {
  if (!fn) return CUDA_ERROR_NOT_INITIALIZED;
  if (st.mech != MECH_GREEN) return fn(d);
  if (d < 0 || d >= VAI_MAX_DEV) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&st_mu);
  /* The stand-in lives until exit or reset: contexts current on other threads stay valid. */
  if (st.dev[d].refs > 0) st.dev[d].refs--;
  pthread_mutex_unlock(&st_mu);
  return CUDA_SUCCESS;
}

VAI_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
  ensure_loaded();
  return primary_release(d, real.cuDevicePrimaryCtxRelease_v2);
}

VAI_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) {
  ensure_loaded();
  return primary_release(d, real.cuDevicePrimaryCtxRelease);
}

static CUresult primary_reset(CUdevice d, CUresult (*fn)(CUdevice)) {
  if (!fn) return CUDA_ERROR_NOT_INITIALIZED;
  if (st.mech == MECH_GREEN && d >= 0 && d < VAI_MAX_DEV) {
    pthread_mutex_lock(&st_mu);
    devstate *ds = &st.dev[d];
    if (ds->ctx) {
      CUcontext cur = NULL;
      if (real.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == ds->ctx) real.cuCtxSetCurrent(NULL);
      real.cuGreenCtxDestroy(ds->green);
      ds->green = NULL;
      ds->ctx = NULL;
      ds->real_primary = NULL;
      ds->refs = 0;
    }
    pthread_mutex_unlock(&st_mu);
    vai_mem_forget_device(d);
    return CUDA_SUCCESS;
  }
  CUresult r = fn(d);
  if (r == CUDA_SUCCESS) vai_mem_forget_device(d);
  return r;
}

VAI_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) {
  ensure_loaded();
  return primary_reset(d, real.cuDevicePrimaryCtxReset_v2);
}

VAI_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice d) {
  ensure_loaded();
  return primary_reset(d, real.cuDevicePrimaryCtxReset);
}

VAI_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned *flags, int *active) {
  if (!ensure_loaded() || !real.cuDevicePrimaryCtxGetState) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuDevicePrimaryCtxGetState(d, flags, active);
  if (r == CUDA_SUCCESS && st.mech == MECH_GREEN && active && d >= 0 && d < VAI_MAX_DEV) {
    pthread_mutex_lock(&st_mu);
    *active = st.dev[d].ctx != NULL;
    pthread_mutex_unlock(&st_mu);
  }
  return r;
}

VAI_EXPORT CUresult cuCtxSetCurrent(CUcontext c) {
  COUNT(CNT_SET_CURRENT);
  if (!ensure_loaded() || !real.cuCtxSetCurrent) return CUDA_ERROR_NOT_INITIALIZED;
  return real.cuCtxSetCurrent(map_ctx(c));
}

VAI_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext c) {
  COUNT(CNT_PUSH);
  if (!ensure_loaded() || !real.cuCtxPushCurrent_v2) return CUDA_ERROR_NOT_INITIALIZED;
  return real.cuCtxPushCurrent_v2(map_ctx(c));
}

VAI_EXPORT CUresult cuCtxPushCurrent(CUcontext c) {
  if (!ensure_loaded() || !real.cuCtxPushCurrent) return CUDA_ERROR_NOT_INITIALIZED;
  COUNT(CNT_PUSH);
  return real.cuCtxPushCurrent(map_ctx(c));
}

VAI_EXPORT CUresult cuCtxPopCurrent(CUcontext *pc) {
  if (!ensure_loaded() || !real.cuCtxPopCurrent) return CUDA_ERROR_NOT_INITIALIZED;
  COUNT(CNT_POP);
  CUresult r = real.cuCtxPopCurrent(pc);
  if (r == CUDA_SUCCESS && pc) *pc = map_ctx(*pc);
  return r;
}

VAI_EXPORT CUresult cuCtxGetCurrent(CUcontext *pc) {
  COUNT(CNT_GET_CURRENT);
  if (!ensure_loaded() || !real.cuCtxGetCurrent) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuCtxGetCurrent(pc);
  if (r == CUDA_SUCCESS && pc && *pc && st.mech == MECH_GREEN) {
    CUcontext m = map_ctx(*pc);
    if (m != *pc) { /* the driver's primary got current behind our back: put the stand-in there */
      real.cuCtxSetCurrent(m);
      *pc = m;
    }
  }
  return r;
}

VAI_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pc) {
  COUNT(CNT_POP);
  if (!ensure_loaded() || !real.cuCtxPopCurrent_v2) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuCtxPopCurrent_v2(pc);
  if (r == CUDA_SUCCESS && pc) *pc = map_ctx(*pc);
  return r;
}

static unsigned caller_affinity(const CUexecAffinityParam *p, int n) {
  unsigned v = 0;
  for (int i = 0; p && i < n; i++)
    if (p[i].type == CU_EXEC_AFFINITY_TYPE_SM_COUNT) v = p[i].param.smCount.val;
  return v;
}

static CUresult green_explicit(CUcontext *pctx, unsigned caller, CUdevice d) {
  unsigned want, granule;
  pthread_mutex_lock(&st_mu);
  devstate *ds = plan_device(d);
  want = ds ? ds->want : 0;
  granule = ds ? ds->granule : 1;
  pthread_mutex_unlock(&st_mu);
  if (!want) return CUDA_ERROR_INVALID_DEVICE;
  if (caller && caller < want) { /* the caller asked for fewer: honour it, in whole granules */
    want = caller / granule * granule;
    if (want < granule) want = granule;
  }
  CUgreenCtx g = NULL;
  CUcontext c = NULL;
  CUresult rc;
  if (!make_green(d, want, &g, &c, &rc)) return rc == CUDA_SUCCESS ? CUDA_ERROR_NOT_SUPPORTED : rc;
  pthread_mutex_lock(&st_mu);
  int slot = -1;
  for (int i = 0; i < VAI_MAX_EXPLICIT && slot < 0; i++)
    if (!st.explicit_ctx[i].ctx) slot = i;
  if (slot >= 0) {
    st.explicit_ctx[slot].ctx = c;
    st.explicit_ctx[slot].green = g;
  }
  pthread_mutex_unlock(&st_mu);
  if (slot < 0) {
    if (real.cuGreenCtxDestroy) real.cuGreenCtxDestroy(g);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  /* cuCtxCreate makes the new context current, supplanting (pushing over) the old one. */
  CUresult r = real.cuCtxPushCurrent_v2(c);
  if (r != CUDA_SUCCESS) return r;
  *pctx = c;
  return CUDA_SUCCESS;
}

/* Under MPS every context of the client is already capped by CUDA_MPS_ACTIVE_THREAD_PERCENTAGE.
 * Measured on an H200 (RESULTS.md): an SM-count affinity at or above the client's share (66 at
 * 50%) makes the driver hand the context the WHOLE GPU (it reports and runs on 132 SMs), while
 * smaller affinities (34, 40) are honoured and no affinity gives the share. So the shim passes a
 * caller's affinity only when it (rounded up to even, as the driver does) stays below the share,
 * and otherwise creates the context with no affinity: the share. */
static CUresult mps_explicit(CUcontext *pctx, const CUexecAffinityParam *params, int n,
                             const CUctxCigParam *cig, unsigned flags, CUdevice d) {
  unsigned caller = caller_affinity(params, n);
  unsigned share = st.mps_affinity;
  int keep = caller && share && ((caller + 1) & ~1u) < share;
  CUexecAffinityParam p[8];
  int m = 0;
  for (int i = 0; params && i < n && m < 7; i++)
    if (params[i].type != CU_EXEC_AFFINITY_TYPE_SM_COUNT) p[m++] = params[i];
  if (keep) {
    p[m].type = CU_EXEC_AFFINITY_TYPE_SM_COUNT;
    p[m].param.smCount.val = caller;
    m++;
  }
  CUresult r;
  if (real.cuCtxCreate_v4) {
    CUctxCreateParams cp = {m ? p : NULL, m, (CUctxCigParam *)cig};
    r = real.cuCtxCreate_v4(pctx, &cp, flags, d);
  } else if (real.cuCtxCreate_v3 && !cig && m) {
    r = real.cuCtxCreate_v3(pctx, p, m, flags, d);
  } else if (!m && !cig && real.cuCtxCreate_v2) {
    r = real.cuCtxCreate_v2(pctx, flags, d);
  } else {
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  if (r == CUDA_SUCCESS && real.cuCtxGetExecAffinity) {
    /* Read back what the driver granted the new (current) context: fail closed above the share. */
    CUexecAffinityParam got;
    memset(&got, 0, sizeof got);
    CUresult g = real.cuCtxGetExecAffinity(&got, CU_EXEC_AFFINITY_TYPE_SM_COUNT);
    vai_log(VAI_LOG_INFO,
            "explicit context under MPS: caller affinity %u, passed %u (share %u); driver reports "
            "%u (rc %d)",
            caller, keep ? caller : 0, share, got.param.smCount.val, g);
    if (g == CUDA_SUCCESS && share && got.param.smCount.val > share) {
      fprintf(stderr,
              "vai_accelerator[%d]: the driver gave an explicit context %u SMs, more than the share "
              "of %u; refusing it\n",
              (int)getpid(), got.param.smCount.val, share);
      if (real.cuCtxDestroy_v2 && pctx && *pctx) real.cuCtxDestroy_v2(*pctx);
      if (pctx) *pctx = NULL;
      return CUDA_ERROR_NOT_PERMITTED;
    }
  }
  return r;
}

static CUresult ctx_create_plain(CUresult (*fn)(CUcontext *, unsigned, CUdevice), CUcontext *pctx,
                                 unsigned flags, CUdevice d) {
  switch (st.mech) {
    case MECH_MPS: return mps_explicit(pctx, NULL, 0, NULL, flags, d);
    case MECH_GREEN: return pctx ? green_explicit(pctx, 0, d) : CUDA_ERROR_INVALID_VALUE;
    case MECH_FAILED: return st.init_result;
    default: return fn(pctx, flags, d);
  }
}

VAI_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned flags, CUdevice d) {
  if (!ensure_loaded() || !real.cuCtxCreate_v2) return CUDA_ERROR_NOT_INITIALIZED;
  return ctx_create_plain(real.cuCtxCreate_v2, pctx, flags, d);
}

VAI_EXPORT CUresult cuCtxCreate(CUcontext *pctx, unsigned flags, CUdevice d) {
  if (!ensure_loaded() || !real.cuCtxCreate) return CUDA_ERROR_NOT_INITIALIZED;
  return ctx_create_plain(real.cuCtxCreate, pctx, flags, d);
}

VAI_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n,
                                   unsigned flags, CUdevice d) {
  if (!ensure_loaded() || !real.cuCtxCreate_v3) return CUDA_ERROR_NOT_INITIALIZED;
  switch (st.mech) {
    case MECH_MPS: return mps_explicit(pctx, params, n, NULL, flags, d);
    case MECH_GREEN:
      return pctx ? green_explicit(pctx, caller_affinity(params, n), d) : CUDA_ERROR_INVALID_VALUE;
    case MECH_FAILED: return st.init_result;
    default: return real.cuCtxCreate_v3(pctx, params, n, flags, d);
  }
}

VAI_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *cp, unsigned flags,
                                   CUdevice d) {
  if (!ensure_loaded() || !real.cuCtxCreate_v4) return CUDA_ERROR_NOT_INITIALIZED;
  const CUexecAffinityParam *p = cp ? cp->execAffinityParams : NULL;
  int n = cp ? cp->numExecAffinityParams : 0;
  switch (st.mech) {
    case MECH_MPS: return mps_explicit(pctx, p, n, cp ? cp->cigParams : NULL, flags, d);
    case MECH_GREEN:
      if (cp && cp->cigParams) return CUDA_ERROR_NOT_SUPPORTED; /* CIG needs a real context */
      return pctx ? green_explicit(pctx, caller_affinity(p, n), d) : CUDA_ERROR_INVALID_VALUE;
    case MECH_FAILED: return st.init_result;
    default: return real.cuCtxCreate_v4(pctx, cp, flags, d);
  }
}

static CUresult ctx_destroy(CUresult (*fn)(CUcontext), CUcontext c) {
  if (st.mech == MECH_GREEN && c) {
    CUgreenCtx g = NULL;
    pthread_mutex_lock(&st_mu);
    for (int i = 0; i < VAI_MAX_EXPLICIT; i++) {
      if (st.explicit_ctx[i].ctx == c) {
        g = st.explicit_ctx[i].green;
        st.explicit_ctx[i].ctx = NULL;
        st.explicit_ctx[i].green = NULL;
        break;
      }
    }
    pthread_mutex_unlock(&st_mu);
    if (g) {
      CUcontext cur = NULL;
      if (real.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == c) {
        CUcontext popped;
        real.cuCtxPopCurrent_v2(&popped);
      }
      return real.cuGreenCtxDestroy(g);
    }
  }
  return fn(c);
}

VAI_EXPORT CUresult cuCtxDestroy_v2(CUcontext c) {
  if (!ensure_loaded() || !real.cuCtxDestroy_v2) return CUDA_ERROR_NOT_INITIALIZED;
  return ctx_destroy(real.cuCtxDestroy_v2, c);
}

VAI_EXPORT CUresult cuCtxDestroy(CUcontext c) {
  if (!ensure_loaded() || !real.cuCtxDestroy) return CUDA_ERROR_NOT_INITIALIZED;
  return ctx_destroy(real.cuCtxDestroy, c);
}

/* ---- hooks: memory ---------------------------------------------------------------------------- */

static int current_device(void) {
  CUdevice d = -1;
  if (!real.cuCtxGetDevice || real.cuCtxGetDevice(&d) != CUDA_SUCCESS) return -1;
  return d;
}

/* ---- stream-ordered frees: credited once they have executed -------------------------------- */

/* cuMemFreeAsync returns at once; the memory is freed when the stream reaches the free. Each such
 * free records an event after it and is credited when the event has completed: polled at every
 * allocation, and waited for (oldest first) when an allocation would otherwise not fit.
 *
 * A stream runs its work in order, so the events recorded on it complete in the order they were
 * recorded: the pending frees are kept in one FIFO per stream, and a poll asks only each FIFO's
 * oldest event, taking entries off while they have completed. A poll costs O(streams with pending
 * frees + frees credited) and a free O(1) (same stream as the last one) to O(such streams): never
 * O(pending frees) per credit. A FIFO only ever holds the events of one stream: the handles that
 * name a different stream per context (NULL, CU_STREAM_LEGACY) or per thread and context
 * (CU_STREAM_PER_THREAD) are told apart by the current context and thread. Should a FIFO still
 * mix two streams (a destroyed stream's handle handed out again), a completed entry behind one
 * still running is credited late, never early, and a wait still takes the oldest first. */
#ifndef VAI_MAX_PENDING
#define VAI_MAX_PENDING 4096 /* past it, a free waits for itself (as when no event can be made) */
#endif
#define VAI_STREAM_LEGACY ((CUstream)0x1)
#define VAI_STREAM_PER_THREAD ((CUstream)0x2)
#define VAI_SETTLE_BATCH 64 /* entries credited per pass outside the lock */
typedef struct {
  unsigned long long key, gen, seq; /* seq: the order of the cuMemFreeAsync calls */
  CUevent ev;
  int next; /* the next entry of the same FIFO (or of the free slots); -1: none */
} pending_entry;
typedef struct {
  CUstream s;
  CUcontext ctx;   /* for NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD; else NULL */
  pthread_t owner; /* for CU_STREAM_PER_THREAD only */
  int head, tail;  /* oldest and newest entry */
} pending_fifo;
static pending_entry pending[VAI_MAX_PENDING];
static pending_fifo fifos[VAI_MAX_PENDING]; /* the non-empty FIFOs, in no order */
static int n_fifos, last_fifo = -1;          /* last_fifo: the one the last free went to */
static int free_slot = -1, slots_touched;    /* a list of freed entries; entries never used yet */
static int n_pending;
static unsigned long long next_seq;
static CUevent spare_ev[64];
static int n_spare;
static pthread_mutex_t pend_mu = PTHREAD_MUTEX_INITIALIZER;

#ifdef VAI_COUNT_PENDING_VISITS
/* Test builds only (make's build/counting/): entries looked at and polls made, to check that the
 * work per credit stays bounded whatever the number of pending frees. */
static unsigned long long pend_visits, pend_polls;
VAI_EXPORT unsigned long long vai_debug_pending_visits(void) { return pend_visits; }
VAI_EXPORT unsigned long long vai_debug_pending_polls(void) { return pend_polls; }
#define COUNT_VISIT() (pend_visits++)
#define COUNT_POLL() (pend_polls++)
#else
#define COUNT_VISIT() ((void)0)
#define COUNT_POLL() ((void)0)
#endif

static CUevent take_event(void) {
  CUevent e = NULL;
  pthread_mutex_lock(&pend_mu);
  if (n_spare) e = spare_ev[--n_spare];
  pthread_mutex_unlock(&pend_mu);
  if (!e && real.cuEventCreate && real.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) e = NULL;
  return e;
}

static void give_event(CUevent e) {
  pthread_mutex_lock(&pend_mu);
  if (n_spare < 64) {
    spare_ev[n_spare++] = e;
    e = NULL;
  }
  pthread_mutex_unlock(&pend_mu);
  if (e && real.cuEventDestroy_v2) real.cuEventDestroy_v2(e);
}

/* The FIFO of stream s as the calling thread names it (created if absent); -1 if none can be.
 * Caller holds pend_mu. */
static int fifo_of(CUstream s, CUcontext ctx, pthread_t self) {
  int per_thread = s == VAI_STREAM_PER_THREAD;
  for (int k = -1; k < n_fifos; k++) {
    int f = k < 0 ? last_fifo : k;
    if (f < 0 || f >= n_fifos) continue;
    if (fifos[f].s == s && fifos[f].ctx == ctx && (!per_thread || pthread_equal(fifos[f].owner, self)))
      return last_fifo = f;
  }
  if (n_fifos >= VAI_MAX_PENDING) return -1;
  fifos[n_fifos] = (pending_fifo){s, ctx, self, -1, -1};
  return last_fifo = n_fifos++;
}

/* Appends a pending free to its stream's FIFO; -1 when VAI_MAX_PENDING are pending. Caller holds
 * pend_mu. */
static int pend_push(CUstream s, CUcontext ctx, pthread_t self, pending_entry e) {
  int i = free_slot;
  if (i >= 0) free_slot = pending[i].next;
  else if (slots_touched < VAI_MAX_PENDING) i = slots_touched++;
  else return -1;
  int f = fifo_of(s, ctx, self);
  if (f < 0) { /* cannot happen: a FIFO holds at least one of the < VAI_MAX_PENDING entries */
    pending[i].next = free_slot;
    free_slot = i;
    return -1;
  }
  e.seq = next_seq++;
  e.next = -1;
  pending[i] = e;
  if (fifos[f].tail >= 0) pending[fifos[f].tail].next = i;
  else fifos[f].head = i;
  fifos[f].tail = i;
  n_pending++;
  return 0;
}

/* Takes the oldest entry off FIFO f (dropping the FIFO when it empties: the last FIFO moves to f).
 * Caller holds pend_mu. */
static pending_entry pend_pop(int f) {
  int i = fifos[f].head;
  pending_entry e = pending[i];
  fifos[f].head = e.next;
  if (fifos[f].head < 0) {
    fifos[f] = fifos[--n_fifos];
    if (last_fifo == f) last_fifo = -1;
    else if (last_fifo == n_fifos) last_fifo = f;
  }
  pending[i].next = free_slot;
  free_slot = i;
  n_pending--;
  return e;
}

/* Credits every pending free whose event completed; with wait, waits for them oldest first until
 * `need` bytes fit the quota (or none is left). Each call with wait takes at least one entry off
 * while any is pending. Returns the number still pending. */
static int settle_frees(int wait, unsigned long long need) {
  for (;;) {
    pending_entry done[VAI_SETTLE_BATCH], oldest = {0};
    int n_done = 0, waiting = 0, left;
    pthread_mutex_lock(&pend_mu);
    COUNT_POLL();
    for (int f = 0; f < n_fifos && n_done < VAI_SETTLE_BATCH;) {
      COUNT_VISIT();
      CUresult q = real.cuEventQuery ? real.cuEventQuery(pending[fifos[f].head].ev) : CUDA_SUCCESS;
      if (q == CUDA_ERROR_NOT_READY) f++; /* and so is the rest of this stream */
      else done[n_done++] = pend_pop(f);  /* f now holds this FIFO's next entry, or another FIFO */
    }
    if (wait && n_done < VAI_SETTLE_BATCH && n_fifos) {
      int of = 0;
      for (int f = 1; f < n_fifos; f++)
        if (pending[fifos[f].head].seq < pending[fifos[of].head].seq) of = f;
      COUNT_VISIT();
      oldest = pend_pop(of);
      waiting = 1;
    }
    left = n_pending;
    pthread_mutex_unlock(&pend_mu);
    for (int k = 0; k < n_done; k++) {
      vai_mem_release_if(VAI_MEM_PTR, done[k].key, done[k].gen);
      give_event(done[k].ev);
    }
    if (waiting) {
      if (real.cuEventSynchronize) real.cuEventSynchronize(oldest.ev);
      vai_mem_release_if(VAI_MEM_PTR, oldest.key, oldest.gen);
      give_event(oldest.ev);
      unsigned long long used = 0, lim = vai_cfg.memory_limit;
      vai_mem_stats(&used, NULL);
      if (!lim || (need <= lim && used <= lim - need)) return left;
    } else if (n_done < VAI_SETTLE_BATCH) {
      return left; /* every FIFO's oldest is still running (or none is left) */
    }
  }
}

static void pending_free(unsigned long long key, unsigned long long gen, CUstream s) {
  int capturing = 0;
  if (real.cuStreamIsCapturing && real.cuStreamIsCapturing(s, &capturing) == CUDA_SUCCESS &&
      capturing != CU_STREAM_CAPTURE_STATUS_NONE) {
    /* A free captured into a graph happens whenever the graph runs: keep it charged. */
    vai_log(VAI_LOG_DEBUG, "cuMemFreeAsync during stream capture: not credited");
    return;
  }
  CUevent ev = take_event();
  if (ev && real.cuEventRecord(ev, s) == CUDA_SUCCESS) {
    CUcontext ctx = NULL;
    if ((!s || s == VAI_STREAM_LEGACY || s == VAI_STREAM_PER_THREAD) && real.cuCtxGetCurrent)
      real.cuCtxGetCurrent(&ctx);
    pthread_mutex_lock(&pend_mu);
    int full = pend_push(s, ctx, pthread_self(), (pending_entry){key, gen, 0, ev, -1}) != 0;
    pthread_mutex_unlock(&pend_mu);
    if (!full) return;
    real.cuEventSynchronize(ev);
    give_event(ev);
  } else {
    if (ev) give_event(ev);
    if (real.cuStreamSynchronize) real.cuStreamSynchronize(s); /* no event: wait for the free */
  }
  vai_mem_release_if(VAI_MEM_PTR, key, gen);
}

/* ---- memory pools: what they reserve for reuse counts too -------------------------------------- */

static struct {
  CUmemoryPool pool;
  unsigned long long reserved; /* last read of CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT */
} pools[VAI_MAX_POOLS];
static int n_pools;
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;

static int pool_index(CUmemoryPool p) {
  int idx = -1;
  if (!p) return -1;
  pthread_mutex_lock(&pool_mu);
  for (int i = 0; i < n_pools && idx < 0; i++)
    if (pools[i].pool == p) idx = i;
  if (idx < 0 && n_pools < VAI_MAX_POOLS) {
    idx = n_pools++;
    pools[idx].pool = p;
    pools[idx].reserved = 0;
  }
  pthread_mutex_unlock(&pool_mu);
  return idx;
}

/* Re-reads every pool's reservation and sets the excess over its live allocations. An allocation
 * of n bytes about to be served by pool number `from` will use that pool's spare first: so much
 * of the spare is not counted twice. */
static void refresh_pools_for(int from, unsigned long long n) {
  if (!vai_cfg.memory_limit || !real.cuMemPoolGetAttribute) return;
  unsigned long long excess = 0;
  pthread_mutex_lock(&pool_mu);
  for (int i = 0; i < n_pools; i++) {
    cuuint64_t v = 0;
    if (pools[i].pool &&
        real.cuMemPoolGetAttribute(pools[i].pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v) == CUDA_SUCCESS)
      pools[i].reserved = v;
    unsigned long long live = vai_mem_pool_live(i);
    if (pools[i].pool && pools[i].reserved > live) {
      unsigned long long spare = pools[i].reserved - live;
      if (i == from) spare -= spare < n ? spare : n;
      excess += spare;
    }
  }
  pthread_mutex_unlock(&pool_mu);
  vai_mem_set_pool_excess(excess);
}

static void refresh_pools(void) { refresh_pools_for(-1, 0); }

/* Gives back what the pools hold beyond their live allocations (when the quota needs it). */
static void trim_pools(void) {
  if (!real.cuMemPoolTrimTo) return;
  pthread_mutex_lock(&pool_mu);
  for (int i = 0; i < n_pools; i++)
    if (pools[i].pool) real.cuMemPoolTrimTo(pools[i].pool, 0);
  pthread_mutex_unlock(&pool_mu);
  refresh_pools();
}

/* Reserve n bytes against the quota, making room first where the process itself holds some:
 * executed stream-ordered frees, then pools' spare reservations, then waiting for pending frees. */
static int reserve_from(unsigned long long n, int pool) {
  if (n_pending) settle_frees(0, 0);
  if (n_pools) refresh_pools_for(pool, n); /* pools change what they hold at every sync */
  if (vai_mem_reserve(n) == 0) return 0;
  if (n_pools) {
    trim_pools();
    if (vai_mem_reserve(n) == 0) return 0;
  }
  while (n_pending) {
    settle_frees(1, n);
    if (n_pools) refresh_pools_for(pool, n);
    if (vai_mem_reserve(n) == 0) return 0;
    if (n_pools) trim_pools();
    if (vai_mem_reserve(n) == 0) return 0;
  }
  vai_log(VAI_LOG_INFO, "quota: %llu bytes refused (limit %llu)", n, vai_cfg.memory_limit);
  return -1;
}

static int reserve(unsigned long long n) { return reserve_from(n, -1); }

/* Reserve, call, then commit or give back: the quota is checked before the driver is asked. */
#define ALLOC_BODY(call, dptr, bytes, pool)                                                       \
  do {                                                                                            \
    unsigned long long n_ = (bytes);                                                              \
    if (reserve_from(n_, (pool)) != 0) return CUDA_ERROR_OUT_OF_MEMORY;                           \
    CUresult r_ = (call);                                                                         \
    if (r_ == CUDA_SUCCESS && (dptr)) {                                                           \
      vai_mem_commit_pool(VAI_MEM_PTR, *(dptr), n_, current_device(), (pool));                    \
      if ((pool) >= 0) refresh_pools();                                                           \
      maybe_status_peak();                                                                        \
    } else {                                                                                      \
      vai_mem_unreserve(n_);                                                                      \
    }                                                                                             \
    return r_;                                                                                    \
  } while (0)

/* The pool cuMemAllocAsync draws from: the current pool of the context's device. */
static int default_pool(void) {
  CUmemoryPool p = NULL;
  int d = current_device();
  if (d < 0 || !real.cuDeviceGetMemPool || real.cuDeviceGetMemPool(&p, d) != CUDA_SUCCESS) return -1;
  return pool_index(p);
}

VAI_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t n) {
  if (!ensure_loaded() || !real.cuMemAlloc_v2) return CUDA_ERROR_NOT_INITIALIZED;
  ALLOC_BODY(real.cuMemAlloc_v2(dptr, n), dptr, n, -1);
}

/* The pre-3.2 ABI: 32-bit pointer and size. */
VAI_EXPORT CUresult cuMemAlloc(unsigned *dptr, unsigned n) {
  if (!ensure_loaded() || !real.cuMemAlloc) return CUDA_ERROR_NOT_INITIALIZED;
  unsigned long long n_ = n;
  if (reserve(n_) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = real.cuMemAlloc(dptr, n);
  if (r == CUDA_SUCCESS && dptr)
    vai_mem_commit(VAI_MEM_PTR, *dptr, n_, current_device());
  else
    vai_mem_unreserve(n_);
  return r;
}

/* Managed memory can all migrate to the GPU: it counts against the quota like device memory. */
VAI_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t n, unsigned flags) {
  if (!ensure_loaded() || !real.cuMemAllocManaged) return CUDA_ERROR_NOT_INITIALIZED;
  ALLOC_BODY(real.cuMemAllocManaged(dptr, n, flags), dptr, n, -1);
}

VAI_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t n, CUstream s) {
  if (!ensure_loaded() || !real.cuMemAllocAsync) return CUDA_ERROR_NOT_INITIALIZED;
  int pool = vai_cfg.memory_limit ? default_pool() : -1;
  ALLOC_BODY(real.cuMemAllocAsync(dptr, n, s), dptr, n, pool);
}

VAI_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t n, CUstream s) {
  if (!ensure_loaded() || !real.cuMemAllocAsync_ptsz) return CUDA_ERROR_NOT_INITIALIZED;
  int pool = vai_cfg.memory_limit ? default_pool() : -1;
  ALLOC_BODY(real.cuMemAllocAsync_ptsz(dptr, n, s), dptr, n, pool);
}

VAI_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t n, CUmemoryPool p,
                                            CUstream s) {
  if (!ensure_loaded() || !real.cuMemAllocFromPoolAsync) return CUDA_ERROR_NOT_INITIALIZED;
  int pool = vai_cfg.memory_limit ? pool_index(p) : -1;
  ALLOC_BODY(real.cuMemAllocFromPoolAsync(dptr, n, p, s), dptr, n, pool);
}

VAI_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t n, CUmemoryPool p,
                                                 CUstream s) {
  if (!ensure_loaded() || !real.cuMemAllocFromPoolAsync_ptsz) return CUDA_ERROR_NOT_INITIALIZED;
  int pool = vai_cfg.memory_limit ? pool_index(p) : -1;
  ALLOC_BODY(real.cuMemAllocFromPoolAsync_ptsz(dptr, n, p, s), dptr, n, pool);
}

VAI_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *p, const void *props) {
  if (!ensure_loaded() || !real.cuMemPoolCreate) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemPoolCreate(p, props);
  if (r == CUDA_SUCCESS && p && vai_cfg.memory_limit) pool_index(*p);
  return r;
}

VAI_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool p) {
  if (!ensure_loaded() || !real.cuMemPoolDestroy) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemPoolDestroy(p);
  if (r == CUDA_SUCCESS) {
    /* Its spare reservation goes; live allocations stay charged until they are freed. */
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < n_pools; i++)
      if (pools[i].pool == p) {
        pools[i].pool = NULL;
        pools[i].reserved = 0;
      }
    pthread_mutex_unlock(&pool_mu);
    refresh_pools();
  }
  return r;
}

VAI_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep) {
  if (!ensure_loaded() || !real.cuMemPoolTrimTo) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemPoolTrimTo(p, keep);
  if (r == CUDA_SUCCESS && n_pools) refresh_pools();
  return r;
}

VAI_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width,
                                       size_t height, unsigned elem) {
  if (!ensure_loaded() || !real.cuMemAllocPitch_v2) return CUDA_ERROR_NOT_INITIALIZED;
  /* The pitch is known only afterwards: reserve the lower bound, then settle the padding. */
  unsigned long long lower = (unsigned long long)width * height;
  if (reserve(lower) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = real.cuMemAllocPitch_v2(dptr, pitch, width, height, elem);
  if (r != CUDA_SUCCESS || !dptr || !pitch) {
    vai_mem_unreserve(lower);
    return r;
  }
  unsigned long long total = (unsigned long long)*pitch * height;
  if (total > lower && vai_mem_reserve(total - lower) != 0) {
    real.cuMemFree_v2(*dptr);
    vai_mem_unreserve(lower);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  vai_mem_commit(VAI_MEM_PTR, *dptr, total > lower ? total : lower, current_device());
  maybe_status_peak();
  return r;
}

VAI_EXPORT CUresult cuMemAllocPitch(unsigned *dptr, unsigned *pitch, unsigned width,
                                    unsigned height, unsigned elem) {
  if (!ensure_loaded() || !real.cuMemAllocPitch) return CUDA_ERROR_NOT_INITIALIZED;
  unsigned long long lower = (unsigned long long)width * height;
  if (reserve(lower) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = real.cuMemAllocPitch(dptr, pitch, width, height, elem);
  if (r != CUDA_SUCCESS || !dptr || !pitch) {
    vai_mem_unreserve(lower);
    return r;
  }
  unsigned long long total = (unsigned long long)*pitch * height;
  if (total > lower && vai_mem_reserve(total - lower) != 0) {
    if (real.cuMemFree) real.cuMemFree(*dptr);
    vai_mem_unreserve(lower);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  vai_mem_commit(VAI_MEM_PTR, *dptr, total > lower ? total : lower, current_device());
  return r;
}

/* VMM: physical memory counts from cuMemCreate until the handle is released AND every mapping
 * of it is unmapped (the driver keeps mapped memory alive after cuMemRelease, and CUDA documents
 * create / map / release as the way to build an allocator). */
VAI_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n,
                                const CUmemAllocationProp *prop, unsigned long long flags) {
  if (!ensure_loaded() || !real.cuMemCreate) return CUDA_ERROR_NOT_INITIALIZED;
  if (reserve(n) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = real.cuMemCreate(h, n, prop, flags);
  if (r == CUDA_SUCCESS && h) {
    vai_mem_commit(VAI_MEM_HANDLE, *h, n, current_device());
    maybe_status_peak();
  } else {
    vai_mem_unreserve(n);
  }
  return r;
}

VAI_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  if (!ensure_loaded() || !real.cuMemRelease) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemRelease(h);
  if (r == CUDA_SUCCESS) vai_mem_vmm_release(h);
  return r;
}

VAI_EXPORT CUresult cuMemMap(CUdeviceptr va, size_t size, size_t offset,
                             CUmemGenericAllocationHandle h, unsigned long long flags) {
  if (!ensure_loaded() || !real.cuMemMap) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemMap(va, size, offset, h, flags);
  if (r == CUDA_SUCCESS) vai_mem_vmm_map(va, size, h);
  return r;
}

VAI_EXPORT CUresult cuMemUnmap(CUdeviceptr va, size_t size) {
  if (!ensure_loaded() || !real.cuMemUnmap) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemUnmap(va, size);
  if (r == CUDA_SUCCESS) vai_mem_vmm_unmap(va, size);
  return r;
}

VAI_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *h, void *addr) {
  if (!ensure_loaded() || !real.cuMemRetainAllocationHandle) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemRetainAllocationHandle(h, addr);
  if (r == CUDA_SUCCESS && h) vai_mem_vmm_retain(*h, (unsigned long long)(uintptr_t)addr);
  return r;
}

/* Frees credit the entry only after the driver freed it (never early: the quota always covers
 * what the driver holds), and only the allocation that was there before the call: the driver may
 * hand the address to another thread in between (see vai_mem_generation). */
#define FREE_BODY(kind, key, call)                                                                \
  do {                                                                                            \
    unsigned long long g_ = vai_mem_generation((kind), (key));                                    \
    CUresult r_ = (call);                                                                         \
    if (r_ == CUDA_SUCCESS && g_) vai_mem_release_if((kind), (key), g_);                          \
    return r_;                                                                                    \
  } while (0)

VAI_EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
  if (!ensure_loaded() || !real.cuMemFree_v2) return CUDA_ERROR_NOT_INITIALIZED;
  FREE_BODY(VAI_MEM_PTR, p, real.cuMemFree_v2(p));
}

VAI_EXPORT CUresult cuMemFree(unsigned p) {
  if (!ensure_loaded() || !real.cuMemFree) return CUDA_ERROR_NOT_INITIALIZED;
  FREE_BODY(VAI_MEM_PTR, p, real.cuMemFree(p));
}

static CUresult free_async(CUresult (*fn)(CUdeviceptr, CUstream), CUdeviceptr p, CUstream s) {
  unsigned long long g = vai_mem_generation(VAI_MEM_PTR, p);
  CUresult r = fn(p, s);
  if (r == CUDA_SUCCESS && g) pending_free(p, g, s);
  return r;
}

VAI_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  if (!ensure_loaded() || !real.cuMemFreeAsync) return CUDA_ERROR_NOT_INITIALIZED;
  return free_async(real.cuMemFreeAsync, p, s);
}

VAI_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
  if (!ensure_loaded() || !real.cuMemFreeAsync_ptsz) return CUDA_ERROR_NOT_INITIALIZED;
  return free_async(real.cuMemFreeAsync_ptsz, p, s);
}

static void quota_info(unsigned long long *free_b, unsigned long long *total_b) {
  unsigned long long lim = vai_cfg.memory_limit;
  if (!lim) return;
  if (n_pending) settle_frees(0, 0);
  if (n_pools) refresh_pools();
  unsigned long long used = 0;
  vai_mem_stats(&used, NULL);
  unsigned long long left = used < lim ? lim - used : 0;
  if (*total_b > lim) *total_b = lim;
  if (*free_b > left) *free_b = left;
}

VAI_EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b) {
  if (!ensure_loaded() || !real.cuMemGetInfo_v2) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemGetInfo_v2(free_b, total_b);
  if (r != CUDA_SUCCESS || !free_b || !total_b) return r;
  unsigned long long f = *free_b, t = *total_b;
  quota_info(&f, &t);
  *free_b = (size_t)f;
  *total_b = (size_t)t;
  return r;
}

VAI_EXPORT CUresult cuMemGetInfo(unsigned *free_b, unsigned *total_b) {
  if (!ensure_loaded() || !real.cuMemGetInfo) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult r = real.cuMemGetInfo(free_b, total_b);
  if (r != CUDA_SUCCESS || !free_b || !total_b) return r;
  unsigned long long f = *free_b, t = *total_b;
  quota_info(&f, &t);
  *free_b = (unsigned)f;
  *total_b = (unsigned)t;
  return r;
}
