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
  CHECK(vai_parse_sm_attribute("granted", &dev, err, sizeof err) == 0 && dev == 0, "granted");
  CHECK(vai_parse_sm_attribute("device", &dev, err, sizeof err) == 0 && dev == 1, "device");
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

static void test_sms(void) {
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

static void test_status(void) {
  vai_status s = {"green", "GPU-0123", 50, 132, 64, 64};
  setenv("POD_NAME", "pod-a", 1);
  char buf[1024];
  int n = vai_status_format(buf, sizeof buf, &s, "init");
  CHECK(n > 0 && buf[n - 1] == '\n' && strchr(buf, '\n') == buf + n - 1, "one line");
  CHECK(strstr(buf, "\"mechanism\":\"green\"") && strstr(buf, "\"sms_granted\":64") &&
            strstr(buf, "\"sms_asked\":64") && strstr(buf, "\"limit_pct\":50") &&
            strstr(buf, "\"gpu_uuid\":\"GPU-0123\"") && strstr(buf, "\"phase\":\"init\"") &&
            strstr(buf, "\"memory_peak\":") && strstr(buf, "\"pod\":\"pod-a\""),
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
  test_sms();
  test_memtrack();
  test_status();
  printf("units: %s (%d checks, %d failed)\n", failures ? "FAILED" : "passed", checks, failures);
  return failures ? 1 : 0;
}
