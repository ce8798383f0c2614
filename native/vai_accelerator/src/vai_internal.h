/* vai_internal.h - shared declarations of the shim's modules (config, sm math, memory, status). */
#ifndef VAI_INTERNAL_H
#define VAI_INTERNAL_H

#include <stddef.h>

#include "vai_cuda.h"

#define VAI_HIDDEN __attribute__((visibility("hidden")))
#define VAI_EXPORT __attribute__((visibility("default")))

/* ---- configuration (config.c) ---------------------------------------------------------------- */

enum { VAI_LOG_ERROR = 0, VAI_LOG_WARN = 1, VAI_LOG_INFO = 2, VAI_LOG_DEBUG = 3 };
enum { VAI_SMATTR_AUTO = 0, VAI_SMATTR_GRANTED = 1, VAI_SMATTR_DEVICE = 2 };
enum { VAI_MECH_REQ_AUTO = 0, VAI_MECH_REQ_MPS = 1, VAI_MECH_REQ_GREEN = 2 };

/* The limits file the GPU plugin mounts read-only (CONTRACTS.md section 2). Only when it does not
 * exist may VAI_LIMITS_FILE name another file (tests). Overridable at build time for tests. */
#ifndef VAI_LIMITS_CONTAINER_PATH
#define VAI_LIMITS_CONTAINER_PATH "/etc/vai/limits"
#endif

#define VAI_MAX_ERRORS 4
#define VAI_ERR_LEN 256

typedef struct vai_config {
  int limit_pct;                     /* 1-99 caps the SMs; 100 = no cap (unset or "100") */
  unsigned long long memory_limit;   /* bytes; 0 = no quota */
  char status_dir[1024];             /* "" = no status file */
  int log_level;                     /* VAI_LOG_* */
  /* What cuDeviceGetAttribute(MULTIPROCESSOR_COUNT) answers under a cap (VAI_SM_ATTRIBUTE):
   * auto (default): the device's count to callers whose kernel choice breaks on the share
   * (cuBLAS/cuBLASLt, see sm_caller.c), the share to everyone else; granted: the share to all;
   * device: the device's count to all. Measured on an H200 (RESULTS.md). */
  int sm_attribute;
  unsigned device_sms;               /* VAI_DEVICE_SM_COUNT (file or env); 0 = not given */
  const char *device_sms_src;        /* "file" | "env" | NULL */
  int mechanism;                     /* VAI_MECHANISM: VAI_MECH_REQ_* */
  char limits_path[1024];            /* the limits file that was read; "" = none */
  int n_errors;                      /* > 0: configuration is invalid, CUDA init must fail */
  char errors[VAI_MAX_ERRORS][VAI_ERR_LEN];
} vai_config;

/* Each parser returns 0 and fills *out, or -1 and writes one line (no newline) naming the
 * variable and the accepted form into err. */
