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

VAI_HIDDEN vai_config vai_cfg = {.limit_pct = 100, .log_level = VAI_LOG_WARN,
                                  .sm_attribute_device = 1};

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

VAI_HIDDEN int vai_parse_sm_attribute(const char *s, int *device, char *err, size_t errlen) {
  if (s && strcmp(s, "granted") == 0) {
    *device = 0;
    return 0;
  }
  if (s && strcmp(s, "device") == 0) {
    *device = 1;
    return 0;
  }
  snprintf(err, errlen, "invalid VAI_SM_ATTRIBUTE='%.40s': expected granted or device", s ? s : "");
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
    snprintf(c->errors[c->n_errors], VAI_ERR_LEN, "%s", msg);
  }
  c->n_errors++;
}

VAI_HIDDEN void vai_config_load(vai_config *c) {
  char err[VAI_ERR_LEN];
  memset(c, 0, sizeof *c);
  c->limit_pct = 100;
  c->log_level = VAI_LOG_WARN;
  c->sm_attribute_device = 1; /* see vai_internal.h: the granted count broke cuBLAS on an H200 */
  const char *v;
  /* Log level first so later messages honour it. */
  if ((v = getenv("VAI_LOG_LEVEL")) != NULL && vai_parse_log_level(v, &c->log_level, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("BLESS_LIMIT_PCT")) != NULL && vai_parse_pct(v, &c->limit_pct, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_MEMORY_LIMIT")) != NULL &&
      vai_parse_memory(v, &c->memory_limit, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_SM_ATTRIBUTE")) != NULL &&
      vai_parse_sm_attribute(v, &c->sm_attribute_device, err, sizeof err))
    add_error(c, err);
  if ((v = getenv("VAI_STATUS_DIR")) != NULL) {
    if (vai_check_status_dir(v, err, sizeof err))
      add_error(c, err);
    else
      snprintf(c->status_dir, sizeof c->status_dir, "%s", v);
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
