/* fake_cuda.c - a fake libcuda.so.1 for the shim's CPU tests.
 *
 * Emulates the documented / measured behaviour of the driver entry points the shim touches
 * (shared/docs/sm-partitioning.md, RESULTS.md): exec affinity only under MPS (else
 * CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY), affinity rounded up to an even count and, at or above
 * an MPS client's share, escaping it (the whole GPU), an MPS client
 * with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=p seeing floor-to-even(p% of the SMs), at least 8, green contexts
 * splitting SMs in steps of 8, a per-thread context stack, and cuGetProcAddress resolving a base
 * name + CUDA version + stream flag to an ABI variant (cudaTypedefs.h). It records every call.
 *
 * Memory follows the driver's documented semantics, not the shim's: VMM physical memory lives
 * until its handle is released (creation + retains) AND every mapping is unmapped; async frees
 * happen when their stream executes them (streams are queues that run at cuStreamSynchronize,
 * cuEventSynchronize, cuCtxSynchronize or fakecuda_progress()); memory pools keep freed memory
 * reserved up to their release threshold, give it back at synchronisation and cuMemPoolTrimTo;
 * a green context runs on the SM set in the opaque part of its resource, whatever smCount says.
 *
 * It does NOT emulate: kernels, real memory, stream-ordered reuse of a pending free's memory,
 * multiple processes, or the exact error codes of every misuse. Environment knobs (read at cuInit):
 *   FAKE_CUDA_SMS (132), FAKE_CUDA_MPS (0/1), FAKE_CUDA_NO_GREEN (0/1),
 *   FAKE_CUDA_MPS_ESCAPE (1: the MPS client is handed the whole GPU whatever its percentage),
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
} calls[256];

static void record(const char *name) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < 256; i++) {
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
  for (int i = 0; i < 256 && calls[i].name; i++)
    if (strcmp(calls[i].name, name) == 0) n = calls[i].count;
  pthread_mutex_unlock(&mu);
  return n;
}

/* ---- device state ---- */
static int inited, n_sms = 132, mps, no_green, gpa_internal, mps_pct_seen = -1, mps_escape;
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
  if (mps && !mps_escape && mps_pct_seen > 0 && mps_pct_seen < 100) {
    unsigned v = (unsigned)(mps_pct_seen * n_sms / 100) & ~1u;
    return v < 8 ? 8 : v; /* measured on an H200: even counts, never fewer than 8 */
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
  mps_escape = (int)env_ull("FAKE_CUDA_MPS_ESCAPE", 0);
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
  else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
    *pi = 9;
  else if (a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
    *pi = 0;
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
/* The SM set of a resource lives in its opaque part (bytes 0-31: a bitmask of SM ids), as the
 * real driver keeps it there: smCount is only a report. */
static unsigned popcount_set(const unsigned char *m) {
  unsigned n = 0;
  for (int i = 0; i < 32; i++) n += (unsigned)__builtin_popcount(m[i]);
  return n;
}
static void full_set(unsigned char *m, unsigned count) {
  memset(m, 0, 32);
  for (unsigned i = 0; i < count && i < 256; i++) m[i / 8] |= (unsigned char)(1u << (i % 8));
}
static void fill_res(CUdevResource *r, unsigned count) {
  memset(r, 0, sizeof *r);
  r->type = CU_DEV_RESOURCE_TYPE_SM;
  full_set(r->_internal_padding, count);
  r->sm.smCount = count;
  r->sm.minSmPartitionSize = 8;
  r->sm.smCoscheduledAlignment = 8;
}
FN(cuDeviceGetDevResource, (CUdevice d, CUdevResource *r, CUdevResourceType t), (d, r, t)) {
  NEED_INIT;
  if (no_green) return CUDA_ERROR_NOT_SUPPORTED;
  if (t != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  fill_res(r, visible_sms()); /* measured: an MPS client's resource is its share */
  return CUDA_SUCCESS;
}
FN(cuDevSmResourceSplitByCount,
   (CUdevResource * res, unsigned *nb, const CUdevResource *in, CUdevResource *rem, unsigned fl,
    unsigned min),
   (res, nb, in, rem, fl, min)) {
  NEED_INIT;
  if (!in || in->type != CU_DEV_RESOURCE_TYPE_SM || !nb) return CUDA_ERROR_INVALID_VALUE;
  unsigned want = min < 8 ? 8 : (min + 7) / 8 * 8;
  if (want > popcount_set(in->_internal_padding)) return CUDA_ERROR_INVALID_VALUE;
  CUdevResource a = *in, b = *in;
  memset(a._internal_padding, 0, 32);
  memset(b._internal_padding, 0, 32);
  unsigned taken = 0;
  for (int i = 0; i < 256; i++) {
    if (!(in->_internal_padding[i / 8] & (1u << (i % 8)))) continue;
    unsigned char *dst = taken < want ? a._internal_padding : b._internal_padding;
    dst[i / 8] |= (unsigned char)(1u << (i % 8));
    taken++;
  }
  a.sm.smCount = popcount_set(a._internal_padding);
  b.sm.smCount = popcount_set(b._internal_padding);
  if (res) *res = a;
  if (rem) *rem = b;
  *nb = 1;
  return CUDA_SUCCESS;
}
FN(cuDevResourceGenerateDesc, (CUdevResourceDesc * d, CUdevResource *r, unsigned n), (d, r, n)) {
  NEED_INIT;
  if (!r || n != 1 || r->type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  struct CUdevResourceDesc_st *x = calloc(1, sizeof *x);
  x->sms = popcount_set(r->_internal_padding); /* the set, not the reported smCount */
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
FN(cuGreenCtxGetDevResource, (CUgreenCtx g, CUdevResource *r, CUdevResourceType t), (g, r, t)) {
  NEED_INIT;
  if (!g || t != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  fill_res(r, g->ctx.sms);
  return CUDA_SUCCESS;
}
FN(cuCtxGetDevResource, (CUcontext c, CUdevResource *r, CUdevResourceType t), (c, r, t)) {
  NEED_INIT;
  if (!c || t != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_VALUE;
  fill_res(r, as_ctx(c)->sms);
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
/* Physical memory: mem_used counts every byte the "device" holds: plain allocations, VMM handles
 * still alive, and what memory pools reserve. */
enum { A_PLAIN = 1, A_POOL = 2 };
#ifndef FAKE_MAX_ALLOCS
#define FAKE_MAX_ALLOCS 4096 /* live allocations; the benchmark builds a larger fake */
#endif
static struct {
  unsigned long long key, size;
  int kind;
  int pool;
} allocs[FAKE_MAX_ALLOCS];
static int low_free; /* every slot below it is in use */
static const unsigned long long next_ptr = 0x100000000000ULL;

static int charge(unsigned long long n) { /* caller holds mu */
  if (mem_used + n > mem_total) return 0;
  mem_used += n;
  if (mem_used > mem_peak) mem_peak = mem_used;
  return 1;
}
static void uncharge(unsigned long long n) { mem_used = mem_used >= n ? mem_used - n : 0; }

static int new_slot(unsigned long long n, int kind, int pool, int v1, unsigned long long *out) {
  for (int i = low_free; i < FAKE_MAX_ALLOCS; i++) {
    if (allocs[i].key) continue;
    low_free = i + 1;
    /* Slot i always maps to the same address, so freed addresses come back at once (as a
     * real allocator's do): races between a free and a new allocation show up in tests. */
    allocs[i].key = v1 ? 0x10000ULL + ((unsigned long long)i << 16) : next_ptr + ((unsigned long long)i << 32);
    allocs[i].size = n;
    allocs[i].kind = kind;
    allocs[i].pool = pool;
    *out = allocs[i].key;
    return i;
  }
  return -1;
}

static CUresult fake_alloc(unsigned long long *out, unsigned long long n, int v1) {
  NEED_CTX;
  if (n == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  if (charge(n)) {
    if (new_slot(n, A_PLAIN, -1, v1, out) >= 0)
      r = CUDA_SUCCESS;
    else
      uncharge(n);
  }
  pthread_mutex_unlock(&mu);
  return r;
}

/* ---- memory pools ---- */
#define N_POOLS 16
static struct {
  int used_slot;
  unsigned long long reserved, used, threshold;
} pool_tab[N_POOLS] = {{1, 0, 0, 0}}; /* pool 0: the device's default pool, threshold 0 */
static CUmemoryPool pool_handle(int i) { return (CUmemoryPool)(uintptr_t)(0x7000 + i); }
static int pool_of(CUmemoryPool p) {
  int i = (int)((uintptr_t)p - 0x7000);
  return i >= 0 && i < N_POOLS && pool_tab[i].used_slot ? i : -1;
}
/* Gives back what a pool holds beyond max(used, keep); caller holds mu. */
static void pool_release_to(int i, unsigned long long keep) {
  unsigned long long floor = pool_tab[i].used > keep ? pool_tab[i].used : keep;
  if (pool_tab[i].reserved > floor) {
    uncharge(pool_tab[i].reserved - floor);
    pool_tab[i].reserved = floor;
  }
}
static CUresult pool_alloc(unsigned long long *out, unsigned long long n, int i) {
  NEED_CTX;
  if (n == 0 || i < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  unsigned long long spare = pool_tab[i].reserved - pool_tab[i].used;
  unsigned long long grow = spare >= n ? 0 : n - spare;
  if (charge(grow)) {
    if (new_slot(n, A_POOL, i, 0, out) >= 0) {
      pool_tab[i].reserved += grow;
      pool_tab[i].used += n;
      r = CUDA_SUCCESS;
    } else {
      uncharge(grow);
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

/* The slot an address was handed out from (new_slot's mapping, inverted); -1 if none. */
static int slot_of(unsigned long long key) {
  unsigned long long i = key >= next_ptr ? (key - next_ptr) >> 32 : (key - 0x10000ULL) >> 16;
  return key >= 0x10000ULL && i < FAKE_MAX_ALLOCS && allocs[i].key == key ? (int)i : -1;
}

/* Frees an allocation now (caller holds mu). */
static CUresult free_now(unsigned long long key) {
  int i = slot_of(key);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  if (allocs[i].kind == A_POOL)
    pool_tab[allocs[i].pool].used -= allocs[i].size; /* back to the pool, still reserved */
  else
    uncharge(allocs[i].size);
  allocs[i].key = 0;
  if (i < low_free) low_free = i;
  return CUDA_SUCCESS;
}

static int slow_free = -1;

static CUresult fake_free(unsigned long long key) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  CUresult r = free_now(key);
  pthread_mutex_unlock(&mu);
  /* FAKE_CUDA_SLOW_FREE=1: return late, after the address is already free for others. */
  if (slow_free < 0) slow_free = (int)env_ull("FAKE_CUDA_SLOW_FREE", 0);
  if (slow_free) usleep(20);
  return r;
}

/* ---- streams and events: work runs when the stream is synchronised (or fakecuda_progress) ---- */
enum { OP_FREE = 1, OP_EVENT = 2 };
struct CUevent_st {
  int recorded, done;
};
#define N_STREAMS 16
#ifndef N_OPS
#define N_OPS 4096 /* queued operations per stream; the benchmark builds a larger fake */
#endif
static struct {
  int used_slot;
  int n;
  struct {
    int op;
    unsigned long long key;
    struct CUevent_st *ev;
  } ops[N_OPS];
} streams[N_STREAMS] = {{1, 0, {{0, 0, NULL}}}}; /* stream 0: the NULL (legacy) stream */
static int capturing;
static int stream_of(CUstream s) {
  if (!s) return 0;
  int i = (int)((uintptr_t)s - 0x5000);
  return i > 0 && i < N_STREAMS && streams[i].used_slot ? i : -1;
}
/* Runs stream i's queue up to and including op `upto` (-1: all); caller holds mu. Executed
 * frees return pool memory; a synchronisation then releases pools down to their threshold. */
static void run_stream(int i, int upto) {
  int k = 0, last = upto < 0 ? streams[i].n - 1 : upto;
  for (; k <= last && k < streams[i].n; k++) {
    if (streams[i].ops[k].op == OP_FREE) free_now(streams[i].ops[k].key);
    if (streams[i].ops[k].op == OP_EVENT) streams[i].ops[k].ev->done = 1;
  }
  memmove(streams[i].ops, streams[i].ops + k, (size_t)(streams[i].n - k) * sizeof streams[i].ops[0]);
  streams[i].n -= k;
}
static void sync_pools(void) {
  for (int p = 0; p < N_POOLS; p++)
    if (pool_tab[p].used_slot) pool_release_to(p, pool_tab[p].threshold);
}
EXPORT void fakecuda_progress(void) { /* the GPU catches up with every stream */
  pthread_mutex_lock(&mu);
  for (int i = 0; i < N_STREAMS; i++)
    if (streams[i].used_slot) run_stream(i, -1);
  pthread_mutex_unlock(&mu);
}
EXPORT void fakecuda_set_capturing(int on) { capturing = on; }
EXPORT unsigned long long fakecuda_mem_used(void) { return mem_used; }
static int enqueue(int i, int op, unsigned long long key, struct CUevent_st *ev) {
  if (streams[i].n >= N_OPS) run_stream(i, 0);
  streams[i].ops[streams[i].n].op = op;
  streams[i].ops[streams[i].n].key = key;
  streams[i].ops[streams[i].n].ev = ev;
  streams[i].n++;
  return 1;
}

FN(cuStreamCreate, (CUstream * s, unsigned flags), (s, flags)) {
  NEED_CTX;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  for (int i = 1; i < N_STREAMS; i++)
    if (!streams[i].used_slot) {
      streams[i].used_slot = 1;
      streams[i].n = 0;
      *s = (CUstream)(uintptr_t)(0x5000 + i);
      r = CUDA_SUCCESS;
      break;
    }
  pthread_mutex_unlock(&mu);
  return r;
}
FN(cuStreamSynchronize, (CUstream s), (s)) {
  NEED_INIT;
  int i = stream_of(s);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  run_stream(i, -1);
  sync_pools();
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuStreamIsCapturing, (CUstream s, int *st), (s, st)) {
  NEED_INIT;
  *st = capturing;
  return CUDA_SUCCESS;
}
FN(cuCtxSynchronize, (void), ()) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < N_STREAMS; i++)
    if (streams[i].used_slot) run_stream(i, -1);
  sync_pools();
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuEventCreate, (CUevent * e, unsigned flags), (e, flags)) {
  NEED_CTX;
  *e = calloc(1, sizeof(struct CUevent_st));
  return CUDA_SUCCESS;
}
FN(cuEventDestroy_v2, (CUevent e), (e)) {
  NEED_INIT;
  return CUDA_SUCCESS; /* leaked on purpose: a pending record may still point at it */
}
FN(cuEventRecord, (CUevent e, CUstream s), (e, s)) {
  NEED_INIT;
  int i = stream_of(s);
  if (i < 0 || !e) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  e->recorded = 1;
  e->done = 0;
  enqueue(i, OP_EVENT, 0, e);
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuEventQuery, (CUevent e), (e)) {
  NEED_INIT;
  return !e->recorded || e->done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
FN(cuEventSynchronize, (CUevent e), (e)) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < N_STREAMS && !e->done; i++)
    for (int k = 0; k < streams[i].n; k++)
      if (streams[i].ops[k].op == OP_EVENT && streams[i].ops[k].ev == e) {
        run_stream(i, k);
        break;
      }
  sync_pools();
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}

FN(cuMemAlloc_v2, (CUdeviceptr * p, size_t n), (p, n)) { return fake_alloc(p, n, 0); }
FN(cuMemAllocManaged, (CUdeviceptr * p, size_t n, unsigned f), (p, n, f)) {
  return fake_alloc(p, n, 0);
}
FN(cuMemAllocAsync, (CUdeviceptr * p, size_t n, CUstream s), (p, n, s)) {
  return pool_alloc(p, n, 0);
}
FN(cuMemAllocAsync_ptsz, (CUdeviceptr * p, size_t n, CUstream s), (p, n, s)) {
  return pool_alloc(p, n, 0);
}
FN(cuMemAllocFromPoolAsync, (CUdeviceptr * p, size_t n, CUmemoryPool pool, CUstream s),
   (p, n, pool, s)) {
  return pool_alloc(p, n, pool_of(pool));
}
FN(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr * p, size_t n, CUmemoryPool pool, CUstream s),
   (p, n, pool, s)) {
  return pool_alloc(p, n, pool_of(pool));
}
FN(cuMemAllocPitch_v2, (CUdeviceptr * p, size_t *pitch, size_t w, size_t h, unsigned e),
   (p, pitch, w, h, e)) {
  size_t pt = (w + 511) / 512 * 512;
  CUresult r = fake_alloc(p, (unsigned long long)pt * h, 0);
  if (r == CUDA_SUCCESS) *pitch = pt;
  return r;
}
FN(cuMemFree_v2, (CUdeviceptr p), (p)) { return fake_free(p); }
/* Async frees happen when the stream gets there. */
static CUresult free_async(CUdeviceptr p, CUstream s) {
  NEED_INIT;
  int i = stream_of(s);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  enqueue(i, OP_FREE, p, NULL);
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuMemFreeAsync, (CUdeviceptr p, CUstream s), (p, s)) { return free_async(p, s); }
FN(cuMemFreeAsync_ptsz, (CUdeviceptr p, CUstream s), (p, s)) { return free_async(p, s); }
FN(cuMemGetInfo_v2, (size_t *fr, size_t *tot), (fr, tot)) {
  NEED_CTX;
  *fr = (size_t)(mem_total - mem_used);
  *tot = (size_t)mem_total;
  return CUDA_SUCCESS;
}
/* The pre-3.2 ABI: 32-bit sizes and addresses. */
FN(cuMemAlloc, (unsigned *p, unsigned n), (p, n)) {
  unsigned long long k = 0;
  CUresult r = fake_alloc(&k, n, 1);
  if (r == CUDA_SUCCESS) *p = (unsigned)k;
  return r;
}
FN(cuMemFree, (unsigned p), (p)) { return fake_free(p); }
FN(cuMemGetInfo, (unsigned *fr, unsigned *tot), (fr, tot)) {
  NEED_CTX;
  unsigned long long f = mem_total - mem_used;
  *fr = f > 0xffffffffULL ? 0xffffffffu : (unsigned)f;
  *tot = mem_total > 0xffffffffULL ? 0xffffffffu : (unsigned)mem_total;
  return CUDA_SUCCESS;
}
FN(cuMemAllocPitch, (unsigned *p, unsigned *pitch, unsigned w, unsigned h, unsigned e),
   (p, pitch, w, h, e)) {
  unsigned pt = (w + 511) / 512 * 512;
  unsigned long long k = 0;
  CUresult r = fake_alloc(&k, (unsigned long long)pt * h, 1);
  if (r == CUDA_SUCCESS) {
    *p = (unsigned)k;
    *pitch = pt;
  }
  return r;
}

FN(cuDeviceGetMemPool, (CUmemoryPool * p, CUdevice d), (p, d)) {
  NEED_INIT;
  *p = pool_handle(0);
  return CUDA_SUCCESS;
}
FN(cuMemPoolCreate, (CUmemoryPool * p, const void *props), (p, props)) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  for (int i = 1; i < N_POOLS; i++)
    if (!pool_tab[i].used_slot) {
      pool_tab[i].used_slot = 1;
      pool_tab[i].reserved = pool_tab[i].used = pool_tab[i].threshold = 0;
      *p = pool_handle(i);
      r = CUDA_SUCCESS;
      break;
    }
  pthread_mutex_unlock(&mu);
  return r;
}
FN(cuMemPoolDestroy, (CUmemoryPool p), (p)) {
  NEED_INIT;
  int i = pool_of(p);
  if (i <= 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  pool_release_to(i, 0);
  pool_tab[i].threshold = 0; /* live allocations are freed when freed */
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuMemPoolTrimTo, (CUmemoryPool p, size_t keep), (p, keep)) {
  NEED_INIT;
  int i = pool_of(p);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  pool_release_to(i, keep);
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuMemPoolSetAttribute, (CUmemoryPool p, int a, void *v), (p, a, v)) {
  NEED_INIT;
  int i = pool_of(p);
  if (i < 0 || a != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) return CUDA_ERROR_INVALID_VALUE;
  pool_tab[i].threshold = *(cuuint64_t *)v;
  return CUDA_SUCCESS;
}
FN(cuMemPoolGetAttribute, (CUmemoryPool p, int a, void *v), (p, a, v)) {
  NEED_INIT;
  int i = pool_of(p);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  cuuint64_t x = a == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT ? pool_tab[i].reserved
                 : a == CU_MEMPOOL_ATTR_USED_MEM_CURRENT   ? pool_tab[i].used
                 : a == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD  ? pool_tab[i].threshold
                                                           : 0;
  pthread_mutex_unlock(&mu);
  *(cuuint64_t *)v = x;
  return CUDA_SUCCESS;
}

/* ---- VMM: handles, address ranges, mappings ---- */
#define N_HANDLES 1024
static struct {
  unsigned long long size;
  int refs, maps, alive;
} handles[N_HANDLES];
#define N_MAPS 2048
static struct {
  unsigned long long va, size;
  int h;
} vmaps[N_MAPS];
static unsigned long long next_va = 0x200000000000ULL;

/* Physical memory goes when nothing references the handle; caller holds mu. */
static void handle_settle(int h) {
  if (handles[h].alive && handles[h].refs == 0 && handles[h].maps == 0) {
    handles[h].alive = 0;
    uncharge(handles[h].size);
  }
}
FN(cuMemCreate,
   (CUmemGenericAllocationHandle * h, size_t n, const CUmemAllocationProp *prop,
    unsigned long long f),
   (h, n, prop, f)) {
  NEED_CTX;
  if (n == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  for (int i = 1; i < N_HANDLES; i++) {
    if (handles[i].alive) continue;
    if (!charge(n)) break;
    handles[i].size = n;
    handles[i].refs = 1;
    handles[i].maps = 0;
    handles[i].alive = 1;
    *h = (CUmemGenericAllocationHandle)i;
    r = CUDA_SUCCESS;
    break;
  }
  pthread_mutex_unlock(&mu);
  return r;
}
FN(cuMemRelease, (CUmemGenericAllocationHandle h), (h)) {
  NEED_INIT;
  if (h == 0 || h >= N_HANDLES || !handles[h].alive || handles[h].refs == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  handles[h].refs--; /* documented: memory stays while a mapping of it exists */
  handle_settle((int)h);
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuMemAddressReserve,
   (CUdeviceptr * p, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags),
   (p, size, align, addr, flags)) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  *p = next_va;
  next_va += (size + 0xfffff) & ~0xfffffULL;
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
FN(cuMemAddressFree, (CUdeviceptr p, size_t size), (p, size)) {
  NEED_INIT;
  return CUDA_SUCCESS;
}
FN(cuMemMap, (CUdeviceptr va, size_t size, size_t off, CUmemGenericAllocationHandle h, unsigned long long f),
   (va, size, off, h, f)) {
  NEED_INIT;
  if (h == 0 || h >= N_HANDLES || !handles[h].alive || handles[h].refs == 0 || off + size > handles[h].size)
    return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
  for (int i = 0; i < N_MAPS; i++)
    if (!vmaps[i].size) {
      vmaps[i].va = va;
      vmaps[i].size = size;
      vmaps[i].h = (int)h;
      handles[h].maps++;
      r = CUDA_SUCCESS;
      break;
    }
  pthread_mutex_unlock(&mu);
  return r;
}
FN(cuMemUnmap, (CUdeviceptr va, size_t size), (va, size)) {
  NEED_INIT;
  pthread_mutex_lock(&mu);
  int n = 0;
  for (int i = 0; i < N_MAPS; i++)
    if (vmaps[i].size && vmaps[i].va >= va && vmaps[i].va < va + size) {
      int h = vmaps[i].h;
      vmaps[i].size = 0;
      handles[h].maps--;
      handle_settle(h);
      n++;
    }
  pthread_mutex_unlock(&mu);
  return n ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
FN(cuMemRetainAllocationHandle, (CUmemGenericAllocationHandle * h, void *addr), (h, addr)) {
  NEED_INIT;
  unsigned long long a = (unsigned long long)(uintptr_t)addr;
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < N_MAPS; i++)
    if (vmaps[i].size && a >= vmaps[i].va && a < vmaps[i].va + vmaps[i].size) {
      handles[vmaps[i].h].refs++; /* the same handle, one more reference to release */
      *h = (CUmemGenericAllocationHandle)vmaps[i].h;
      r = CUDA_SUCCESS;
      break;
    }
  pthread_mutex_unlock(&mu);
  return r;
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
    SYM("cuMemAlloc", 2000, -1, cuMemAlloc),
    SYM("cuMemAllocPitch", 2000, -1, cuMemAllocPitch),
    SYM("cuMemFree", 2000, -1, cuMemFree),
    SYM("cuMemGetInfo", 2000, -1, cuMemGetInfo),
    SYM("cuMemMap", 10020, -1, cuMemMap),
    SYM("cuMemUnmap", 10020, -1, cuMemUnmap),
    SYM("cuMemAddressReserve", 10020, -1, cuMemAddressReserve),
    SYM("cuMemAddressFree", 10020, -1, cuMemAddressFree),
    SYM("cuMemRetainAllocationHandle", 11000, -1, cuMemRetainAllocationHandle),
    SYM("cuDeviceGetMemPool", 11020, -1, cuDeviceGetMemPool),
    SYM("cuMemPoolCreate", 11020, -1, cuMemPoolCreate),
    SYM("cuMemPoolDestroy", 11020, -1, cuMemPoolDestroy),
    SYM("cuMemPoolTrimTo", 11020, -1, cuMemPoolTrimTo),
    SYM("cuMemPoolSetAttribute", 11020, -1, cuMemPoolSetAttribute),
    SYM("cuMemPoolGetAttribute", 11020, -1, cuMemPoolGetAttribute),
    SYM("cuStreamCreate", 2000, -1, cuStreamCreate),
    SYM("cuStreamSynchronize", 2000, -1, cuStreamSynchronize),
    SYM("cuStreamIsCapturing", 10000, -1, cuStreamIsCapturing),
    SYM("cuCtxSynchronize", 2000, -1, cuCtxSynchronize),
    SYM("cuEventCreate", 2000, -1, cuEventCreate),
    SYM("cuEventDestroy", 4000, -1, cuEventDestroy_v2),
    SYM("cuEventRecord", 2000, -1, cuEventRecord),
    SYM("cuEventQuery", 2000, -1, cuEventQuery),
    SYM("cuEventSynchronize", 2000, -1, cuEventSynchronize),
    SYM("cuGreenCtxGetDevResource", 12040, -1, cuGreenCtxGetDevResource),
    SYM("cuCtxGetDevResource", 12040, -1, cuCtxGetDevResource),
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
