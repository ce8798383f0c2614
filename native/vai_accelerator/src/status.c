/* status.c - one JSON line per process in VAI_STATUS_DIR, for the node agent: which mechanism
 * capped the process, SMs asked and granted, memory limit and peak. Written atomically (temp
 * file + rename) so a reader never sees half a line. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vai_internal.h"

VAI_HIDDEN int vai_status_format(char *buf, size_t len, const vai_status *s, const char *phase) {
  unsigned long long used = 0, peak = 0;
  vai_mem_stats(&used, &peak);
  char host[128] = "", pod[128] = "";
  gethostname(host, sizeof host - 1);
  /* Kubernetes names a pod's host after the pod; POD_NAME (downward API) wins where set. */
  const char *pn = getenv("POD_NAME");
  snprintf(pod, sizeof pod, "%s", pn && *pn ? pn : host);
  for (char *p = host; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '_';
  for (char *p = pod; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '_';
  char limits[256];
  snprintf(limits, sizeof limits, "%.255s", vai_cfg.limits_path);
  for (char *p = limits; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '_';
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return snprintf(buf, len,
                  "{\"pid\":%d,\"hostname\":\"%s\",\"pod\":\"%s\",\"gpu_uuid\":\"%s\",\"mechanism\":\"%s\","
                  "\"limit_pct\":%d,\"sms_device\":%u,\"sms_asked\":%u,\"sms_granted\":%u,"
                  "\"sms_device_source\":\"%s\",\"sm_attribute\":\"%s\","
                  "\"attr_told_device\":%lu,\"attr_told_share\":%lu,"
                  "\"memory_limit\":%llu,\"memory_used\":%llu,\"memory_peak\":%llu,"
                  "\"limits_file\":\"%s\",\"phase\":\"%s\",\"time\":%lld.%03ld}\n",
                  (int)getpid(), host, pod, s->gpu_uuid, s->mechanism ? s->mechanism : "none",
                  s->limit_pct, s->sms_device, s->sms_asked, s->sms_granted,
                  s->sms_device_source ? s->sms_device_source : "driver",
                  vai_cfg.sm_attribute == VAI_SMATTR_GRANTED  ? "granted"
                  : vai_cfg.sm_attribute == VAI_SMATTR_DEVICE ? "device"
                                                              : "auto",
                  s->attr_told_device, s->attr_told_share, vai_cfg.memory_limit, used, peak,
                  limits, phase, (long long)ts.tv_sec, ts.tv_nsec / 1000000);
}

VAI_HIDDEN void vai_status_write(const vai_status *s, const char *phase) {
  if (!vai_cfg.status_dir[0]) return;
  char line[1536], path[1200], tmp[1250];
  int n = vai_status_format(line, sizeof line, s, phase);
  if (n <= 0 || (size_t)n >= sizeof line) return;
  snprintf(path, sizeof path, "%s/vai-%d.json", vai_cfg.status_dir, (int)getpid());
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    vai_log(VAI_LOG_WARN, "cannot write status file %s", tmp);
    return;
  }
  int ok = fwrite(line, 1, (size_t)n, f) == (size_t)n;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    vai_log(VAI_LOG_WARN, "cannot write status file %s", path);
    unlink(tmp);
  }
}
