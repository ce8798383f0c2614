/* sm_caller.c - who is asking for the SM count? The answer to
 * cuDeviceGetAttribute(MULTIPROCESSOR_COUNT) depends on it (RESULTS.md, "The SM count answer"):
 *
 *   - cuBLAS / cuBLASLt size their kernel choice from it, and on an H200 under MPS they return
 *     WRONG bf16/fp16 products for many shares when told the share (40, 60, 70, 74, 75, 80%...),
 *     while told the device's count they are right at the same speed and SM census;
 *   - everyone else (cooperative launches sized from the count, persistent kernels, occupancy
 *     maths) must be told the SMs it really runs on, or cooperative launches fail.
 *
 * So the hook asks which object the return address lies in (dladdr / dl_iterate_phdr) and
 * classifies it once per object:
 *   1. its file name starts with "libcublas" (libcublas.so.*, libcublasLt.so.*), or
 *   2. it exports cuBLAS symbols ("cublas..." in its dynamic symbol table: a library that bundles
 *      cuBLAS and re-exports it), or
 *   3. its read-only data holds strings only cuBLAS carries: the names of the environment
 *      variables cuBLAS and cuBLASLt read for their logging (CUBLASLT_LOG_LEVEL, CUBLAS_LOGINFO_DBG).
 *      That finds cuBLAS linked statically into another library or program, stripped or not.
 * Limit: an object that links cuBLAS statically is classified as a whole, so its own other
 * kernels are told the device's count too (the static runtime inside it is shared by both).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

#include "vai_internal.h"

/* Built at run time so that the shim's own read-only data never holds a marker. */
static const char *marker(int i, char *buf, size_t len) {
  static const char *parts[][2] = {{"CUBLASLT_", "LOG_LEVEL"}, {"CUBLAS_", "LOGINFO_DBG"}};
  if (i >= (int)(sizeof parts / sizeof parts[0])) return NULL;
  size_t a = strlen(parts[i][0]), b = strlen(parts[i][1]);
  if (a + b + 1 > len) return NULL;
  memcpy(buf, parts[i][0], a);
  memcpy(buf + a, parts[i][1], b + 1);
  return buf;
}

static int name_is_blas(const char *path) {
  if (!path || !*path) return 0;
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  return strncmp(base, "libcublas", 9) == 0;
}

/* Exported "cublas*" functions in the object's dynamic symbol table (DT_GNU_HASH-less scan
 * bounded by DT_STRSZ: the symbol table ends where the string table starts in every GNU ld /
 * lld layout; we stop at the first symbol whose name offset leaves the string table). */
static int in_object(const struct dl_phdr_info *info, uintptr_t a) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type == PT_LOAD && a >= lo && a < lo + ph->p_filesz) return 1;
  }
  return 0;
}

/* A dynamic-section pointer: glibc relocates them on most targets; where it did not (or the value
 * is odd), it is an offset from the load bias. 0 when it lies outside the object. */
static uintptr_t dyn_ptr(const struct dl_phdr_info *info, uintptr_t v) {
  if (in_object(info, v)) return v;
  if (in_object(info, v + info->dlpi_addr)) return v + info->dlpi_addr;
  return 0;
}

