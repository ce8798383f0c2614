/* test_client.c - drives the shim the way the CUDA runtime (and so PyTorch) does: dlopen
 * libcuda.so.1, dlsym cuGetProcAddress_v2, then fetch every entry point through it.
 * Run under LD_PRELOAD=libvai_accelerator.so with the fake libcuda.so.1 on LD_LIBRARY_PATH.
 *
 * usage: test_client CASE [ARG]   (cases below; the environment carries the configuration)
 * Prints one "ok ..." / "FAIL ..." line per check; exit status 0 only if every check passed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_api.h"
#include "vai_cuda.h"

static int failures;
#define CHECK(cond, ...)                                                                          \
  do {                                                                                            \
    if (cond) {                                                                                   \
      printf("ok   ");                                                                            \
    } else {                                                                                      \
      printf("FAIL ");                                                                            \
      failures++;                                                                                 \
    }                                                                                             \
    printf(__VA_ARGS__);                                                                          \
    printf("  [%s]\n", #cond);                                                                    \
  } while (0)

typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static void *lib;
static gpa2_t gpa;
static fakecuda_calls_fn calls;
static fakecuda_ctx_sms_fn ctx_sms;
static fakecuda_ctx_kind_fn ctx_kind;
static fakecuda_int_fn mps_pct_seen;
static fakecuda_uint_fn last_affinity;
static fakecuda_own_fn own;
static fakecuda_primary_fn fake_primary;

#define CUDA_VER 13000

static void *get(const char *base, int version, cuuint64_t flags) {
  void *p = NULL;
  CUdriverProcAddressQueryResult q = -1;
  CUresult r = gpa(base, &p, version, flags, &q);
  return r == CUDA_SUCCESS ? p : NULL;
}

/* Entry points, fetched like cudart does. */
static CUresult (*p_init)(unsigned);
static CUresult (*p_retain)(CUcontext *, CUdevice);
static CUresult (*p_release)(CUdevice);
static CUresult (*p_getstate)(CUdevice, unsigned *, int *);
static CUresult (*p_setcur)(CUcontext);
static CUresult (*p_getcur)(CUcontext *);
static CUresult (*p_push)(CUcontext);
static CUresult (*p_pop)(CUcontext *);
static CUresult (*p_attr)(int *, CUdevice_attribute, CUdevice);
static CUresult (*p_create4)(CUcontext *, CUctxCreateParams *, unsigned, CUdevice);
static CUresult (*p_create3)(CUcontext *, CUexecAffinityParam *, int, unsigned, CUdevice);
static CUresult (*p_create2)(CUcontext *, unsigned, CUdevice);
static CUresult (*p_create1)(CUcontext *, unsigned, CUdevice);
static CUresult (*p_destroy)(CUcontext);
static CUresult (*p_alloc)(CUdeviceptr *, size_t);
static CUresult (*p_pitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
static CUresult (*p_managed)(CUdeviceptr *, size_t, unsigned);
static CUresult (*p_async)(CUdeviceptr *, size_t, CUstream);
static CUresult (*p_async_ptsz)(CUdeviceptr *, size_t, CUstream);
static CUresult (*p_free)(CUdeviceptr);
static CUresult (*p_freeasync)(CUdeviceptr, CUstream);
static CUresult (*p_create_h)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                              unsigned long long);
static CUresult (*p_release_h)(CUmemGenericAllocationHandle);
static CUresult (*p_info)(size_t *, size_t *);
static CUresult (*p_devres)(CUdevice, CUdevResource *, CUdevResourceType);
static CUresult (*p_ctxres)(CUcontext, CUdevResource *, CUdevResourceType);
static CUresult (*p_split)(CUdevResource *, unsigned *, const CUdevResource *, CUdevResource *,
                           unsigned, unsigned);
