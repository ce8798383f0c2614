/* memtrack.c - per-process GPU memory accounting against VAI_MEMORY_LIMIT.
 *
 * Allocations reserve their size before the driver call (so two threads cannot both pass the
 * check), commit it under the returned pointer/handle on success, and frees credit it back.
 * Two open-addressing tables (device pointers, cuMemCreate handles), linear probing with
 * backward-shift deletion; one mutex, taken only on allocation and free, never on launches. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vai_internal.h"

typedef struct {
  unsigned long long key; /* 0 = empty slot (no allocation is ever at address/handle 0) */
  unsigned long long size;
  unsigned long long gen; /* which allocation at this key (addresses are reused) */
  int dev;
  int pool;               /* pointers: index of the memory pool it came from, -1 none */
  /* VMM handles: the physical memory lives while the handle is unreleased (refs > 0: the
   * creation plus each cuMemRetainAllocationHandle) OR any mapping of it exists (maps > 0). */
  int refs, maps;
  unsigned long long alias; /* a handle from cuMemRetainAllocationHandle: the original's key */
} slot;

typedef struct {
  slot *slots;
  size_t cap; /* power of two */
  size_t count;
} table;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static table tables[2];
static unsigned long long used_bytes, peak_bytes, next_gen;
/* Reserved-but-unused bytes of the process's memory pools (set by the shim from the driver):
 * memory the pools hold for reuse counts against the quota like live allocations. */
static unsigned long long pool_excess;
static unsigned long long pool_live[VAI_MAX_POOLS];

/* Live VMM mappings: [va, va + size) backed by handle. */
typedef struct {
  unsigned long long va, size, handle;
} mapping;
static mapping *maps_arr;
static size_t n_maps, cap_maps;

static size_t hash(unsigned long long k, size_t cap) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return (size_t)k & (cap - 1);
}

