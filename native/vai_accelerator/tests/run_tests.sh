#!/bin/sh
# run_tests.sh BUILD_DIR - runs the shim's CPU tests: test_client cases under LD_PRELOAD with the
# fake libcuda.so.1, one process per configuration (the shim reads its environment at start).
set -u
B=$(cd "$1" && pwd)
LIB=$B/libvai_accelerator.so
FAKE=$B/fake
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0

# t NAME EXPECTED_RC [VAR=VALUE ...] CMD ARGS...   (clean environment + the shim + the fake)
t() {
  name=$1 want=$2
  shift 2
  env -i PATH="$PATH" LD_LIBRARY_PATH="$FAKE" LD_PRELOAD="$LIB" "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  if [ "$rc" = "$want" ]; then
    pass=$((pass + 1)); echo "PASS $name"
  else
    fail=$((fail + 1)); echo "FAIL $name (exit $rc, expected $want)"; cat "$TMP/out" "$TMP/err" | sed 's/^/    /'
  fi
}
# expect_err NAME PATTERN: the last run's stderr is exactly one line matching PATTERN
expect_err() {
  lines=$(wc -l <"$TMP/err")
  if [ "$lines" -eq 1 ] && grep -q -- "$2" "$TMP/err"; then
    pass=$((pass + 1)); echo "PASS $1"
  else
    fail=$((fail + 1)); echo "FAIL $1: stderr was:"; sed 's/^/    /' "$TMP/err"
  fi
}
# expect_file NAME FILE PATTERN...: FILE holds one line matching every PATTERN
expect_file() {
  name=$1 file=$2
  shift 2
  ok=1
  [ -f "$file" ] && [ "$(wc -l <"$file")" -eq 1 ] || ok=0
  for p in "$@"; do grep -q -- "$p" "$file" 2>/dev/null || ok=0; done
  if [ $ok = 1 ]; then pass=$((pass + 1)); echo "PASS $name"; else
    fail=$((fail + 1)); echo "FAIL $name: $(cat "$file" 2>/dev/null)"; fi
}

C=$B/test_client

# Interception: dlsym and cuGetProcAddress hand out the hooks, with either kind of driver answer.
t hooks-exported-addresses 0 "$C" hooks
t hooks-internal-addresses 0 FAKE_CUDA_GPA=internal "$C" hooks
t rtld-next-semantics 0 "$B/test_next"
t linked-program 0 BLESS_LIMIT_PCT=50 VAI_MEMORY_LIMIT=1Mi "$B/test_linked"

# Configuration: bad values fail closed with one line naming the variable.
for v in 0 150 -5 abc "" 50.5 " 50"; do
  t "bad-pct[$v]" 0 "BLESS_LIMIT_PCT=$v" EXPECT_RC=800 "$C" init
  expect_err "bad-pct[$v]-message" "BLESS_LIMIT_PCT.*1-99"
done
for v in 0 20G abc "" -1 1.5Gi; do
  t "bad-mem[$v]" 0 "VAI_MEMORY_LIMIT=$v" EXPECT_RC=800 "$C" init
  expect_err "bad-mem[$v]-message" "VAI_MEMORY_LIMIT.*Gi"
done
t bad-status-dir 0 VAI_STATUS_DIR=relative EXPECT_RC=800 "$C" init
expect_err bad-status-dir-message "VAI_STATUS_DIR.*absolute"
t bad-log-level 0 VAI_LOG_LEVEL=loud EXPECT_RC=800 "$C" init
expect_err bad-log-level-message "VAI_LOG_LEVEL"
t bad-sm-attribute 0 VAI_SM_ATTRIBUTE=all EXPECT_RC=800 "$C" init
expect_err bad-sm-attribute-message "VAI_SM_ATTRIBUTE.*granted or device"
for v in 1 50 99 100; do t "good-pct[$v]" 0 "BLESS_LIMIT_PCT=$v" EXPECT_RC=0 "$C" init; done
# A process that never touches CUDA is unaffected, even with a bad configuration.
t non-cuda-process 0 BLESS_LIMIT_PCT=abc sh -c 'echo hello'
if [ "$(cat "$TMP/out")" = hello ] && [ ! -s "$TMP/err" ]; then pass=$((pass + 1)); echo "PASS non-cuda-silent"
else fail=$((fail + 1)); echo "FAIL non-cuda-silent"; fi

