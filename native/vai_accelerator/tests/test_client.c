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
  unsigned want_attr = (unsigned)env_int("EXPECT_ATTR", 132); /* default: the device's count */
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

#define MiB (1ULL << 20)
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
  else {
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
  }
  printf("%s: %s (%d failed)\n", c, failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