static CUresult (*p_gendesc)(CUdevResourceDesc *, CUdevResource *, unsigned);
static CUresult (*p_gcreate)(CUgreenCtx *, CUdevResourceDesc, CUdevice, unsigned);
static CUresult (*p_fromgreen)(CUcontext *, CUgreenCtx);
static CUresult (*p_map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
static CUresult (*p_unmap)(CUdeviceptr, size_t);
static CUresult (*p_vreserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
static CUresult (*p_hretain)(CUmemGenericAllocationHandle *, void *);
static CUresult (*p_screate)(CUstream *, unsigned);
static CUresult (*p_ssync)(CUstream);
static CUresult (*p_pcreate)(CUmemoryPool *, const void *);
static CUresult (*p_pset)(CUmemoryPool, int, void *);
static CUresult (*p_palloc)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
static CUresult (*p_alloc1)(unsigned *, unsigned);
static CUresult (*p_free1)(unsigned);
static CUresult (*p_info1)(unsigned *, unsigned *);

static void setup(void) {
  lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    printf("FAIL cannot dlopen libcuda.so.1: %s\n", dlerror());
    exit(2);
  }
  gpa = (gpa2_t)dlsym(lib, "cuGetProcAddress_v2");
  calls = (fakecuda_calls_fn)dlsym(lib, "fakecuda_calls");
  ctx_sms = (fakecuda_ctx_sms_fn)dlsym(lib, "fakecuda_ctx_sms");
  ctx_kind = (fakecuda_ctx_kind_fn)dlsym(lib, "fakecuda_ctx_kind");
  mps_pct_seen = (fakecuda_int_fn)dlsym(lib, "fakecuda_mps_pct_seen");
  last_affinity = (fakecuda_uint_fn)dlsym(lib, "fakecuda_last_affinity");
  own = (fakecuda_own_fn)dlsym(lib, "fakecuda_own");
  fake_primary = (fakecuda_primary_fn)dlsym(lib, "fakecuda_primary");
  if (!gpa || !calls || !own) {
    printf("FAIL fake libcuda.so.1 lacks its test API\n");
    exit(2);
  }
  int pt = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  p_init = get("cuInit", CUDA_VER, 0);
  p_retain = get("cuDevicePrimaryCtxRetain", CUDA_VER, 0);
  p_release = get("cuDevicePrimaryCtxRelease", CUDA_VER, 0);
  p_getstate = get("cuDevicePrimaryCtxGetState", CUDA_VER, 0);
  p_setcur = get("cuCtxSetCurrent", CUDA_VER, 0);
  p_getcur = get("cuCtxGetCurrent", CUDA_VER, 0);
  p_push = get("cuCtxPushCurrent", CUDA_VER, 0);
  p_pop = get("cuCtxPopCurrent", CUDA_VER, 0);
  p_attr = get("cuDeviceGetAttribute", CUDA_VER, 0);
  p_create4 = get("cuCtxCreate", CUDA_VER, 0);
  p_create3 = get("cuCtxCreate", 11040, 0);
  p_create2 = get("cuCtxCreate", 11000, 0);
  p_create1 = get("cuCtxCreate", 3010, 0); /* the pre-3.2 ABI entry point */
  p_destroy = get("cuCtxDestroy", CUDA_VER, 0);
  p_alloc = get("cuMemAlloc", CUDA_VER, 0);
  p_pitch = get("cuMemAllocPitch", CUDA_VER, 0);
  p_managed = get("cuMemAllocManaged", CUDA_VER, 0);
  p_async = get("cuMemAllocAsync", CUDA_VER, 0);
  p_async_ptsz = get("cuMemAllocAsync", CUDA_VER, pt);
  p_free = get("cuMemFree", CUDA_VER, 0);
  p_freeasync = get("cuMemFreeAsync", CUDA_VER, pt);
  p_create_h = get("cuMemCreate", CUDA_VER, 0);
  p_release_h = get("cuMemRelease", CUDA_VER, 0);
  p_info = get("cuMemGetInfo", CUDA_VER, 0);
  p_devres = get("cuDeviceGetDevResource", CUDA_VER, 0);
  p_ctxres = get("cuCtxGetDevResource", CUDA_VER, 0);
  p_split = get("cuDevSmResourceSplitByCount", CUDA_VER, 0);
  p_gendesc = get("cuDevResourceGenerateDesc", CUDA_VER, 0);
  p_gcreate = get("cuGreenCtxCreate", CUDA_VER, 0);
  p_fromgreen = get("cuCtxFromGreenCtx", CUDA_VER, 0);
  p_map = get("cuMemMap", CUDA_VER, 0);
  p_unmap = get("cuMemUnmap", CUDA_VER, 0);
  p_vreserve = get("cuMemAddressReserve", CUDA_VER, 0);
  p_hretain = get("cuMemRetainAllocationHandle", CUDA_VER, 0);
  p_screate = get("cuStreamCreate", CUDA_VER, 0);
  p_ssync = get("cuStreamSynchronize", CUDA_VER, 0);
  if (!p_ssync) p_ssync = dlsym(lib, "cuStreamSynchronize");
  p_pcreate = get("cuMemPoolCreate", CUDA_VER, 0);
  p_pset = get("cuMemPoolSetAttribute", CUDA_VER, 0);
  p_palloc = get("cuMemAllocFromPoolAsync", CUDA_VER, 0);
  p_alloc1 = get("cuMemAlloc", 3000, 0); /* the pre-3.2 ABI */
  p_free1 = get("cuMemFree", 3000, 0);
  p_info1 = get("cuMemGetInfo", 3000, 0);
}

static int in_shim(void *p) {
  Dl_info di;
  return p && dladdr(p, &di) && di.dli_fname && strstr(di.dli_fname, "libvai_accelerator");
}

static int env_int(const char *k, int d) {
  const char *v = getenv(k);
  return v && *v ? atoi(v) : d;
}

/* ---- cases ---- */

static int case_hooks(void) {
  void *d = dlsym(lib, "cuGetProcAddress_v2");
  CHECK(in_shim(d) && d != own("cuGetProcAddress_v2"), "dlsym(libcuda, cuGetProcAddress_v2) is the shim's");
  CHECK(in_shim(dlsym(lib, "cuGetProcAddress")), "dlsym(libcuda, cuGetProcAddress) is the shim's");
  CHECK(in_shim(dlsym(lib, "cuMemAlloc_v2")), "dlsym(libcuda, cuMemAlloc_v2) is the shim's");
  CHECK(dlsym(lib, "cuLaunchKernel") == own("cuLaunchKernel"),
        "dlsym(libcuda, cuLaunchKernel) is the driver's (not wrapped: no launch overhead)");
  CHECK(dlsym(lib, "cuNoSuchThing") == NULL, "dlsym of a missing cu name stays NULL");
  static const struct {
    const char *base;
    int version;
    int flags;
    const char *variant;
  } want[] = {
      {"cuInit", CUDA_VER, 0, "cuInit"},
      {"cuGetProcAddress", CUDA_VER, 0, "cuGetProcAddress_v2"},
      {"cuGetProcAddress", 11030, 0, "cuGetProcAddress"},
      {"cuDevicePrimaryCtxRetain", CUDA_VER, 0, "cuDevicePrimaryCtxRetain"},
      {"cuDevicePrimaryCtxRelease", CUDA_VER, 0, "cuDevicePrimaryCtxRelease_v2"},
      {"cuDevicePrimaryCtxReset", CUDA_VER, 0, "cuDevicePrimaryCtxReset_v2"},
      {"cuCtxCreate", CUDA_VER, 0, "cuCtxCreate_v4"},
      {"cuCtxCreate", 12000, 0, "cuCtxCreate_v3"},
      {"cuCtxCreate", 11000, 0, "cuCtxCreate_v2"},
      {"cuCtxCreate", 3010, 0, "cuCtxCreate"},
      {"cuCtxSetCurrent", CUDA_VER, 0, "cuCtxSetCurrent"},
      {"cuCtxGetCurrent", CUDA_VER, 0, "cuCtxGetCurrent"},
      {"cuCtxPushCurrent", CUDA_VER, 0, "cuCtxPushCurrent_v2"},
      {"cuMemAlloc", CUDA_VER, 0, "cuMemAlloc_v2"},
      {"cuMemAllocPitch", CUDA_VER, 0, "cuMemAllocPitch_v2"},
      {"cuMemAllocManaged", CUDA_VER, 0, "cuMemAllocManaged"},
      {"cuMemAllocAsync", CUDA_VER, 0, "cuMemAllocAsync"},
      {"cuMemAllocAsync", CUDA_VER, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemAllocAsync_ptsz"},
      {"cuMemFreeAsync", CUDA_VER, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemFreeAsync_ptsz"},
      {"cuMemAllocFromPoolAsync", CUDA_VER, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemAllocFromPoolAsync_ptsz"},
      {"cuMemCreate", CUDA_VER, 0, "cuMemCreate"},
      {"cuMemRelease", CUDA_VER, 0, "cuMemRelease"},
      {"cuMemFree", CUDA_VER, 0, "cuMemFree_v2"},
      {"cuMemGetInfo", CUDA_VER, 0, "cuMemGetInfo_v2"},
      {"cuDeviceGetAttribute", CUDA_VER, 0, "cuDeviceGetAttribute"},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    void *p = get(want[i].base, want[i].version, (cuuint64_t)want[i].flags);
    void *hook = dlsym(RTLD_DEFAULT, want[i].variant); /* the preloaded shim's export */
    CHECK(p && in_shim(p) && p == hook, "cuGetProcAddress(%s, %d, flags=%d) -> shim's %s",
          want[i].base, want[i].version, want[i].flags, want[i].variant);
  }
  void *lk = get("cuLaunchKernel", CUDA_VER, 0);
  CHECK(lk && !in_shim(lk), "cuGetProcAddress(cuLaunchKernel) is the driver's");
  /* The hook obtained through cuGetProcAddress itself keeps redirecting. */
  gpa2_t g2 = get("cuGetProcAddress", CUDA_VER, 0);
  void *p = NULL;
  CHECK(g2 && g2("cuMemAlloc", &p, CUDA_VER, 0, NULL) == CUDA_SUCCESS && in_shim(p),
        "cuGetProcAddress obtained via cuGetProcAddress still hands out hooks");
  /* The ptsz hook reaches the driver's ptsz variant. */
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + primary context");
  CUdeviceptr dp = 0;
  int before = calls("cuMemAllocAsync_ptsz");
  CHECK(p_async_ptsz(&dp, 4096, NULL) == CUDA_SUCCESS && calls("cuMemAllocAsync_ptsz") == before + 1,
        "per-thread-stream hook calls the driver's cuMemAllocAsync_ptsz");
  return 0;
}

static int case_init(void) {
  int want = env_int("EXPECT_RC", 0);
  CUresult r = p_init(0);
  CHECK(r == want, "cuInit returned %d, expected %d", r, want);
  if (want != 0) CHECK(calls("cuInit") == 0, "the driver was never initialised (fail closed)");
  return 0;
}

static void *thread_retain(void *arg) {
  CUcontext *out = arg;
  CUcontext c = NULL, cur = NULL;
  if (p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS &&
      p_getcur(&cur) == CUDA_SUCCESS && cur == c)
    *out = c;
  return NULL;
}

static int case_green(void) {
  unsigned want = (unsigned)env_int("EXPECT_SMS", 0);
  CHECK(p_init(0) == CUDA_SUCCESS, "cuInit");
  CUcontext c = NULL, c2 = NULL, cur = NULL;
  CHECK(p_retain(&c, 0) == CUDA_SUCCESS && c, "primary retain");
  CHECK(ctx_kind(c) == FAKE_CTX_GREEN, "primary context is a green context (kind %d)", ctx_kind(c));
  CHECK(ctx_sms(c) == want, "green primary has %u SMs, expected %u", ctx_sms(c), want);
  CHECK(p_retain(&c2, 0) == CUDA_SUCCESS && c2 == c, "second retain returns the same context");
  CHECK(p_setcur(c) == CUDA_SUCCESS && p_getcur(&cur) == CUDA_SUCCESS && cur == c, "set/get current");
  int sms = 0;
  unsigned want_attr = (unsigned)env_int("EXPECT_ATTR", (int)want); /* default: the share */
  CHECK(p_attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) == CUDA_SUCCESS &&
            (unsigned)sms == want_attr,
        "device attribute reports %d SMs, expected %u", sms, want_attr);
  int active = 0;
  unsigned fl = 0;
  CHECK(p_getstate(0, &fl, &active) == CUDA_SUCCESS && active == 1, "primary state active");
  CUcontext tc = NULL;
  pthread_t t;
  pthread_create(&t, NULL, thread_retain, &tc);
  pthread_join(t, NULL);
  CHECK(tc == c, "another thread gets the same green stand-in");
  /* The driver's own primary context, set current behind the shim's back, maps to the stand-in. */
  CUcontext rp = fake_primary(0);
  CHECK(rp != c && p_setcur(rp) == CUDA_SUCCESS && p_getcur(&cur) == CUDA_SUCCESS && cur == c,
        "the real primary context is mapped to the green stand-in");
  /* Explicit contexts. */
  CUcontext e4 = NULL, e3 = NULL, e2 = NULL;
  CHECK(p_create4(&e4, NULL, 0, 0) == CUDA_SUCCESS && ctx_kind(e4) == FAKE_CTX_GREEN &&
            ctx_sms(e4) == want,
        "cuCtxCreate_v4 -> green context of %u SMs", ctx_sms(e4));
  CHECK(p_getcur(&cur) == CUDA_SUCCESS && cur == e4, "created context is current");
  CHECK(p_destroy(e4) == CUDA_SUCCESS && calls("cuGreenCtxDestroy") == 1, "destroy -> green destroy");
  CHECK(p_getcur(&cur) == CUDA_SUCCESS && cur == c, "previous context current again");
  CUexecAffinityParam ap = {CU_EXEC_AFFINITY_TYPE_SM_COUNT, {{16}}};
  CHECK(p_create3(&e3, &ap, 1, 0, 0) == CUDA_SUCCESS && ctx_sms(e3) == (want < 16 ? want : 16),
        "cuCtxCreate_v3 asking 16 SMs -> %u", ctx_sms(e3));
  CHECK(p_create2(&e2, 0, 0) == CUDA_SUCCESS && ctx_sms(e2) == want, "cuCtxCreate_v2 -> %u", ctx_sms(e2));
  CUcontext e1 = NULL;
  CHECK(p_create1 && p_create1(&e1, 0, 0) == CUDA_SUCCESS && ctx_kind(e1) == FAKE_CTX_GREEN &&
            ctx_sms(e1) == want,
        "old-ABI cuCtxCreate -> green %u", e1 ? ctx_sms(e1) : 0);
  CHECK(calls("cuCtxCreate_v4") + calls("cuCtxCreate_v3") + calls("cuCtxCreate_v2") +
                calls("cuCtxCreate") ==
            0,
        "no unrestricted context reached the driver");
  CHECK(p_release(0) == CUDA_SUCCESS, "primary release");
  return 0;
}

static int case_mps(void) {
  int pct = env_int("BLESS_LIMIT_PCT", 100);
  int expect_pct = env_int("EXPECT_MPS_PCT", pct);
  unsigned want = (unsigned)env_int("EXPECT_SMS", 0);
  CHECK(p_init(0) == CUDA_SUCCESS, "cuInit");
  CHECK(mps_pct_seen() == expect_pct, "driver saw CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%d, expected %d",
        mps_pct_seen(), expect_pct);
  CUcontext c = NULL;
  CHECK(p_retain(&c, 0) == CUDA_SUCCESS && ctx_kind(c) == FAKE_CTX_PRIMARY, "primary is the driver's");
  int sms = 0;
  p_attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
  CHECK((unsigned)sms == want, "MPS client sees %d SMs, expected %u", sms, want);
  CUcontext e = NULL;
  CHECK(p_create2(&e, 0, 0) == CUDA_SUCCESS, "cuCtxCreate_v2 under MPS");
  CHECK(last_affinity() == 0, "no affinity passed (the share caps it), got %u", last_affinity());
  CHECK(ctx_sms(e) == want, "explicit context got %u SMs (client share %u)", ctx_sms(e), want);
  CUctxCreateParams cp = {NULL, 0, NULL};
  CUcontext e4 = NULL;
  CHECK(p_create4(&e4, &cp, 0, 0) == CUDA_SUCCESS && ctx_sms(e4) == want, "cuCtxCreate_v4 -> share");
  CUexecAffinityParam ap = {CU_EXEC_AFFINITY_TYPE_SM_COUNT, {{10}}};
  CUcontext e3 = NULL;
  if (want > 10)
    CHECK(p_create3(&e3, &ap, 1, 0, 0) == CUDA_SUCCESS && last_affinity() == 10 && ctx_sms(e3) == 10,
          "caller's smaller affinity (10) is kept");
  unsigned probes[] = {200, want, want - 1, want + 1};
  for (int i = 0; i < 4; i++) {
    ap.param.smCount.val = probes[i];
    CHECK(p_create3(&e3, &ap, 1, 0, 0) == CUDA_SUCCESS && ctx_sms(e3) == want && last_affinity() == 0,
          "caller's affinity %u (>= share once even) is dropped: %u SMs", probes[i], ctx_sms(e3));
    cp.execAffinityParams = &ap;
    cp.numExecAffinityParams = 1;
    CHECK(p_create4(&e4, &cp, 0, 0) == CUDA_SUCCESS && ctx_sms(e4) == want && last_affinity() == 0,
          "v4: caller's affinity %u dropped", probes[i]);
  }
  return 0;
}

static int case_passthrough(void) {
  CHECK(p_init(0) == CUDA_SUCCESS, "cuInit");
  CHECK(mps_pct_seen() == -1, "no CUDA_MPS_ACTIVE_THREAD_PERCENTAGE set");
  CUcontext c = NULL;
  CHECK(p_retain(&c, 0) == CUDA_SUCCESS && ctx_kind(c) == FAKE_CTX_PRIMARY, "real primary context");
  int sms = 0;
  CHECK(p_attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) == CUDA_SUCCESS && sms == 132,
        "all %d SMs", sms);
  CUcontext e = NULL;
  CHECK(p_create2(&e, 0, 0) == CUDA_SUCCESS && calls("cuCtxCreate_v2") == 1, "cuCtxCreate_v2 passes through");
  return 0;
}

static int case_failed(void) {
  int want = env_int("EXPECT_RC", 0);
  CUresult r = p_init(0);
  CHECK(r == want, "cuInit returned %d, expected %d", r, want);
  CUcontext c = NULL;
  if (want) CHECK(p_retain(&c, 0) != CUDA_SUCCESS, "no primary context is handed out");
  return 0;
}


/* ---- the SM count, per caller ---- */
typedef int (*blas_sms_fn)(CUresult (*)(int *, CUdevice_attribute, CUdevice));
static int sms_from(const char *lib_name, void *attr_fn) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", getenv("CALLERS_DIR") ? getenv("CALLERS_DIR") : ".", lib_name);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    printf("FAIL cannot dlopen %s: %s\n", path, dlerror());
    failures++;
    return -1;
  }
  blas_sms_fn f = (blas_sms_fn)dlsym(h, "fake_blas_sms");
  return f ? f((CUresult(*)(int *, CUdevice_attribute, CUdevice))attr_fn) : -1;
}

