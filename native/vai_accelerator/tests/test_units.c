/* test_units.c - unit tests of the shim's pure parts: config parsing (good and bad values), SM
 * arithmetic, memory accounting (against a reference model), status line format. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vai_internal.h"

static int failures, checks;
#define CHECK(cond, ...)                                                                          \
  do {                                                                                            \
    checks++;                                                                                     \
    if (!(cond)) {                                                                                \
      failures++;                                                                                 \
      printf("FAIL %s:%d ", __FILE__, __LINE__);                                                  \
      printf(__VA_ARGS__);                                                                        \
      printf("  [%s]\n", #cond);                                                                  \
    }                                                                                             \
  } while (0)

static void test_pct(void) {
  char err[VAI_ERR_LEN];
  const struct {
    const char *s;
    int v;
  } good[] = {{"1", 1}, {"25", 25}, {"50", 50}, {"99", 99}, {"100", 100}, {"050", 50}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    int v = -1;
    CHECK(vai_parse_pct(good[i].s, &v, err, sizeof err) == 0 && v == good[i].v, "pct '%s'", good[i].s);
  }
  const char *bad[] = {"0", "150", "101", "-5", "abc", "", " 50", "50 ", "50.5", "+50", "5e1",
                       "99999999999999999999999", "0x10"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int v = 42;
    err[0] = 0;
    CHECK(vai_parse_pct(bad[i], &v, err, sizeof err) == -1 && v == 42, "bad pct '%s' accepted", bad[i]);
    CHECK(strstr(err, "BLESS_LIMIT_PCT") && strstr(err, "1-99") && !strchr(err, '\n'),
          "error names the variable and the accepted form: %s", err);
  }
  int v = 42;
  CHECK(vai_parse_pct(NULL, &v, err, sizeof err) == -1, "NULL pct rejected");
}

static void test_memory(void) {
  char err[VAI_ERR_LEN];
  const struct {
    const char *s;
    unsigned long long v;
  } good[] = {{"1", 1},
              {"536870912", 536870912ULL},
              {"512Mi", 512ULL << 20},
              {"20Gi", 20ULL << 30},
              {"4Ki", 4096},
              {"2Ti", 2ULL << 40}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    unsigned long long v = 0;
    CHECK(vai_parse_memory(good[i].s, &v, err, sizeof err) == 0 && v == good[i].v, "mem '%s' -> %llu",
          good[i].s, v);
  }
  const char *bad[] = {"", "0", "0Gi", "-1", "1.5Gi", "20G", "20GB", "Gi", "abc", "20 Gi", "20gi",
                       "99999999999Ti", "18446744073709551616"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    unsigned long long v = 7;
    err[0] = 0;
    CHECK(vai_parse_memory(bad[i], &v, err, sizeof err) == -1 && v == 7, "bad mem '%s' accepted", bad[i]);
    CHECK(strstr(err, "VAI_MEMORY_LIMIT") && strstr(err, "Gi"), "error text: %s", err);
  }
}

static void test_log_and_dir(void) {
  char err[VAI_ERR_LEN];
  int lv = -1;
  CHECK(vai_parse_log_level("debug", &lv, err, sizeof err) == 0 && lv == VAI_LOG_DEBUG, "debug");
  CHECK(vai_parse_log_level("INFO", &lv, err, sizeof err) == 0 && lv == VAI_LOG_INFO, "INFO");
  CHECK(vai_parse_log_level("verbose", &lv, err, sizeof err) == -1 && strstr(err, "VAI_LOG_LEVEL"),
        "bad level: %s", err);
  CHECK(vai_parse_log_level("", &lv, err, sizeof err) == -1, "empty level");
  int dev = -1;
  CHECK(vai_parse_sm_attribute("granted", &dev, err, sizeof err) == 0 && dev == VAI_SMATTR_GRANTED, "granted");
  CHECK(vai_parse_sm_attribute("device", &dev, err, sizeof err) == 0 && dev == VAI_SMATTR_DEVICE, "device");
  CHECK(vai_parse_sm_attribute("auto", &dev, err, sizeof err) == 0 && dev == VAI_SMATTR_AUTO, "auto");
  unsigned n = 0;
  CHECK(vai_parse_device_sms("132", &n, err, sizeof err) == 0 && n == 132, "132 SMs");
  CHECK(vai_parse_device_sms("0", &n, err, sizeof err) == -1 && strstr(err, "VAI_DEVICE_SM_COUNT"), "0 SMs");
  CHECK(vai_parse_device_sms("4097", &n, err, sizeof err) == -1, "4097 SMs");
  int m = -1;
  CHECK(vai_parse_mechanism("mps", &m, err, sizeof err) == 0 && m == VAI_MECH_REQ_MPS, "mps");
  CHECK(vai_parse_mechanism("green", &m, err, sizeof err) == 0 && m == VAI_MECH_REQ_GREEN, "green");
  CHECK(vai_parse_mechanism("MPS", &m, err, sizeof err) == -1 && strstr(err, "VAI_MECHANISM"), "MPS");
  CHECK(vai_parse_sm_attribute("Device", &dev, err, sizeof err) == -1 && strstr(err, "VAI_SM_ATTRIBUTE"),
        "bad sm attribute: %s", err);
  CHECK(vai_check_status_dir("/tmp", err, sizeof err) == 0, "/tmp ok");
  CHECK(vai_check_status_dir("relative/dir", err, sizeof err) == -1 && strstr(err, "VAI_STATUS_DIR") &&
            strstr(err, "absolute"),
        "relative: %s", err);
  CHECK(vai_check_status_dir("/nonexistent/vai", err, sizeof err) == -1 && strstr(err, "existing"),
        "missing: %s", err);
  CHECK(vai_check_status_dir("", err, sizeof err) == -1, "empty dir");
  CHECK(vai_check_status_dir("/etc/hostname", err, sizeof err) == -1, "a file is not a dir");
}

static void test_config_load(void) {
  setenv("BLESS_LIMIT_PCT", "abc", 1);
  setenv("VAI_MEMORY_LIMIT", "10G", 1);
  unsetenv("VAI_STATUS_DIR");
  unsetenv("VAI_LOG_LEVEL");
  vai_config c;
  vai_config_load(&c);
  CHECK(c.n_errors == 2 && strstr(c.errors[0], "BLESS_LIMIT_PCT") && strstr(c.errors[1], "VAI_MEMORY_LIMIT"),
        "two errors collected (%d)", c.n_errors);
  setenv("BLESS_LIMIT_PCT", "30", 1);
  setenv("VAI_MEMORY_LIMIT", "1Gi", 1);
  setenv("VAI_STATUS_DIR", "/tmp", 1);
  vai_config_load(&c);
  CHECK(c.n_errors == 0 && c.limit_pct == 30 && c.memory_limit == 1ULL << 30 &&
            strcmp(c.status_dir, "/tmp") == 0,
        "good config loaded");
  unsetenv("BLESS_LIMIT_PCT");
  unsetenv("VAI_MEMORY_LIMIT");
  unsetenv("VAI_STATUS_DIR");
  vai_config_load(&c);
  CHECK(c.n_errors == 0 && c.limit_pct == 100 && c.memory_limit == 0 && !c.status_dir[0], "defaults");
  setenv("BLESS_LIMIT_PCT", "", 1);
  vai_config_load(&c);
  CHECK(c.n_errors == 1, "set-but-empty BLESS_LIMIT_PCT is an error");
  unsetenv("BLESS_LIMIT_PCT");
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

/* The limits file against the env: env can lower, never raise; the file wins for the device count
 * and mechanism; /etc/vai/limits (here: a temp path) shadows VAI_LIMITS_FILE. */
