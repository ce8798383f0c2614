/* config.c - parse the shim's environment strictly: a pod must never silently get the whole GPU,
 * so anything but the documented forms is an error that makes CUDA initialisation fail. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vai_internal.h"

VAI_HIDDEN vai_config vai_cfg = {.limit_pct = 100, .log_level = VAI_LOG_WARN};

VAI_HIDDEN void vai_log(int level, const char *fmt, ...) {
  if (level > vai_cfg.log_level) return;
  char line[768];
  int n = snprintf(line, sizeof line, "vai_accelerator[%d]: ", (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}

/* Parses a non-empty run of decimal digits into *v; -1 on anything else or overflow. */
static int parse_digits(const char *s, size_t len, unsigned long long *v) {
  if (len == 0 || len > 19) return -1;
  unsigned long long x = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    x = x * 10 + (unsigned long long)(s[i] - '0');
  }
  *v = x;
  return 0;
}

VAI_HIDDEN int vai_parse_pct(const char *s, int *out, char *err, size_t errlen) {
  unsigned long long v = 0;
  if (s && parse_digits(s, strlen(s), &v) == 0 && v >= 1 && v <= 100) {
    *out = (int)v;
    return 0;
  }
  snprintf(err, errlen,
           "invalid BLESS_LIMIT_PCT='%.40s': expected an integer 1-99 (percent of the GPU's SMs), "
           "or 100 / unset for no limit",
           s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_parse_memory(const char *s, unsigned long long *out, char *err, size_t errlen) {
  static const struct {
    const char *suffix;
    unsigned shift;
  } units[] = {{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}, {"", 0}};
  size_t len = s ? strlen(s) : 0;
  for (size_t u = 0; s && u < sizeof units / sizeof units[0]; u++) {
    size_t sl = strlen(units[u].suffix);
    if (len <= sl || strcmp(s + len - sl, units[u].suffix) != 0) continue;
    unsigned long long v = 0;
    if (parse_digits(s, len - sl, &v) != 0 || v == 0) break;
    if (units[u].shift && v > (~0ULL >> units[u].shift)) break;
    *out = v << units[u].shift;
    return 0;
  }
  snprintf(err, errlen,
           "invalid VAI_MEMORY_LIMIT='%.40s': expected a positive number of bytes, optionally "
           "with Ki, Mi, Gi or Ti (e.g. 536870912, 512Mi, 20Gi)",
           s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_parse_log_level(const char *s, int *out, char *err, size_t errlen) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; s && i < 4; i++) {
    if (strcasecmp(s, names[i]) == 0) {
      *out = i;
      return 0;
    }
  }
  snprintf(err, errlen, "invalid VAI_LOG_LEVEL='%.40s': expected one of error, warn, info, debug",
           s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_parse_sm_attribute(const char *s, int *mode, char *err, size_t errlen) {
  static const char *names[] = {"auto", "granted", "device"};
  for (int i = 0; s && i < 3; i++) {
    if (strcmp(s, names[i]) == 0) {
      *mode = i;
      return 0;
    }
  }
  snprintf(err, errlen, "invalid VAI_SM_ATTRIBUTE='%.40s': expected auto, granted or device",
           s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_parse_device_sms(const char *s, unsigned *out, char *err, size_t errlen) {
  unsigned long long v = 0;
  if (s && parse_digits(s, strlen(s), &v) == 0 && v >= 1 && v <= 4096) {
    *out = (unsigned)v;
    return 0;
  }
  snprintf(err, errlen,
           "invalid VAI_DEVICE_SM_COUNT='%.40s': expected an integer 1-4096 (the GPU's SMs, "
           "from NVML)",
           s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_parse_mechanism(const char *s, int *out, char *err, size_t errlen) {
  static const char *names[] = {"auto", "mps", "green"};
  for (int i = 0; s && i < 3; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = i;
      return 0;
    }
  }
  snprintf(err, errlen, "invalid VAI_MECHANISM='%.40s': expected mps, green or auto", s ? s : "");
  return -1;
}

VAI_HIDDEN int vai_check_status_dir(const char *s, char *err, size_t errlen) {
  struct stat st;
  const char *why = NULL;
  if (!s || s[0] != '/')
    why = "not an absolute path";
  else if (strlen(s) >= sizeof vai_cfg.status_dir)
    why = "path too long";
  else if (stat(s, &st) != 0 || !S_ISDIR(st.st_mode))
    why = "not an existing directory";
  else if (access(s, W_OK | X_OK) != 0)
    why = "directory not writable";
  if (!why) return 0;
  snprintf(err, errlen,
           "invalid VAI_STATUS_DIR='%.200s': %s; expected an absolute path to a writable directory",
           s ? s : "", why);
  return -1;
}

static void add_error(vai_config *c, const char *msg) {
  if (c->n_errors < VAI_MAX_ERRORS) {
    size_t n = strnlen(msg, VAI_ERR_LEN - 1);
    memcpy(c->errors[c->n_errors], msg, n);
    c->errors[c->n_errors][n] = 0;
  }
  c->n_errors++;
}

/* The limits file's values (fields left 0 / 100 when the file lacks the key). */
typedef struct {
  int pct;
  unsigned long long memory;
  unsigned device_sms;
  int mechanism, have_mechanism;
} file_limits;

static char *trim(char *p) {
  while (*p == ' ' || *p == '\t') p++;
  size_t n = strlen(p);
  while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n')) p[--n] = 0;
  return p;
}

/* Reads KEY=VALUE lines (# comments, unknown keys ignored). Any unreadable file or bad line is
 * an error: a limit the plugin wrote must never be silently dropped. */
static void read_limits_file(vai_config *c, const char *path, file_limits *fl) {
  char err[VAI_ERR_LEN], msg[VAI_ERR_LEN + 64];
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(msg, sizeof msg, "cannot read the limits file %.200s", path);
    add_error(c, msg);
    return;
  }
  char line[512];
  int no = 0;
  while (fgets(line, sizeof line, f)) {
    no++;
    char *p = trim(line);
    if (!*p || *p == '#') continue;
    char *eq = strchr(p, '=');
    if (!eq) {
      snprintf(msg, sizeof msg, "limits file %.150s line %d: expected KEY=VALUE, got '%.40s'", path,
               no, p);
      add_error(c, msg);
      continue;
    }
    *eq = 0;
    char *k = trim(p), *v = trim(eq + 1);
    int bad = 0;
    if (strcmp(k, "BLESS_LIMIT_PCT") == 0)
      bad = vai_parse_pct(v, &fl->pct, err, sizeof err);
    else if (strcmp(k, "VAI_MEMORY_LIMIT") == 0)
      bad = vai_parse_memory(v, &fl->memory, err, sizeof err);
    else if (strcmp(k, "VAI_DEVICE_SM_COUNT") == 0)
      bad = vai_parse_device_sms(v, &fl->device_sms, err, sizeof err);
    else if (strcmp(k, "VAI_MECHANISM") == 0)
      bad = (fl->have_mechanism = 1, vai_parse_mechanism(v, &fl->mechanism, err, sizeof err));
    if (bad) {
      snprintf(msg, sizeof msg, "limits file %.60s line %d: %.140s", path, no, err);
      add_error(c, msg);
    }
  }
  fclose(f);
}

VAI_HIDDEN void vai_config_load_from(vai_config *c, const char *system_path) {
  char err[VAI_ERR_LEN];
  memset(c, 0, sizeof *c);
  c->limit_pct = 100;
  c->log_level = VAI_LOG_WARN;
  c->sm_attribute = VAI_SMATTR_AUTO;
  const char *v;
  /* Log level first so later messages honour it. */
  if ((v = getenv("VAI_LOG_LEVEL")) != NULL && vai_parse_log_level(v, &c->log_level, err, sizeof err))
    add_error(c, err);
  /* The plugin's file: /etc/vai/limits; only where it is absent may the env name another. */
  file_limits fl = {100, 0, 0, 0, 0};
  struct stat st;
  const char *lp = NULL;
  if (system_path && stat(system_path, &st) == 0)
    lp = system_path;
  else if ((v = getenv("VAI_LIMITS_FILE")) != NULL && *v)
    lp = v;
  if (lp) {
    snprintf(c->limits_path, sizeof c->limits_path, "%s", lp);
    read_limits_file(c, lp, &fl);
  }
  int env_pct = 100;
  unsigned long long env_mem = 0;
  unsigned env_sms = 0;
  int env_mech = VAI_MECH_REQ_AUTO;
  if ((v = getenv("BLESS_LIMIT_PCT")) != NULL && vai_parse_pct(v, &env_pct, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_MEMORY_LIMIT")) != NULL && vai_parse_memory(v, &env_mem, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_DEVICE_SM_COUNT")) != NULL && vai_parse_device_sms(v, &env_sms, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_MECHANISM")) != NULL && vai_parse_mechanism(v, &env_mech, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_SM_ATTRIBUTE")) != NULL &&
      vai_parse_sm_attribute(v, &c->sm_attribute, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_STATUS_DIR")) != NULL) {
    if (vai_check_status_dir(v, err, sizeof err))
      add_error(c, err);
    else
      snprintf(c->status_dir, sizeof c->status_dir, "%s", v);
  }
  /* Stricter of file and env: env can lower a limit, never raise it. */
  c->limit_pct = fl.pct < env_pct ? fl.pct : env_pct;
  if (fl.memory && env_mem)
    c->memory_limit = fl.memory < env_mem ? fl.memory : env_mem;
  else
    c->memory_limit = fl.memory ? fl.memory : env_mem;
  /* What the plugin measured (NVML) and chose wins over the pod's env. */
  c->device_sms = fl.device_sms ? fl.device_sms : env_sms;
  c->device_sms_src = fl.device_sms ? "file" : env_sms ? "env" : NULL;
  c->mechanism = fl.have_mechanism ? fl.mechanism : env_mech;
}

VAI_HIDDEN void vai_config_load(vai_config *c) { vai_config_load_from(c, VAI_LIMITS_CONTAINER_PATH); }

VAI_HIDDEN unsigned vai_mps_sms(int pct, unsigned total) {
  if (pct >= 100) return total;
  unsigned n = (unsigned)((unsigned long long)(pct < 1 ? 1 : pct) * total / 100) & ~1u;
  if (n < VAI_MPS_MIN_SMS) n = VAI_MPS_MIN_SMS;
  if (n > total) n = total;
  return n;
}

VAI_HIDDEN unsigned vai_cores_per_sm(int major, int minor) {
  /* FP32 cores per SM, from NVIDIA's CUDA C++ Programming Guide (arithmetic throughput table). */
  switch (major) {
    case 6: return minor == 0 ? 64 : 128;
    case 7: return 64;
    case 8: return minor == 0 ? 64 : 128;
    case 9: return 128;
    case 10: case 11: case 12: return 128;
    default: return 0;
  }
}

VAI_HIDDEN unsigned vai_sms_for_pct(int pct, unsigned total) {
  if (pct >= 100) return total;
  if (pct < 1) pct = 1;
  unsigned long long n = ((unsigned long long)pct * total + 99) / 100;
  if (n < 1) n = 1;
  return (unsigned)n;
}

VAI_HIDDEN unsigned vai_green_sms(int pct, unsigned total, unsigned granule, unsigned min_part) {
  if (granule == 0) granule = 1;
  if (pct >= 100) return total;
  unsigned long long exact = (unsigned long long)pct * total / 100; /* floor */
  unsigned n = (unsigned)(exact / granule * granule);
  unsigned floor_min = min_part > granule ? min_part : granule;
  if (n < floor_min) n = floor_min;
  if (n > total) n = total;
  return n;
}