static int case_callers(void) {
  int share = env_int("EXPECT_SHARE", 0), blas = env_int("EXPECT_BLAS", 0);
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  int sms = 0;
  CHECK(p_attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) == CUDA_SUCCESS && sms == share,
        "the program itself is told %d SMs, expected the share %d", sms, share);
  /* Every route to the hook: cuGetProcAddress, dlsym on libcuda, the global (linked) symbol. */
  void *routes[3] = {(void *)p_attr, dlsym(lib, "cuDeviceGetAttribute"),
                     dlsym(RTLD_DEFAULT, "cuDeviceGetAttribute")};
  const char *rname[3] = {"cuGetProcAddress", "dlsym(libcuda)", "dlsym(RTLD_DEFAULT)"};
  for (int r = 0; r < 3; r++) {
    CHECK(sms_from("libcublasLt.so.13", routes[r]) == blas, "libcublasLt.so.13 via %s: told %d, expected %d",
          rname[r], sms_from("libcublasLt.so.13", routes[r]), blas);
    CHECK(sms_from("libbundle.so", routes[r]) == blas,
          "a stripped library with cuBLAS linked in statically via %s: told %d, expected %d", rname[r],
          sms_from("libbundle.so", routes[r]), blas);
    CHECK(sms_from("libexports.so", routes[r]) == blas, "a library exporting cublas* via %s: %d, expected %d",
          rname[r], sms_from("libexports.so", routes[r]), blas);
    CHECK(sms_from("libplain.so", routes[r]) == share, "a plain library via %s: told %d, expected %d",
          rname[r], sms_from("libplain.so", routes[r]), share);
  }
  CHECK(calls("cuDeviceGetAttribute") > 0, "the driver answered");
  return 0;
}