static void test_limits_file(void) {
  char dir[] = "/tmp/vai_limits_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "tmp dir");
  char sys[256], other[256];
  snprintf(sys, sizeof sys, "%s/limits", dir);
  snprintf(other, sizeof other, "%s/other", dir);
  write_file(sys, "# plugin\n BLESS_LIMIT_PCT = 25 \r\nVAI_MEMORY_LIMIT=2Gi\nVAI_DEVICE_SM_COUNT=132\n"
                  "VAI_MECHANISM=mps\nSOMETHING_NEW=1\n\n");
  write_file(other, "BLESS_LIMIT_PCT=90\n");
  vai_config c;
  setenv("BLESS_LIMIT_PCT", "100", 1);
  setenv("VAI_MEMORY_LIMIT", "8Gi", 1);
  setenv("VAI_DEVICE_SM_COUNT", "8", 1);
  setenv("VAI_MECHANISM", "green", 1);
  setenv("VAI_LIMITS_FILE", other, 1);
  vai_config_load_from(&c, sys);
  CHECK(c.n_errors == 0 && c.limit_pct == 25 && c.memory_limit == 2ULL << 30 && c.device_sms == 132 &&
            c.mechanism == VAI_MECH_REQ_MPS && strcmp(c.limits_path, sys) == 0 &&
            strcmp(c.device_sms_src, "file") == 0,
        "file beats raising env (%d errors, pct %d, mem %llu, sms %u)", c.n_errors, c.limit_pct,
        c.memory_limit, c.device_sms);
  setenv("BLESS_LIMIT_PCT", "10", 1);
  setenv("VAI_MEMORY_LIMIT", "1Gi", 1);
  vai_config_load_from(&c, sys);
  CHECK(c.limit_pct == 10 && c.memory_limit == 1ULL << 30, "env lowers: pct %d mem %llu", c.limit_pct,
        c.memory_limit);
  unlink(sys);
  vai_config_load_from(&c, sys);
  CHECK(c.n_errors == 0 && c.limit_pct == 10 && strcmp(c.limits_path, other) == 0,
        "no system file: VAI_LIMITS_FILE is read (pct %d from min(90, env 10))", c.limit_pct);
  unsetenv("BLESS_LIMIT_PCT");
  vai_config_load_from(&c, sys);
  CHECK(c.limit_pct == 90 && c.device_sms == 8 && strcmp(c.device_sms_src, "env") == 0 &&
            c.mechanism == VAI_MECH_REQ_GREEN,
        "other file's pct, env's device count and mechanism");
  write_file(other, "VAI_MEMORY_LIMIT=20G\n");
  vai_config_load_from(&c, sys);
  CHECK(c.n_errors == 1 && strstr(c.errors[0], "line 1") && strstr(c.errors[0], "VAI_MEMORY_LIMIT"),
        "bad value in the file: %s", c.n_errors ? c.errors[0] : "(none)");
  write_file(other, "");
  unsetenv("VAI_MEMORY_LIMIT");
  unsetenv("VAI_DEVICE_SM_COUNT");
  unsetenv("VAI_MECHANISM");
  vai_config_load_from(&c, sys);
  CHECK(c.n_errors == 0 && c.limit_pct == 100 && c.memory_limit == 0, "an empty file: no limits");
  unsetenv("VAI_LIMITS_FILE");
  unlink(other);
  rmdir(dir);
}

