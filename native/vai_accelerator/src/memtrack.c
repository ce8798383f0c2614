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
} slot;

typedef struct {
  slot *slots;
  size_t cap; /* power of two */
  size_t count;
} table;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static table tables[2];
static unsigned long long used_bytes, peak_bytes, next_gen;

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
  t->slots[j] = (slot){key, size, ++next_gen, dev};
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

VAI_HIDDEN int vai_mem_reserve(unsigned long long n) {
  int ok = 1;
  pthread_mutex_lock(&mu);
  unsigned long long lim = vai_cfg.memory_limit;
  if (lim && (n > lim || used_bytes > lim - n)) {
    ok = 0;
  } else {
    used_bytes += n;
    if (used_bytes > peak_bytes) peak_bytes = used_bytes;
  }
  pthread_mutex_unlock(&mu);
  return ok ? 0 : -1;
}

VAI_HIDDEN void vai_mem_unreserve(unsigned long long n) {
  pthread_mutex_lock(&mu);
  used_bytes = used_bytes >= n ? used_bytes - n : 0;
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN void vai_mem_commit(int kind, unsigned long long key, unsigned long long n, int dev) {
  if (!key) return;
  pthread_mutex_lock(&mu);
  table *t = &tables[kind];
  size_t at;
  if (find(t, key, &at)) { /* the driver reused a freed address before that free was settled:
                              credit the old entry now (its release will find a newer gen) */
    used_bytes = used_bytes >= t->slots[at].size ? used_bytes - t->slots[at].size : 0;
  }
  put(t, key, n, dev);
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN unsigned long long vai_mem_release(int kind, unsigned long long key) {
  unsigned long long n = 0;
  pthread_mutex_lock(&mu);
  table *t = &tables[kind];
  size_t at;
  if (key && find(t, key, &at)) {
    n = t->slots[at].size;
    erase_at(t, at);
    used_bytes = used_bytes >= n ? used_bytes - n : 0;
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
    erase_at(t, at);
    used_bytes = used_bytes >= n ? used_bytes - n : 0;
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
        unsigned long long n = t->slots[i].size;
        used_bytes = used_bytes >= n ? used_bytes - n : 0;
        erase_at(t, i); /* slot i may now hold a shifted entry: look at it again */
      } else {
        i++;
      }
    }
  }
  pthread_mutex_unlock(&mu);
}

VAI_HIDDEN void vai_mem_stats(unsigned long long *used, unsigned long long *peak) {
  pthread_mutex_lock(&mu);
  if (used) *used = used_bytes;
  if (peak) *peak = peak_bytes;
  pthread_mutex_unlock(&mu);
}