/* ---- green contexts made by the program itself ---- */
static void full_mask(CUdevResource *r, unsigned n) {
  memset(r->_internal_padding, 0, 32);
  for (unsigned i = 0; i < n; i++) r->_internal_padding[i / 8] |= (unsigned char)(1u << (i % 8));
  r->sm.smCount = n;
}

static int case_greenhooks(void) {
  unsigned cap = (unsigned)env_int("EXPECT_CAP", 0);
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  CUdevResource res, part, rest;
  CHECK(p_devres(0, &res, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS && res.sm.smCount == cap,
        "cuDeviceGetDevResource hands out the share: %u SMs, expected %u", res.sm.smCount, cap);
  unsigned nb = 1;
  CHECK(p_split(&part, &nb, &res, &rest, 0, 2 * cap) != CUDA_SUCCESS,
        "splitting twice the share out of it fails");
  CHECK(p_split(&part, &nb, &res, &rest, 0, 16) == CUDA_SUCCESS && part.sm.smCount == 16, "a 16-SM split");
  CUdevResourceDesc d = NULL;
  CUgreenCtx g = NULL;
  CUcontext gc = NULL;
  CHECK(p_gendesc(&d, &part, 1) == CUDA_SUCCESS && p_gcreate(&g, d, 0, CU_GREEN_CTX_DEFAULT_STREAM) == 0 &&
            p_fromgreen(&gc, g) == CUDA_SUCCESS && ctx_sms(gc) == 16,
        "a program's own 16-SM green context works (%u SMs)", gc ? ctx_sms(gc) : 0);
  /* Rewriting smCount changes nothing: the SM set is in the opaque part. */
  CUdevResource fake = res;
  fake.sm.smCount = 132;
  CHECK(p_gendesc(&d, &fake, 1) == CUDA_SUCCESS && p_gcreate(&g, d, 0, CU_GREEN_CTX_DEFAULT_STREAM) == 0 &&
            p_fromgreen(&gc, g) == CUDA_SUCCESS && ctx_sms(gc) <= cap,
        "an edited smCount still gives at most the share (%u)", gc ? ctx_sms(gc) : 0);
  /* A resource for the whole device (from an unhooked route): refused after the read-back. */
  full_mask(&fake, 132);
  g = NULL;
  CHECK(p_gendesc(&d, &fake, 1) == CUDA_SUCCESS &&
            p_gcreate(&g, d, 0, CU_GREEN_CTX_DEFAULT_STREAM) == CUDA_ERROR_NOT_PERMITTED && g == NULL,
        "a 132-SM green context is refused (CUDA_ERROR_NOT_PERMITTED)");
  CHECK(calls("cuGreenCtxDestroy") >= 1, "and destroyed");
  /* Made behind the shim's back (the driver's own entry): cuCtxFromGreenCtx refuses it. */
  CUresult (*raw_create)(CUgreenCtx *, CUdevResourceDesc, CUdevice, unsigned) = own("cuGreenCtxCreate");
  CHECK(raw_create(&g, d, 0, CU_GREEN_CTX_DEFAULT_STREAM) == CUDA_SUCCESS &&
            p_fromgreen(&gc, g) == CUDA_ERROR_NOT_PERMITTED,
        "cuCtxFromGreenCtx refuses a 132-SM green context it did not see made");
  CUdevResource cr;
  CHECK(p_ctxres(c, &cr, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS && cr.sm.smCount <= cap,
        "cuCtxGetDevResource of the current context: %u <= %u", cr.sm.smCount, cap);
  return 0;
}

/* ---- memory: VMM ---- */
#define MiB (1ULL << 20)
static unsigned long long drv_used(void) {
  unsigned long long (*f)(void) = (unsigned long long (*)(void))dlsym(lib, "fakecuda_mem_used");
  return f ? f() : ~0ULL;
}
static unsigned long long drv_peak(void) {
  unsigned long long (*f)(void) = (unsigned long long (*)(void))dlsym(lib, "fakecuda_mem_peak");
  return f ? f() : ~0ULL;
}

static int case_vmm(void) {
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  /* The pattern CUDA documents for VMM allocators: create, map, release while mapped. */
  CUdeviceptr va[8] = {0};
  int made = 0;
  for (int i = 0; i < 8; i++) {
    CUmemGenericAllocationHandle h = 0;
    if (p_create_h(&h, 256 * MiB, NULL, 0) != CUDA_SUCCESS) break;
    CHECK(p_vreserve(&va[i], 256 * MiB, 0, 0, 0) == 0 && p_map(va[i], 256 * MiB, 0, h, 0) == 0 &&
              p_release_h(h) == 0,
          "create/map/release %d", i);
    made++;
  }
  CHECK(made == 4, "create/map/release stops at the 1Gi quota: %d x 256Mi", made);
  CHECK(drv_used() == 1024 * MiB && drv_peak() <= 1024 * MiB, "the driver holds %llu (peak %llu)",
        drv_used(), drv_peak());
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 0, "mem info: %zu free (mapped memory counts)", fr);
  CHECK(p_unmap(va[0], 256 * MiB) == CUDA_SUCCESS && drv_used() == 768 * MiB, "unmap frees it in the driver");
  CUmemGenericAllocationHandle h = 0, h2 = 0;
  CHECK(p_create_h(&h, 256 * MiB, NULL, 0) == CUDA_SUCCESS, "the unmapped 256Mi can be created again");
  /* cuMemRetainAllocationHandle keeps the memory alive past release + unmap. */
  CUdeviceptr v2 = 0;
  CHECK(p_unmap(va[1], 256 * MiB) == 0 && p_vreserve(&v2, 256 * MiB, 0, 0, 0) == 0 &&
            p_map(v2, 256 * MiB, 0, h, 0) == 0 && p_hretain(&h2, (void *)(uintptr_t)v2) == 0,
        "map + retain");
  CHECK(p_release_h(h) == 0 && p_unmap(v2, 256 * MiB) == 0, "release + unmap (retain still holds it)");
  CUmemGenericAllocationHandle h3 = 0;
  CHECK(drv_used() == 768 * MiB, "the driver still holds the retained 256Mi: %llu", drv_used());
  CHECK(p_create_h(&h3, 512 * MiB, NULL, 0) == CUDA_ERROR_OUT_OF_MEMORY,
        "512Mi more does not fit while the retained handle lives");
  CHECK(p_release_h(h2) == 0 && drv_used() == 512 * MiB, "releasing the retained handle frees it");
  CHECK(p_create_h(&h3, 512 * MiB, NULL, 0) == CUDA_SUCCESS, "now 512Mi fits");
  CHECK(drv_peak() <= 1024 * MiB, "the driver never held more than the quota (peak %llu)", drv_peak());
  return 0;
}

/* ---- memory: stream-ordered frees ---- */
static int case_async(void) {
  void (*progress)(void) = (void (*)(void))dlsym(lib, "fakecuda_progress");
  void (*capture)(int) = (void (*)(int))dlsym(lib, "fakecuda_set_capturing");
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  CUstream s1 = NULL, s2 = NULL;
  CHECK(p_screate(&s1, 0) == 0 && p_screate(&s2, 0) == 0, "two streams");
  CUdeviceptr a = 0, b = 0;
  CHECK(p_async(&a, 1024 * MiB, s1) == CUDA_SUCCESS, "async 1Gi (the whole quota) on s1");
  CHECK(p_freeasync(a, s1) == CUDA_SUCCESS, "cuMemFreeAsync on s1 (s1 has not got there yet)");
  size_t fr = 1, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 0, "not credited before the free ran: free %zu", fr);
  CHECK(drv_used() == 1024 * MiB, "the driver still holds it");
  CHECK(p_async(&b, 1024 * MiB, s2) == CUDA_SUCCESS, "1Gi on s2: the shim waited for s1's free");
  CHECK(drv_peak() <= 1024 * MiB, "the driver never held more than the quota (peak %llu)", drv_peak());
  CHECK(p_freeasync(b, s2) == CUDA_SUCCESS, "free b on s2");
  progress();
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 0,
        "the free ran, but the default pool still holds the memory until a sync: free %zu", fr);
  CHECK(p_ssync(s2) == CUDA_SUCCESS && p_info(&fr, &tot) == CUDA_SUCCESS && fr == 1024 * MiB,
        "after the sync the pool gave it back: free %zu", fr);
  /* A free captured into a graph runs whenever the graph runs: it stays charged. */
  CHECK(p_async(&a, 512 * MiB, s1) == CUDA_SUCCESS, "512Mi");
  capture(1);
  CHECK(p_freeasync(a, s1) == CUDA_SUCCESS, "free during stream capture");
  capture(0);
  progress();
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 512 * MiB, "a captured free is not credited: free %zu", fr);
  return 0;
}