static void test_sms(void) {
  /* MPS, as measured on an H200 (gpu/results/sweep_mps.json): 1-7% -> 8, 8% -> 10, 10% -> 12,
   * 25% -> 32, 40% -> 52, 50% -> 66, 75% -> 98, 90% -> 118, 99% -> 130. */
  const int pcts[] = {1, 6, 7, 8, 10, 25, 40, 50, 60, 70, 74, 75, 80, 90, 99};
  const unsigned seen[] = {8, 8, 8, 10, 12, 32, 52, 66, 78, 92, 96, 98, 104, 118, 130};
  for (int i = 0; i < 15; i++)
    CHECK(vai_mps_sms(pcts[i], 132) == seen[i], "MPS %d%% -> %u, measured %u", pcts[i],
          vai_mps_sms(pcts[i], 132), seen[i]);
  CHECK(vai_mps_sms(100, 132) == 132, "MPS 100%% -> all");
  CHECK(vai_cores_per_sm(9, 0) == 128 && vai_cores_per_sm(8, 0) == 64 && vai_cores_per_sm(8, 6) == 128 &&
            vai_cores_per_sm(7, 5) == 64 && vai_cores_per_sm(3, 5) == 0,
        "cores per SM");
  CHECK(16896 / vai_cores_per_sm(9, 0) == 132, "NVML's 16896 cores on an H200 -> 132 SMs");
  CHECK(vai_sms_for_pct(25, 132) == 33, "ceil(25%% of 132) = 33, got %u", vai_sms_for_pct(25, 132));
  CHECK(vai_sms_for_pct(50, 132) == 66, "50%% -> 66");
  CHECK(vai_sms_for_pct(75, 132) == 99, "75%% -> 99");
  CHECK(vai_sms_for_pct(1, 132) == 2, "1%% -> 2");
  CHECK(vai_sms_for_pct(99, 132) == 131, "99%% -> 131");
  CHECK(vai_sms_for_pct(100, 132) == 132, "100%% -> all");
  CHECK(vai_green_sms(25, 132, 8, 8) == 32, "green 25%% -> 32, got %u", vai_green_sms(25, 132, 8, 8));
  CHECK(vai_green_sms(50, 132, 8, 8) == 64, "green 50%% -> 64");
  CHECK(vai_green_sms(75, 132, 8, 8) == 96, "green 75%% -> 96");
  CHECK(vai_green_sms(1, 132, 8, 8) == 8, "green 1%% -> one granule (8)");
  CHECK(vai_green_sms(99, 132, 8, 8) == 128, "green 99%% -> 128");
  CHECK(vai_green_sms(50, 108, 2, 4) == 54, "A100-like: 50%% of 108 in steps of 2 -> 54");
  CHECK(vai_green_sms(5, 16, 8, 8) == 8, "never above total, at least a granule");
  for (int p = 1; p <= 99; p++) {
    unsigned g = vai_green_sms(p, 132, 8, 8);
    CHECK(g % 8 == 0 && g >= 8 && (g <= (unsigned)(p * 132 / 100) || g == 8), "green %d%% -> %u", p, g);
  }
}