# Green context (no MPS): 8-SM steps, rounded down, on every thread and for explicit contexts.
for pair in 25:32 50:64 75:96 1:8 99:128; do
  pct=${pair%%:*} sms=${pair#*:}
  t "green[$pct%]" 0 "BLESS_LIMIT_PCT=$pct" "EXPECT_SMS=$sms" "$C" green
done
t green-attribute-granted 0 BLESS_LIMIT_PCT=50 EXPECT_SMS=64 VAI_SM_ATTRIBUTE=granted EXPECT_ATTR=64 "$C" green
t green-internal-addresses 0 BLESS_LIMIT_PCT=50 EXPECT_SMS=64 FAKE_CUDA_GPA=internal "$C" green

# MPS: the percentage reaches the driver; explicit contexts get the SM-count affinity.
t "mps[25%]" 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=25 EXPECT_SMS=32 "$C" mps
t "mps[50%]" 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 EXPECT_SMS=66 "$C" mps
t "mps[75%]" 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=75 EXPECT_SMS=98 "$C" mps
t mps-keeps-lower-env 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20 \
  EXPECT_MPS_PCT=20 EXPECT_SMS=26 "$C" mps
t mps-lowers-higher-env 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=80 \
  EXPECT_MPS_PCT=50 EXPECT_SMS=66 "$C" mps

# No limit: pass-through.
t passthrough-unset 0 "$C" passthrough
t passthrough-100 0 BLESS_LIMIT_PCT=100 "$C" passthrough
t passthrough-100-mps 0 BLESS_LIMIT_PCT=100 FAKE_CUDA_MPS=1 "$C" passthrough

# Neither MPS nor green contexts: CUDA init fails, with one line.
t no-mechanism 0 BLESS_LIMIT_PCT=50 FAKE_CUDA_NO_GREEN=1 EXPECT_RC=801 "$C" failed
expect_err no-mechanism-message "cannot enforce BLESS_LIMIT_PCT=50"
t no-mechanism-unlimited 0 FAKE_CUDA_NO_GREEN=1 EXPECT_RC=0 "$C" failed

# Memory quota, and the status line with its peak.
mkdir -p "$TMP/status"
t memory-quota 0 VAI_MEMORY_LIMIT=1Gi BLESS_LIMIT_PCT=50 "VAI_STATUS_DIR=$TMP/status" "$C" memory
f=$(ls "$TMP"/status/vai-*.json 2>/dev/null | head -1)
expect_file status-line "${f:-missing}" '"phase":"exit"' '"mechanism":"green"' '"memory_limit":1073741824' \
  '"memory_peak":1073741824' '"memory_used":0' '"sms_granted":64' '"sms_asked":64' '"limit_pct":50' \
  '"gpu_uuid":"GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"'
rm -f "$TMP"/status/*
t memory-quota-mps 0 VAI_MEMORY_LIMIT=1Gi BLESS_LIMIT_PCT=50 FAKE_CUDA_MPS=1 "VAI_STATUS_DIR=$TMP/status" "$C" memory
f=$(ls "$TMP"/status/vai-*.json 2>/dev/null | head -1)
expect_file status-line-mps "${f:-missing}" '"mechanism":"mps"' '"sms_granted":66' '"sms_asked":66' '"sms_device":66'
t memory-driver-refusal 0 VAI_MEMORY_LIMIT=1Gi FAKE_CUDA_MEM_TOTAL=805306368 "$C" driver_oom

t memory-threads 0 VAI_MEMORY_LIMIT=64Mi FAKE_CUDA_SLOW_FREE=1 "$C" threads

echo "shim tests: $pass passed, $fail failed"
[ "$fail" = 0 ]