/* ---- memory: thousands of stream-ordered frees on several streams ---- */
/* The test keeps its own model: the bytes the program holds (allocated, not yet freed) and, per
 * stream, the bytes of frees not yet run. The shim's charge (limit - free) must never fall below
 * what the driver holds; an allocation must succeed exactly when live + n fits the quota (the
 * shim may wait for pending frees, never refuse what fits after them); once every stream is
 * synchronised the charge must be exactly the live bytes. With the counting build
 * (EXPECT_VISIT_BOUND=1) the entries the shim looked at must stay linear in the work done. */
#define MANY_STREAMS 5
#define MANY_PILE 3000
#define MANY_CHURN 3000
static CUstream many_s[MANY_STREAMS];
static unsigned long long many_settling; /* allocations + mem-info calls made (each polls once+) */

static unsigned long long charged(unsigned long long limit) {
  size_t fr = 0, tot = 0;
  many_settling++;
  if (p_info(&fr, &tot) != CUDA_SUCCESS) return ~0ULL;
  return limit - fr;
}

static void sync_all(void) {
  for (int k = 0; k < MANY_STREAMS; k++) p_ssync(many_s[k]);
}

static int case_async_many(void) {
  unsigned long long (*visits)(void) = dlsym(RTLD_DEFAULT, "vai_debug_pending_visits");
  unsigned long long (*polls)(void) = dlsym(RTLD_DEFAULT, "vai_debug_pending_polls");
  void (*progress)(void) = (void (*)(void))dlsym(lib, "fakecuda_progress");
  int want_bound = env_int("EXPECT_VISIT_BOUND", 0);
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  CHECK(!want_bound || (visits && polls), "the counting build exports its counters");
  const unsigned long long limit = 1024 * MiB;
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && tot == limit, "quota 1Gi: total %zu", tot);
  many_s[0] = NULL; /* the legacy stream */
  for (int k = 1; k < MANY_STREAMS; k++) p_screate(&many_s[k], 0);
  unsigned seed = 42;
  unsigned long long frees = 0, allocs = 0, refused = 0, waited_for = 0, bad_alloc = 0, under = 0;

  /* 1. Pile-up: 3000 allocations of 64Ki, each freed at once on a random stream; nothing runs. */
  unsigned long long on_stream[MANY_STREAMS] = {0};
  for (int i = 0; i < MANY_PILE; i++) {
    CUdeviceptr p = 0;
    int a = (int)(rand_r(&seed) % MANY_STREAMS), b = (int)(rand_r(&seed) % MANY_STREAMS);
    allocs++, many_settling++;
    if (p_async(&p, 64 << 10, many_s[a]) != CUDA_SUCCESS || p_freeasync(p, many_s[b]) != CUDA_SUCCESS)
      bad_alloc++;
    frees++;
    on_stream[b] += 64 << 10;
  }
  CHECK(bad_alloc == 0, "%d alloc + cuMemFreeAsync pairs on %d streams", MANY_PILE, MANY_STREAMS);
  unsigned long long all = (unsigned long long)MANY_PILE << 16;
  CHECK(charged(limit) == all && drv_used() == all, "none ran: all %llu still charged (driver %llu)", all,
        drv_used());
  CHECK(p_ssync(many_s[1]) == 0 && p_ssync(many_s[2]) == 0, "synchronise two of the streams");
  unsigned long long rest = on_stream[0] + on_stream[3] + on_stream[4];
  CHECK(charged(limit) == rest, "exactly the frees of the other three streams stay charged: %llu", rest);
  progress(); /* they run, but the default pool keeps the memory until a synchronisation */
  CHECK(charged(limit) == rest, "run but kept by the pool: still %llu charged", rest);
  CHECK(p_ssync(many_s[0]) == 0 && charged(limit) == 0, "after a synchronisation: nothing charged");

  /* 2. Churn near the quota: 16-64Mi allocations, frees on random streams, partial syncs. */
  CUdeviceptr live_p[64];
  unsigned long long live_n[64], live = 0;
  int n_live = 0;
  for (int i = 0; i < MANY_CHURN; i++) {
    unsigned r = rand_r(&seed);
    if (n_live && (r % 2 || n_live == 64)) {
      int j = (int)(rand_r(&seed) % (unsigned)n_live);
      if (p_freeasync(live_p[j], many_s[rand_r(&seed) % MANY_STREAMS]) != CUDA_SUCCESS) bad_alloc++;
      frees++;
      live -= live_n[j];
      live_p[j] = live_p[--n_live];
      live_n[j] = live_n[n_live];
    } else {
      unsigned long long n = (1 + rand_r(&seed) % 4) * 16 * MiB;
      CUdeviceptr p = 0;
      unsigned long long before = drv_used();
      allocs++, many_settling++;
      CUresult res = p_async(&p, n, many_s[rand_r(&seed) % MANY_STREAMS]);
      if ((res == CUDA_SUCCESS) != (live + n <= limit)) bad_alloc++;
      if (res == CUDA_SUCCESS) {
        if (before + n > limit) waited_for++;
        live_p[n_live] = p;
        live_n[n_live++] = n;
        live += n;
      } else {
        refused++;
      }
    }
    if (i % 50 == 49) p_ssync(many_s[rand_r(&seed) % MANY_STREAMS]);
    unsigned long long ch = charged(limit);
    if (ch < drv_used() || ch < live) under++;
    if (i % 500 == 499) {
      sync_all();
      if (charged(limit) != live) under++;
    }
  }
  CHECK(bad_alloc == 0, "%llu allocations: each succeeded exactly when it fit the quota (%llu refused, "
        "%llu after the shim made room)", allocs, refused, waited_for);
  CHECK(refused > 0 && waited_for > 0, "the churn reached the quota and waited for frees");
  CHECK(under == 0, "the charge never fell below the driver's holding or the live bytes, and was exact "
        "after each full synchronisation (%llu misses)", under);
  CHECK(drv_peak() <= limit, "the driver never held more than the quota (peak %llu)", drv_peak());
  for (int j = 0; j < n_live; j++) p_freeasync(live_p[j], many_s[j % MANY_STREAMS]);
  frees += (unsigned long long)n_live;
  sync_all();
  CHECK(charged(limit) == 0, "everything freed and synchronised: nothing charged");
  if (visits && polls) {
    unsigned long long v = visits(), pl = polls();
    /* Each poll looks at each stream's oldest entry once and at each entry it credits; a wait
     * adds one poll per entry waited for. */
    unsigned long long poll_bound = 2 * (many_settling + frees);
    unsigned long long visit_bound = frees + (MANY_STREAMS + 1) * pl;
    printf("info: %llu async frees, %llu allocations + mem-info calls, %llu polls, %llu entries "
           "looked at\n", frees, many_settling, pl, v);
    CHECK(v >= frees, "the counter counts: %llu visits for %llu credits", v, frees);
    CHECK(pl <= poll_bound, "polls %llu <= 2 x (calls + frees) = %llu", pl, poll_bound);
    CHECK(v <= visit_bound, "entries looked at %llu <= frees + %d x polls = %llu (linear, not per "
          "pending entry)", v, MANY_STREAMS + 1, visit_bound);
  }
  return 0;
}