static void test_memtrack(void) {
  vai_cfg.memory_limit = 1000;
  CHECK(vai_mem_reserve(600) == 0, "reserve 600");
  vai_mem_commit(VAI_MEM_PTR, 0x1000, 600, 0);
  CHECK(vai_mem_reserve(401) == -1, "401 more refused");
  CHECK(vai_mem_reserve(400) == 0, "400 more fits exactly");
  vai_mem_unreserve(400);
  CHECK(vai_mem_reserve(~0ULL) == -1, "huge request refused without overflow");
  unsigned long long used, peak;
  vai_mem_stats(&used, &peak);
  CHECK(used == 600 && peak == 1000, "used %llu peak %llu", used, peak);
  CHECK(vai_mem_release(VAI_MEM_PTR, 0x1000) == 600, "release credits 600");
  CHECK(vai_mem_release(VAI_MEM_PTR, 0x1000) == 0, "double free credits nothing");
  CHECK(vai_mem_release(VAI_MEM_HANDLE, 0x1000) == 0, "kinds are separate");
  /* Address reuse: free read gen1, the driver freed and re-issued the address to another
   * allocation (gen2) before the first free settled: only gen1 is credited, gen2 stays. */
  CHECK(vai_mem_reserve(100) == 0, "reserve 100");
  vai_mem_commit(VAI_MEM_PTR, 0x2000, 100, 0);
  unsigned long long g1 = vai_mem_generation(VAI_MEM_PTR, 0x2000);
  CHECK(vai_mem_reserve(200) == 0, "reserve 200 at the reused address");
  vai_mem_commit(VAI_MEM_PTR, 0x2000, 200, 0);
  unsigned long long g2 = vai_mem_generation(VAI_MEM_PTR, 0x2000);
  CHECK(g1 && g2 && g1 != g2, "generations differ (%llu, %llu)", g1, g2);
  CHECK(vai_mem_release_if(VAI_MEM_PTR, 0x2000, g1) == 0, "the late free of gen1 credits nothing");
  vai_mem_stats(&used, NULL);
  CHECK(used == 200, "only the live 200 counted (%llu)", used);
  CHECK(vai_mem_release_if(VAI_MEM_PTR, 0x2000, g2) == 200, "gen2's free credits 200");
  vai_cfg.memory_limit = 0; /* unlimited: still tracked */
  /* Randomised against a reference model: many live entries, growth, deletions, device resets. */
  enum { N = 5000 };
  static unsigned long long keys[N], sizes[N];
  static int devs[N], live[N];
  unsigned long long model = 0;
  srand(12345);
  for (int step = 0; step < 60000; step++) {
    int i = rand() % N;
    if (!live[i]) {
      keys[i] = ((unsigned long long)(i + 1) << 12) | 0x7f0000000000ULL;
      sizes[i] = 1 + (unsigned long long)(rand() % 100000);
      devs[i] = rand() % 3;
      CHECK(vai_mem_reserve(sizes[i]) == 0, "reserve");
      vai_mem_commit(VAI_MEM_PTR, keys[i], sizes[i], devs[i]);
      live[i] = 1;
      model += sizes[i];
    } else {
      unsigned long long got = vai_mem_release(VAI_MEM_PTR, keys[i]);
      if (got != sizes[i]) CHECK(got == sizes[i], "release %d gave %llu want %llu", i, got, sizes[i]);
      live[i] = 0;
      model -= sizes[i];
    }
    if (step % 20000 == 19999) {
      vai_mem_forget_device(1);
      for (int k = 0; k < N; k++)
        if (live[k] && devs[k] == 1) {
          live[k] = 0;
          model -= sizes[k];
        }
    }
  }
  vai_mem_stats(&used, NULL);
  CHECK(used == model, "tracked %llu == model %llu", used, model);
  int missing = 0;
  for (int k = 0; k < N; k++)
    if (live[k] && vai_mem_release(VAI_MEM_PTR, keys[k]) != sizes[k]) missing++;
  CHECK(missing == 0, "%d live entries lost", missing);
  vai_mem_stats(&used, NULL);
  CHECK(used == 0, "all credited (%llu)", used);
}