static int grow(table *t) {
  size_t ncap = t->cap ? t->cap * 2 : 1024;
  slot *ns = calloc(ncap, sizeof *ns);
  if (!ns) return -1;
  for (size_t i = 0; i < t->cap; i++) {
    if (!t->slots[i].key) continue;
    size_t j = hash(t->slots[i].key, ncap);
    while (ns[j].key) j = (j + 1) & (ncap - 1);
    ns[j] = t->slots[i];
  }
  free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

static void put(table *t, unsigned long long key, unsigned long long size, int dev) {
  if ((t->count + 1) * 4 > t->cap * 3 && grow(t) != 0) return; /* untracked: never crash */
  size_t j = hash(key, t->cap);
  while (t->slots[j].key && t->slots[j].key != key) j = (j + 1) & (t->cap - 1);
  if (!t->slots[j].key) t->count++;
  t->slots[j] = (slot){key, size, ++next_gen, dev, -1, 1, 0, 0};
}

static void erase_at(table *t, size_t i) {
  /* Backward-shift deletion keeps probe chains intact without tombstones. */
  size_t j = i;
  for (;;) {
    t->slots[i].key = 0;
    for (;;) {
      j = (j + 1) & (t->cap - 1);
      if (!t->slots[j].key) {
        t->count--;
        return;
      }
      size_t h = hash(t->slots[j].key, t->cap);
      /* Move j back to i unless its home h lies cyclically in (i, j]. */
      if (i <= j ? (i < h && h <= j) : (i < h || h <= j)) continue;
      break;
    }
    t->slots[i] = t->slots[j];
    i = j;
  }
}

static int find(const table *t, unsigned long long key, size_t *at) {
  if (!t->cap) return 0;
  size_t j = hash(key, t->cap);
  while (t->slots[j].key) {
    if (t->slots[j].key == key) {
      *at = j;
      return 1;
    }
    j = (j + 1) & (t->cap - 1);
  }
  return 0;
}

static void drop_at(table *t, size_t at) {
  unsigned long long n = t->slots[at].size;
  int pool = t->slots[at].pool;
  if (pool >= 0 && pool < VAI_MAX_POOLS) pool_live[pool] = pool_live[pool] >= n ? pool_live[pool] - n : 0;
  erase_at(t, at);
  used_bytes = used_bytes >= n ? used_bytes - n : 0;
}

VAI_HIDDEN int vai_mem_reserve(unsigned long long n) {
  int ok = 1;
  pthread_mutex_lock(&mu);
  unsigned long long lim = vai_cfg.memory_limit;
  unsigned long long held = used_bytes + pool_excess;
  if (lim && (n > lim || held > lim - n)) {
    ok = 0;
  } else {
    used_bytes += n;
    if (used_bytes + pool_excess > peak_bytes) peak_bytes = used_bytes + pool_excess;
  }
  pthread_mutex_unlock(&mu);
  return ok ? 0 : -1;
}

VAI_HIDDEN void vai_mem_unreserve(unsigned long long n) {
  pthread_mutex_lock(&mu);
  used_bytes = used_bytes >= n ? used_bytes - n : 0;
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN void vai_mem_commit_pool(int kind, unsigned long long key, unsigned long long n, int dev,
                                    int pool) {
  if (!key) return;
  pthread_mutex_lock(&mu);
  table *t = &tables[kind];
  size_t at;
  if (find(t, key, &at)) { /* the driver reused a freed address before that free was settled
                              (stream-ordered reuse): credit the old entry now (its release will
                              find a newer generation and credit nothing) */
    unsigned long long o = t->slots[at].size;
    int op = t->slots[at].pool;
    if (op >= 0 && op < VAI_MAX_POOLS) pool_live[op] = pool_live[op] >= o ? pool_live[op] - o : 0;
    used_bytes = used_bytes >= o ? used_bytes - o : 0;
  }
  put(t, key, n, dev);
  if (find(t, key, &at) && pool >= 0 && pool < VAI_MAX_POOLS) {
    t->slots[at].pool = pool;
    pool_live[pool] += n;
  }
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN void vai_mem_commit(int kind, unsigned long long key, unsigned long long n, int dev) {
  vai_mem_commit_pool(kind, key, n, dev, -1);
}

VAI_HIDDEN unsigned long long vai_mem_pool_live(int pool) {
  pthread_mutex_lock(&mu);
  unsigned long long v = pool >= 0 && pool < VAI_MAX_POOLS ? pool_live[pool] : 0;
  pthread_mutex_unlock(&mu);
  return v;
}

VAI_HIDDEN void vai_mem_set_pool_excess(unsigned long long bytes) {
  pthread_mutex_lock(&mu);
  pool_excess = bytes;
  if (used_bytes + pool_excess > peak_bytes) peak_bytes = used_bytes + pool_excess;
  pthread_mutex_unlock(&mu);
}

/* ---- VMM: handles live until released AND unmapped ------------------------------------------- */

/* The entry a handle stands for (following a retained alias); caller holds mu. */
static slot *handle_slot(unsigned long long h) {
  table *t = &tables[VAI_MEM_HANDLE];
  size_t at;
  if (!h || !find(t, h, &at)) return NULL;
  if (t->slots[at].alias) {
    unsigned long long o = t->slots[at].alias;
    if (!find(t, o, &at)) return NULL;
  }
  return &t->slots[at];
}

/* Frees the handle's entry when nothing keeps its memory alive; caller holds mu. */
static unsigned long long settle_handle(unsigned long long h) {
  table *t = &tables[VAI_MEM_HANDLE];
  size_t at;
  if (!find(t, h, &at) || t->slots[at].refs > 0 || t->slots[at].maps > 0) return 0;
  unsigned long long n = t->slots[at].size;
  drop_at(t, at);
  return n;
}

VAI_HIDDEN unsigned long long vai_mem_vmm_release(unsigned long long h) {
  unsigned long long n = 0;
  pthread_mutex_lock(&mu);
  table *t = &tables[VAI_MEM_HANDLE];
  size_t at;
  if (h && find(t, h, &at)) {
    unsigned long long orig = t->slots[at].alias ? t->slots[at].alias : h;
    if (t->slots[at].alias) erase_at(t, at); /* the alias itself holds no bytes */
    slot *o = handle_slot(orig);
    if (o && o->refs > 0) o->refs--;
    n = settle_handle(orig);
  }
  pthread_mutex_unlock(&mu);
  return n;
}

VAI_HIDDEN int vai_mem_vmm_map(unsigned long long va, unsigned long long size, unsigned long long h) {
  int ok = 0;
  pthread_mutex_lock(&mu);
  slot *o = handle_slot(h);
  if (o && va) {
    if (n_maps == cap_maps) {
      size_t nc = cap_maps ? cap_maps * 2 : 256;
      mapping *nm = realloc(maps_arr, nc * sizeof *nm);
      if (nm) {
        maps_arr = nm;
        cap_maps = nc;
      }
    }
    if (n_maps < cap_maps) {
      maps_arr[n_maps++] = (mapping){va, size, o->key};
      o->maps++;
      ok = 1;
    }
  }
  pthread_mutex_unlock(&mu);
  return ok;
}

VAI_HIDDEN unsigned long long vai_mem_vmm_unmap(unsigned long long va, unsigned long long size) {
  unsigned long long n = 0;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_maps;) {
    mapping m = maps_arr[i];
    if (m.va >= va && m.va < va + size) {
      maps_arr[i] = maps_arr[--n_maps];
      slot *o = handle_slot(m.handle);
      if (o && o->maps > 0) o->maps--;
      n += settle_handle(m.handle);
    } else {
      i++;
    }
  }
  pthread_mutex_unlock(&mu);
  return n;
}

VAI_HIDDEN int vai_mem_vmm_retain(unsigned long long newh, unsigned long long va) {
  int ok = 0;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_maps && !ok; i++) {
    if (va < maps_arr[i].va || va >= maps_arr[i].va + maps_arr[i].size) continue;
    slot *o = handle_slot(maps_arr[i].handle);
    if (!o) break;
    o->refs++;
    unsigned long long orig = o->key;
    if (newh != orig) { /* a new handle value: remember which allocation it keeps alive */
      table *t = &tables[VAI_MEM_HANDLE];
      put(t, newh, 0, o->dev);
      size_t at;
      if (find(t, newh, &at)) {
        t->slots[at].alias = orig;
        t->slots[at].refs = 0;
      }
    }
    ok = 1;
  }
  pthread_mutex_unlock(&mu);
  return ok;
}

VAI_HIDDEN unsigned long long vai_mem_release(int kind, unsigned long long key) {
  unsigned long long n = 0;
  pthread_mutex_lock(&mu);
  table *t = &tables[kind];
  size_t at;
  if (key && find(t, key, &at)) {
    n = t->slots[at].size;
    drop_at(t, at);
  }
  pthread_mutex_unlock(&mu);
  return n;
}

VAI_HIDDEN unsigned long long vai_mem_generation(int kind, unsigned long long key) {
  unsigned long long g = 0;
  pthread_mutex_lock(&mu);
  size_t at;
  if (key && find(&tables[kind], key, &at)) g = tables[kind].slots[at].gen;
  pthread_mutex_unlock(&mu);
  return g;
}

VAI_HIDDEN unsigned long long vai_mem_release_if(int kind, unsigned long long key,
                                                 unsigned long long gen) {
  unsigned long long n = 0;
  pthread_mutex_lock(&mu);
  table *t = &tables[kind];
  size_t at;
  if (key && find(t, key, &at) && t->slots[at].gen == gen) {
    n = t->slots[at].size;
    drop_at(t, at);
  }
  pthread_mutex_unlock(&mu);
  return n;
}

VAI_HIDDEN void vai_mem_forget_device(int dev) {
  pthread_mutex_lock(&mu);
  for (int k = 0; k < 2; k++) {
    table *t = &tables[k];
    for (size_t i = 0; i < t->cap;) {
      if (t->slots[i].key && t->slots[i].dev == dev) {
        drop_at(t, i); /* slot i may now hold a shifted entry: look at it again */
      } else {
        i++;
      }
    }
  }
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN void vai_mem_stats(unsigned long long *used, unsigned long long *peak) {
  pthread_mutex_lock(&mu);
  if (used) *used = used_bytes + pool_excess;
  if (peak) *peak = peak_bytes;
  pthread_mutex_unlock(&mu);
}