/* ---- memory: pools hold what they reserve ---- */
static int case_pools(void) {
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  CUmemoryPool pool = NULL;
  CUstream s = NULL;
  CHECK(p_pcreate(&pool, NULL) == CUDA_SUCCESS && p_screate(&s, 0) == 0, "pool + stream");
  cuuint64_t keep_all = ~0ULL; /* as PyTorch's cudaMallocAsync backend sets it */
  CHECK(p_pset(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all) == CUDA_SUCCESS, "release threshold: keep all");
  CUdeviceptr a = 0, b = 0;
  CHECK(p_palloc(&a, 768 * MiB, pool, s) == CUDA_SUCCESS, "768Mi from the pool");
  CHECK(p_freeasync(a, s) == CUDA_SUCCESS && p_ssync(s) == CUDA_SUCCESS, "freed and synchronised");
  CHECK(drv_used() == 768 * MiB, "the pool keeps the 768Mi reserved: driver holds %llu", drv_used());
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 256 * MiB, "the pool's reservation counts: free %zu", fr);
  CHECK(p_palloc(&a, 512 * MiB, pool, s) == CUDA_SUCCESS && drv_used() == 768 * MiB,
        "512Mi again from the pool reuses its reservation");
  CHECK(p_alloc(&b, 512 * MiB) == CUDA_SUCCESS, "512Mi plain: the shim trims the pool's spare 256Mi first");
  CHECK(drv_peak() <= 1024 * MiB, "the driver never held more than the quota (peak %llu)", drv_peak());
  CUdeviceptr x = 0;
  CHECK(p_alloc(&x, 16 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "and no more");
  CUdeviceptr d = 0;
  CHECK(p_free(b) == CUDA_SUCCESS && p_async(&d, 256 * MiB, s) == CUDA_SUCCESS,
        "cuMemAllocAsync (the default pool) counts too");
  CHECK(p_alloc(&x, 300 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "256 + 512 + 300 > 1024: refused");
  CHECK(drv_peak() <= 1024 * MiB, "peak %llu", drv_peak());
  return 0;
}

/* ---- memory: the pre-3.2 ABI ---- */
static int case_v1(void) {
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  CHECK(p_alloc1 && in_shim((void *)p_alloc1) && in_shim((void *)p_free1) && in_shim((void *)p_info1),
        "cuGetProcAddress(cuMemAlloc/Free/GetInfo, 3000) -> the shim's v1 hooks");
  unsigned a = 0, b = 0, fr = 0, tot = 0;
  CHECK(p_info1(&fr, &tot) == CUDA_SUCCESS && tot == 1 * MiB && fr == 1 * MiB, "v1 mem info: %u / %u", fr, tot);
  CHECK(p_alloc1(&a, 512 << 10) == CUDA_SUCCESS, "v1 alloc 512Ki");
  CHECK(p_alloc1(&b, 768 << 10) == CUDA_ERROR_OUT_OF_MEMORY, "v1 alloc 768Ki more: out of memory");
  CUdeviceptr x = 0;
  CHECK(p_alloc(&x, 768 << 10) == CUDA_ERROR_OUT_OF_MEMORY, "v2 sees the v1 allocation too");
  CHECK(p_free1(a) == CUDA_SUCCESS && p_alloc1(&b, 768 << 10) == CUDA_SUCCESS, "v1 free credits");
  return 0;
}

/* ---- the quota the process ended with (limits file vs env) ---- */
static int case_quota_total(void) {
  unsigned long long want = (unsigned long long)env_int("EXPECT_TOTAL_MIB", 0) * MiB;
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && tot == want, "total %zu, expected %llu", tot, want);
  return 0;
}