VAI_HIDDEN int vai_parse_pct(const char *s, int *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_memory(const char *s, unsigned long long *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_log_level(const char *s, int *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_sm_attribute(const char *s, int *mode, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_device_sms(const char *s, unsigned *out, char *err, size_t errlen);
VAI_HIDDEN int vai_parse_mechanism(const char *s, int *out, char *err, size_t errlen);
VAI_HIDDEN int vai_check_status_dir(const char *s, char *err, size_t errlen);
/* Reads the limits file (system_path if it exists, else $VAI_LIMITS_FILE if set) and the
 * environment (BLESS_LIMIT_PCT, VAI_MEMORY_LIMIT, VAI_DEVICE_SM_COUNT, VAI_MECHANISM,
 * VAI_SM_ATTRIBUTE, VAI_STATUS_DIR, VAI_LOG_LEVEL). The stricter of file and env wins for the
 * share and the memory quota (env can lower a limit, never raise it); the file wins for the
 * device's SM count and the mechanism. */
VAI_HIDDEN void vai_config_load_from(vai_config *c, const char *system_path);
VAI_HIDDEN void vai_config_load(vai_config *c);

VAI_HIDDEN extern vai_config vai_cfg;
VAI_HIDDEN void vai_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- SM arithmetic (config.c) ------------------------------------------------------------------ */

/* ceil(pct * total / 100): the SM count asked of an execution affinity (issue 3, mechanism a). */
VAI_HIDDEN unsigned vai_sms_for_pct(int pct, unsigned total);
/* The green-context request: pct of total rounded DOWN to the partition granule, at least one
 * granule (min_part), at most total. Rounding down never hands a pod more than its share. */
VAI_HIDDEN unsigned vai_green_sms(int pct, unsigned total, unsigned granule, unsigned min_part);

/* MPS: the SMs a client at pct gets on a device of total SMs, as measured on an H200 for every
 * share 1-99% (RESULTS.md): the exact share rounded down to an even count (TPC pairs), and never
 * fewer than 8 (1-7% all get 8). */
#define VAI_MPS_MIN_SMS 8u
VAI_HIDDEN unsigned vai_mps_sms(int pct, unsigned total);
/* Cores per SM of a compute capability (for NVML's core count); 0 = unknown. */
VAI_HIDDEN unsigned vai_cores_per_sm(int major, int minor);

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
/* As vai_mem_commit, for memory handed out by memory pool number pool (0..VAI_MAX_POOLS-1). */
#define VAI_MAX_POOLS 64
VAI_HIDDEN void vai_mem_commit_pool(int kind, unsigned long long key, unsigned long long n, int dev,
                                    int pool);
/* Bytes live from pool number pool. */
VAI_HIDDEN unsigned long long vai_mem_pool_live(int pool);
/* Bytes the pools reserve beyond their live allocations (counted against the quota). */
VAI_HIDDEN void vai_mem_set_pool_excess(unsigned long long bytes);
/* VMM (cuMemCreate handles): a handle's bytes are credited only once it is released (every
 * reference: creation and retains) AND every mapping of it is unmapped, as the driver frees it.
 * Each returns the bytes credited by this call. */
VAI_HIDDEN unsigned long long vai_mem_vmm_release(unsigned long long handle);
VAI_HIDDEN int vai_mem_vmm_map(unsigned long long va, unsigned long long size,
                               unsigned long long handle);
VAI_HIDDEN unsigned long long vai_mem_vmm_unmap(unsigned long long va, unsigned long long size);
/* cuMemRetainAllocationHandle(&newh, va): one more reference on the handle mapped at va. */
VAI_HIDDEN int vai_mem_vmm_retain(unsigned long long newh, unsigned long long va);
/* Forget every allocation of device dev (its context was reset). */
VAI_HIDDEN void vai_mem_forget_device(int dev);
VAI_HIDDEN void vai_mem_stats(unsigned long long *used, unsigned long long *peak);

/* ---- status line (status.c) -------------------------------------------------------------------- */

typedef struct vai_status {
  const char *mechanism; /* "none" | "mps" | "green" | "failed" */
  char gpu_uuid[48];
  int limit_pct;
  unsigned sms_device;   /* SMs of the whole device (VAI_DEVICE_SM_COUNT, NVML, or the driver) */
  unsigned sms_asked;    /* the share in SMs (MPS: floor to even; green: floor to 8) */
  unsigned sms_granted;  /* what the driver granted (MPS: its answer; green: the split) */
  const char *sms_device_source; /* "file" | "env" | "nvml" | "driver" */
  unsigned long attr_told_device, attr_told_share; /* SM-count answers, by kind */
} vai_status;

/* Writes <VAI_STATUS_DIR>/vai-<pid>.json (one JSON line) atomically; no-op without a dir. */
VAI_HIDDEN void vai_status_write(const vai_status *s, const char *phase);
/* sm_caller.c: 1 if the code at addr belongs to cuBLAS/cuBLASLt (by name, exports or markers). */
VAI_HIDDEN int vai_caller_is_blas(const void *addr);
/* Formats the line into buf (for tests and the writer); returns its length. */
VAI_HIDDEN int vai_status_format(char *buf, size_t len, const vai_status *s, const char *phase);

#endif /* VAI_INTERNAL_H */