/* VMM: bytes stay charged until the handle is released AND unmapped; retains add references. */
static void test_vmm(void) {
  vai_cfg.memory_limit = 1000;
  unsigned long long used;
  CHECK(vai_mem_reserve(400) == 0, "create 400");
  vai_mem_commit(VAI_MEM_HANDLE, 7, 400, 0);
  CHECK(vai_mem_vmm_map(0x10000, 200, 7) && vai_mem_vmm_map(0x20000, 200, 7), "two mappings");
  CHECK(vai_mem_vmm_release(7) == 0, "release while mapped credits nothing");
  CHECK(vai_mem_reserve(601) == -1, "still charged: 601 more refused");
  CHECK(vai_mem_vmm_unmap(0x10000, 200) == 0, "one mapping left: nothing credited");
  CHECK(vai_mem_vmm_unmap(0x20000, 200) == 400, "last unmap credits 400");
  vai_mem_stats(&used, NULL);
  CHECK(used == 0, "used %llu", used);
  /* Unmap of a range covering several mappings; retained handle under a new value. */
  CHECK(vai_mem_reserve(300) == 0, "create 300");
  vai_mem_commit(VAI_MEM_HANDLE, 9, 300, 0);
  vai_mem_vmm_map(0x40000, 100, 9);
  vai_mem_vmm_map(0x40100, 200, 9);
  CHECK(vai_mem_vmm_retain(99, 0x40150), "retain through an address");
  CHECK(vai_mem_vmm_release(9) == 0 && vai_mem_vmm_unmap(0x40000, 300) == 0, "release + unmap all: retained");
  CHECK(vai_mem_vmm_release(99) == 300, "releasing the retained handle credits 300");
  CHECK(vai_mem_vmm_release(99) == 0, "twice: nothing");
  CHECK(vai_mem_vmm_map(0x50000, 10, 12345) == 0, "an unknown handle (imported) is not tracked");
  vai_mem_stats(&used, NULL);
  CHECK(used == 0, "used %llu", used);
  /* Pools: a pool's spare reservation counts. */
  vai_mem_set_pool_excess(700);
  CHECK(vai_mem_reserve(301) == -1 && vai_mem_reserve(300) == 0, "pool excess 700 leaves 300");
  vai_mem_unreserve(300);
  vai_mem_set_pool_excess(0);
  vai_cfg.memory_limit = 0;
}

static void test_status(void) {
  vai_status s = {"green", "GPU-0123", 50, 132, 64, 64, "nvml", 3, 1};
  setenv("POD_NAME", "pod-a", 1);
  char buf[1024];
  int n = vai_status_format(buf, sizeof buf, &s, "init");
  CHECK(n > 0 && buf[n - 1] == '\n' && strchr(buf, '\n') == buf + n - 1, "one line");
  CHECK(strstr(buf, "\"mechanism\":\"green\"") && strstr(buf, "\"sms_granted\":64") &&
            strstr(buf, "\"sms_asked\":64") && strstr(buf, "\"limit_pct\":50") &&
            strstr(buf, "\"gpu_uuid\":\"GPU-0123\"") && strstr(buf, "\"phase\":\"init\"") &&
            strstr(buf, "\"memory_peak\":") && strstr(buf, "\"pod\":\"pod-a\"") &&
            strstr(buf, "\"sms_device\":132") && strstr(buf, "\"sms_device_source\":\"nvml\"") &&
            strstr(buf, "\"attr_told_device\":3") && strstr(buf, "\"attr_told_share\":1"),
        "fields: %s", buf);
  char dir[] = "/tmp/vai_units_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "tmp dir");
  snprintf(vai_cfg.status_dir, sizeof vai_cfg.status_dir, "%s", dir);
  vai_status_write(&s, "exit");
  char path[256], line[1024] = "";
  snprintf(path, sizeof path, "%s/vai-%d.json", dir, (int)getpid());
  FILE *f = fopen(path, "r");
  CHECK(f && fgets(line, sizeof line, f) && strstr(line, "\"phase\":\"exit\""), "status file written");
  if (f) fclose(f);
  unlink(path);
  rmdir(dir);
  vai_cfg.status_dir[0] = 0;
}

int main(void) {
  test_pct();
  test_memory();
  test_log_and_dir();
  test_config_load();
  test_limits_file();
  test_sms();
  test_memtrack();
  test_vmm();
  test_status();
  printf("units: %s (%d checks, %d failed)\n", failures ? "FAILED" : "passed", checks, failures);
  return failures ? 1 : 0;
}