static int case_memory(void) {
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && tot == 1024 * MiB && fr == 1024 * MiB,
        "mem info reports the quota: free %zu total %zu", fr, tot);
  CUdeviceptr a = 0, b = 0, m = 0, x = 0, y = 0;
  CHECK(p_alloc(&a, 512 * MiB) == CUDA_SUCCESS, "alloc 512Mi");
  int drv = calls("cuMemAlloc_v2");
  CHECK(p_alloc(&b, 600 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "alloc 600Mi more -> out of memory");
  CHECK(calls("cuMemAlloc_v2") == drv, "the refused allocation never reached the driver");
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 512 * MiB, "free %zu after 512Mi", fr);
  CHECK(p_free(a) == CUDA_SUCCESS, "free 512Mi");
  CHECK(p_alloc(&b, 600 * MiB) == CUDA_SUCCESS, "600Mi fits after the free");
  CHECK(p_managed(&m, 300 * MiB, 1) == CUDA_SUCCESS, "managed 300Mi");
  CHECK(p_async(&x, 200 * MiB, NULL) == CUDA_ERROR_OUT_OF_MEMORY, "async 200Mi -> out of memory (1100Mi)");
  CHECK(p_async_ptsz(&y, 100 * MiB, NULL) == CUDA_SUCCESS, "async (ptsz) 100Mi -> 1000Mi used");
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 24 * MiB, "free %zu = 24Mi", fr);
  CHECK(p_freeasync(y, NULL) == CUDA_SUCCESS, "free async");
  CUmemGenericAllocationHandle h = 0;
  CHECK(p_create_h(&h, 124 * MiB, NULL, 0) == CUDA_SUCCESS, "cuMemCreate 124Mi (exactly at the limit)");
  CUmemGenericAllocationHandle h2 = 0;
  CHECK(p_create_h(&h2, 2 * MiB, NULL, 0) == CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate past the limit");
  CHECK(p_release_h(h) == CUDA_SUCCESS, "cuMemRelease credits");
  CUdeviceptr pp = 0;
  size_t pitch = 0;
  CHECK(p_pitch(&pp, &pitch, 1000, 1000, 4) == CUDA_SUCCESS && pitch == 1024, "pitch alloc");
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == 124 * MiB - 1024 * 1000,
        "pitch counts pitch x height: free %zu", fr);
  /* The driver itself refuses (its memory is smaller than the quota): nothing is charged. */
  CHECK(p_free(b) == CUDA_SUCCESS && p_free(m) == CUDA_SUCCESS && p_free(pp) == CUDA_SUCCESS, "free all");
  CUdeviceptr z = 0;
  CHECK(p_alloc(&z, 1000 * MiB) == CUDA_SUCCESS, "1000Mi fits once everything is freed");
  CHECK(p_free(z) == CUDA_SUCCESS, "free");
  CHECK(p_alloc(&z, 1024 * MiB) == CUDA_SUCCESS && p_free(z) == CUDA_SUCCESS, "exactly the quota fits");
  /* Peak for the status line: 1024Mi. */
  return 0;
}

