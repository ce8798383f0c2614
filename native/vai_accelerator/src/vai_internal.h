/* vai_internal.h - shared declarations of the shim's modules (config, sm math, memory, status). */
#ifndef VAI_INTERNAL_H
#define VAI_INTERNAL_H

#include <stddef.h>

#include "vai_cuda.h"

#define VAI_HIDDEN __attribute__((visibility("hidden")))
#define VAI_EXPORT __attribute__((visibility("default")))

/* ---- configuration (config.c) ---------------------------------------------------------------- */

enum { VAI_LOG_ERROR = 0, VAI_LOG_WARN = 1, VAI_LOG_INFO = 2, VAI_LOG_DEBUG = 3 };

#define VAI_MAX_ERRORS 4
#define VAI_ERR_LEN 256

typedef struct vai_config {
  int limit_pct;                     /* 1-99 caps the SMs; 100 = no cap (unset or "100") */
  unsigned long long memory_limit;   /* bytes; 0 = no quota */
  char status_dir[1024];             /* "" = no status file */
  int log_level;                     /* VAI_LOG_* */
  /* What cuDeviceGetAttribute(MULTIPROCESSOR_COUNT) answers in green mode. 1 (default,
   * VAI_SM_ATTRIBUTE=device): the device's count. 0 (VAI_SM_ATTRIBUTE=granted): the green
   * context's. Measured on an H200 (RESULTS.md): with 96 granted SMs reported, PyTorch/cuBLAS
   * bf16 GEMMs of 1024-4096 returned wrong results; with 132 reported they were right and as fast. */
  int sm_attribute_device;
  int n_errors;                      /* > 0: configuration is invalid, CUDA init must fail */
  char errors[VAI_MAX_ERRORS][VAI_ERR_LEN];
} vai_config;

/* Each parser returns 0 and fills *out, or -1 and writes one line (no newline) naming the
 * variable and the accepted form into err. */
VAI_HIDDEN int vai_parse_pct(const char *s, int *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_memory(const char *s, unsigned long long *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_log_level(const char *s, int *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_sm_attribute(const char *s, int *device, char *err, size_t errlen);
VAI_HIDDEN int vai_check_status_dir(const char *s, char *err, size_t errlen);
/* Reads BLESS_LIMIT_PCT, VAI_MEMORY_LIMIT, VAI_STATUS_DIR, VAI_LOG_LEVEL from the environment. */
VAI_HIDDEN void vai_config_load(vai_config *c);

VAI_HIDDEN extern vai_config vai_cfg;
VAI_HIDDEN void vai_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- SM arithmetic (config.c) ------------------------------------------------------------------ */

/* ceil(pct * total / 100): the SM count asked of an execution affinity (issue 3, mechanism a). */
VAI_HIDDEN unsigned vai_sms_for_pct(int pct, unsigned total);
/* The green-context request: pct of total rounded DOWN to the partition granule, at least one
 * granule (min_part), at most total. Rounding down never hands a pod more than its share. */
VAI_HIDDEN unsigned vai_green_sms(int pct, unsigned total, unsigned granule, unsigned min_part);

/* ---- memory accounting (memtrack.c) ----------------------------------------------------------- */

enum { VAI_MEM_PTR = 0, VAI_MEM_HANDLE = 1 };

/* Reserve n bytes against the quota: 0 = ok, -1 = over the limit (nothing changed). */
VAI_HIDDEN int vai_mem_reserve(unsigned long long n);
/* Give back a reservation whose allocation failed. */
VAI_HIDDEN void vai_mem_unreserve(unsigned long long n);
/* Record a successful allocation of n (already reserved) bytes under key. */
VAI_HIDDEN void vai_mem_commit(int kind, unsigned long long key, unsigned long long n, int dev);
/* Forget key and credit its bytes; returns the bytes credited (0 if unknown). */
VAI_HIDDEN unsigned long long vai_mem_release(int kind, unsigned long long key);
/* The generation of key's live entry (0: none). A free reads it before calling the driver and
 * releases only that generation afterwards: if the driver handed the address to another thread
 * in between, that thread's newer entry survives (its commit already credited the old one). */
VAI_HIDDEN unsigned long long vai_mem_generation(int kind, unsigned long long key);
VAI_HIDDEN unsigned long long vai_mem_release_if(int kind, unsigned long long key,
                                                 unsigned long long gen);
/* Forget every allocation of device dev (its context was reset). */
VAI_HIDDEN void vai_mem_forget_device(int dev);
VAI_HIDDEN void vai_mem_stats(unsigned long long *used, unsigned long long *peak);

/* ---- status line (status.c) -------------------------------------------------------------------- */

typedef struct vai_status {
  const char *mechanism; /* "none" | "mps" | "green" | "failed" */
  char gpu_uuid[48];
  int limit_pct;
  unsigned sms_device;   /* SMs the driver reports for the device to this process */
  unsigned sms_asked;
  unsigned sms_granted;
} vai_status;

/* Writes <VAI_STATUS_DIR>/vai-<pid>.json (one JSON line) atomically; no-op without a dir. */
VAI_HIDDEN void vai_status_write(const vai_status *s, const char *phase);
/* Formats the line into buf (for tests and the writer); returns its length. */
VAI_HIDDEN int vai_status_format(char *buf, size_t len, const vai_status *s, const char *phase);

#endif /* VAI_INTERNAL_H */