static int exports_blas(const struct dl_phdr_info *info) {
  const ElfW(Sym) *symtab = NULL;
  const char *strtab = NULL;
  size_t strsz = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    if (info->dlpi_phdr[i].p_type != PT_DYNAMIC) continue;
    const ElfW(Dyn) *dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    for (; dyn->d_tag != DT_NULL; dyn++) {
      /* glibc relocates these d_ptr values to absolute addresses for loaded objects. */
      if (dyn->d_tag == DT_SYMTAB) symtab = (const ElfW(Sym) *)dyn_ptr(info, dyn->d_un.d_ptr);
      if (dyn->d_tag == DT_STRTAB) strtab = (const char *)dyn_ptr(info, dyn->d_un.d_ptr);
      if (dyn->d_tag == DT_STRSZ) strsz = dyn->d_un.d_val;
    }
  }
  if (!symtab || !strtab || !strsz || (const char *)symtab >= strtab) return 0;
  if (!in_object(info, (uintptr_t)strtab + strsz - 1)) return 0;
  size_t n = (size_t)(strtab - (const char *)symtab) / sizeof(ElfW(Sym));
  if (n > (1u << 22)) n = 1u << 22;
  for (size_t i = 1; i < n; i++) {
    if (symtab[i].st_name >= strsz) break;
    if (symtab[i].st_shndx == SHN_UNDEF) continue;
    if (strncmp(strtab + symtab[i].st_name, "cublas", 6) == 0) return 1;
  }
  return 0;
}

static int has_marker(const struct dl_phdr_info *info) {
  char buf[2][32];
  const char *m[2] = {marker(0, buf[0], sizeof buf[0]), marker(1, buf[1], sizeof buf[1])};
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_R) || (ph->p_flags & PF_W)) continue;
    const char *seg = (const char *)(info->dlpi_addr + ph->p_vaddr);
    for (int k = 0; k < 2; k++)
      if (m[k] && memmem(seg, ph->p_filesz, m[k], strlen(m[k]))) return 1;
  }
  return 0;
}

typedef struct {
  uintptr_t addr;
  uintptr_t base; /* the containing object's load bias, to cache by */
  int found, verdict;
} probe;

static int classify_cb(struct dl_phdr_info *info, size_t size, void *data) {
  probe *p = data;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (p->addr < lo || p->addr >= lo + ph->p_memsz) continue;
    p->found = 1;
    p->base = info->dlpi_addr;
    p->verdict = name_is_blas(info->dlpi_name) || exports_blas(info) || has_marker(info);
    return 1;
  }
  return 0;
}

#define N_CACHE 64
static struct {
  uintptr_t lo, hi; /* text range of a classified object (the segment holding the address) */
  int verdict;
} cache[N_CACHE];
static int n_cache;
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;

/* Range of the PT_LOAD segment holding addr, for the cache. */
static int range_cb(struct dl_phdr_info *info, size_t size, void *data) {
  uintptr_t *r = data; /* r[0] = addr in, r[1], r[2] = lo, hi out */
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD) continue;
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (r[0] >= lo && r[0] < lo + ph->p_memsz) {
      r[1] = lo;
      r[2] = lo + ph->p_memsz;
      return 1;
    }
  }
  return 0;
}

VAI_HIDDEN int vai_caller_is_blas(const void *addr) {
  uintptr_t a = (uintptr_t)addr;
  pthread_mutex_lock(&cache_mu);
  for (int i = 0; i < n_cache; i++) {
    if (a >= cache[i].lo && a < cache[i].hi) {
      int v = cache[i].verdict;
      pthread_mutex_unlock(&cache_mu);
      return v;
    }
  }
  pthread_mutex_unlock(&cache_mu);
  probe p = {a, 0, 0, 0};
  dl_iterate_phdr(classify_cb, &p);
  if (!p.found) return 0;
  uintptr_t r[3] = {a, 0, 0};
  dl_iterate_phdr(range_cb, r);
  pthread_mutex_lock(&cache_mu);
  if (n_cache < N_CACHE && r[2]) {
    cache[n_cache].lo = r[1];
    cache[n_cache].hi = r[2];
    cache[n_cache].verdict = p.verdict;
    n_cache++;
  }
  pthread_mutex_unlock(&cache_mu);
  Dl_info di;
  if (vai_cfg.log_level >= VAI_LOG_INFO && dladdr(addr, &di))
    vai_log(VAI_LOG_INFO, "SM count asked from %s: told the %s", di.dli_fname ? di.dli_fname : "?",
            p.verdict ? "device's count (cuBLAS)" : "share");
  return p.verdict;
}