static int case_driver_oom(void) {
  /* FAKE_CUDA_MEM_TOTAL < VAI_MEMORY_LIMIT: the driver refuses, the shim charges nothing. */
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && tot == 768 * MiB, "total is min(driver, quota) = %zu", tot);
  CUdeviceptr a = 0;
  CHECK(p_alloc(&a, 800 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "driver refuses 800Mi");
  CHECK(p_alloc(&a, 700 * MiB) == CUDA_SUCCESS, "700Mi still fits: the refusal was not charged");
  return 0;
}

/* Many threads allocating and freeing with address reuse: the quota must end where it began. */
static void *churn(void *arg) {
  CUcontext c = arg;
  p_setcur(c);
  unsigned seed = (unsigned)(size_t)&c;
  CUdeviceptr mine[8] = {0};
  for (int i = 0; i < 20000; i++) {
    int k = (int)(rand_r(&seed) % 8);
    if (mine[k]) {
      p_free(mine[k]);
      mine[k] = 0;
    } else if (p_alloc(&mine[k], (1 + rand_r(&seed) % 4) * MiB) != CUDA_SUCCESS) {
      mine[k] = 0;
    }
  }
  for (int k = 0; k < 8; k++)
    if (mine[k]) p_free(mine[k]);
  return NULL;
}

static int case_threads(void) {
  CUcontext c;
  CHECK(p_init(0) == CUDA_SUCCESS && p_retain(&c, 0) == CUDA_SUCCESS && p_setcur(c) == CUDA_SUCCESS,
        "init + context");
  pthread_t t[8];
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, churn, c);
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  size_t fr = 0, tot = 0;
  CHECK(p_info(&fr, &tot) == CUDA_SUCCESS && fr == tot && tot == 64 * MiB,
        "after 160000 alloc/free from 8 threads the quota is whole again: free %zu of %zu", fr, tot);
  unsigned long long (*peak)(void) = (unsigned long long (*)(void))dlsym(lib, "fakecuda_mem_peak");
  CHECK(peak && peak() <= 64 * MiB, "the driver never held more than the quota (peak %llu)",
        peak ? peak() : 0ULL);
  CUdeviceptr a = 0, b = 0;
  CHECK(p_alloc(&a, 64 * MiB) == CUDA_SUCCESS && p_alloc(&b, 1) == CUDA_ERROR_OUT_OF_MEMORY,
        "the full quota and not a byte more");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_client hooks|init|green|mps|passthrough|failed|memory|driver_oom\n");
    return 2;
  }
  setup();
  const char *c = argv[1];
  if (!strcmp(c, "hooks")) case_hooks();
  else if (!strcmp(c, "init")) case_init();
  else if (!strcmp(c, "green")) case_green();
  else if (!strcmp(c, "mps")) case_mps();
  else if (!strcmp(c, "passthrough")) case_passthrough();
  else if (!strcmp(c, "failed")) case_failed();
  else if (!strcmp(c, "memory")) case_memory();
  else if (!strcmp(c, "driver_oom")) case_driver_oom();
  else if (!strcmp(c, "threads")) case_threads();
  else if (!strcmp(c, "callers")) case_callers();
  else if (!strcmp(c, "greenhooks")) case_greenhooks();
  else if (!strcmp(c, "vmm")) case_vmm();
  else if (!strcmp(c, "async")) case_async();
  else if (!strcmp(c, "async_many")) case_async_many();
  else if (!strcmp(c, "pools")) case_pools();
  else if (!strcmp(c, "v1")) case_v1();
  else if (!strcmp(c, "quota_total")) case_quota_total();
  else {
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
  }
  printf("%s: %s (%d failed)\n", c, failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
