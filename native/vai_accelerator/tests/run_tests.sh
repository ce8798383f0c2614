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
expect_err bad-sm-attribute-message "VAI_SM_ATTRIBUTE.*auto, granted or device"
t bad-device-sms 0 VAI_DEVICE_SM_COUNT=lots EXPECT_RC=800 "$C" init
expect_err bad-device-sms-message "VAI_DEVICE_SM_COUNT.*1-4096"
t bad-mechanism 0 VAI_MECHANISM=mig EXPECT_RC=800 "$C" init
expect_err bad-mechanism-message "VAI_MECHANISM.*mps, green or auto"
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

# ---- The SM count, per caller: cuBLAS the device's, everyone else the share (issue 11) ----
CD="CALLERS_DIR=$B/callers"
t callers-green 0 BLESS_LIMIT_PCT=50 "$CD" EXPECT_SHARE=64 EXPECT_BLAS=132 "$C" callers
t callers-mps-env 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 VAI_DEVICE_SM_COUNT=132 "$CD" EXPECT_SHARE=66 \
  EXPECT_BLAS=132 "$C" callers
t callers-mps-25 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=25 VAI_DEVICE_SM_COUNT=132 "$CD" EXPECT_SHARE=32 \
  EXPECT_BLAS=132 "$C" callers
# No VAI_DEVICE_SM_COUNT: NVML in the process (16896 cores / 128 per SM on 9.0 = 132).
t callers-mps-nvml 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=75 LD_LIBRARY_PATH="$FAKE:$B/fake-nvml" "$CD" \
  EXPECT_SHARE=98 EXPECT_BLAS=132 "$C" callers
t callers-mps-nvml-cores 0 FAKE_CUDA_MPS=1 FAKE_CUDA_SMS=114 BLESS_LIMIT_PCT=50 FAKE_NVML_CORES=14592 \
  LD_LIBRARY_PATH="$FAKE:$B/fake-nvml" "$CD" EXPECT_SHARE=56 EXPECT_BLAS=114 "$C" callers
# Neither: the driver's answer (the share) for everyone, with a warning.
t callers-mps-unknown 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 "$CD" EXPECT_SHARE=66 EXPECT_BLAS=66 "$C" callers
if grep -q "device SM count unknown" "$TMP/err"; then pass=$((pass + 1)); echo "PASS callers-mps-unknown-warns"
else fail=$((fail + 1)); echo "FAIL callers-mps-unknown-warns"; fi
t callers-granted 0 BLESS_LIMIT_PCT=50 VAI_SM_ATTRIBUTE=granted "$CD" EXPECT_SHARE=64 EXPECT_BLAS=64 "$C" callers
t callers-device 0 BLESS_LIMIT_PCT=50 VAI_SM_ATTRIBUTE=device "$CD" EXPECT_SHARE=132 EXPECT_BLAS=132 "$C" callers
t callers-mps-device 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 VAI_SM_ATTRIBUTE=device VAI_DEVICE_SM_COUNT=132 \
  "$CD" EXPECT_SHARE=132 EXPECT_BLAS=132 "$C" callers
t callers-uncapped 0 "$CD" EXPECT_SHARE=132 EXPECT_BLAS=132 "$C" callers
# MPS never gives fewer than 8 SMs (measured 1-7% -> 8): that is the share there, not an escape.
t "mps[3%]-floor" 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=3 VAI_DEVICE_SM_COUNT=132 EXPECT_SMS=8 "$C" mps

# A stripped program with "cuBLAS" linked in statically: told the device's count (as a whole).
t static-blas-program 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 VAI_DEVICE_SM_COUNT=132 "$B/test_static_blas"
if grep -qx "told 132" "$TMP/out"; then pass=$((pass + 1)); echo "PASS static-blas-program-told-132"
else fail=$((fail + 1)); echo "FAIL static-blas-program-told-132: $(cat "$TMP/out")"; fi

# ---- MPS: read back the SMs granted; fail closed above the share ----
t mps-escape-fails-closed 0 FAKE_CUDA_MPS=1 FAKE_CUDA_MPS_ESCAPE=1 BLESS_LIMIT_PCT=25 VAI_DEVICE_SM_COUNT=132 \
  EXPECT_RC=800 "$C" failed
expect_err mps-escape-message "MPS granted 132 SMs.*more than the 32 of BLESS_LIMIT_PCT=25"
t mechanism-mps-required 0 VAI_MECHANISM=mps BLESS_LIMIT_PCT=50 EXPECT_RC=801 "$C" failed
expect_err mechanism-mps-required-message "VAI_MECHANISM=mps but this process is not an MPS client"

# ---- Green contexts the program makes itself: never more than the share ----
t greenhooks-green 0 BLESS_LIMIT_PCT=50 EXPECT_CAP=64 "$C" greenhooks
t greenhooks-mps 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 VAI_DEVICE_SM_COUNT=132 EXPECT_CAP=66 "$C" greenhooks

# ---- Limits a pod cannot raise: the limits file wins over a raising env ----
L=$TMP/limits
printf '# written by the GPU plugin\nBLESS_LIMIT_PCT=25\nVAI_MEMORY_LIMIT=1Gi\nVAI_DEVICE_SM_COUNT=132\nFUTURE_KEY=x\n' >"$L"
t limits-file-beats-env-100 0 VAI_LIMITS_FILE="$L" BLESS_LIMIT_PCT=100 EXPECT_SMS=32 "$C" green
t limits-file-beats-unset 0 VAI_LIMITS_FILE="$L" EXPECT_SMS=32 "$C" green
t limits-env-may-lower 0 VAI_LIMITS_FILE="$L" BLESS_LIMIT_PCT=10 EXPECT_SMS=8 "$C" green
t limits-file-mps 0 FAKE_CUDA_MPS=1 VAI_LIMITS_FILE="$L" BLESS_LIMIT_PCT=100 \
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 EXPECT_MPS_PCT=25 EXPECT_SMS=32 "$C" mps
t limits-memory-beats-env 0 VAI_LIMITS_FILE="$L" VAI_MEMORY_LIMIT=8Gi EXPECT_TOTAL_MIB=1024 "$C" quota_total
t limits-memory-env-may-lower 0 VAI_LIMITS_FILE="$L" VAI_MEMORY_LIMIT=512Mi EXPECT_TOTAL_MIB=512 "$C" quota_total
# The shim preloaded after the image's own preload (as /etc/ld.so.preload puts it after LD_PRELOAD).
t limits-after-other-preload 0 LD_PRELOAD="/lib/x86_64-linux-gnu/libm.so.6:$LIB" VAI_LIMITS_FILE="$L" \
  BLESS_LIMIT_PCT=100 EXPECT_SMS=32 "$C" green
printf 'BLESS_LIMIT_PCT=lots\n' >"$TMP/bad-limits"
t limits-bad-file 0 VAI_LIMITS_FILE="$TMP/bad-limits" EXPECT_RC=800 "$C" init
expect_err limits-bad-file-message "limits file .*bad-limits line 1: invalid BLESS_LIMIT_PCT"
printf 'BLESS_LIMIT_PCT\n' >"$TMP/bad-limits"
t limits-bad-line 0 VAI_LIMITS_FILE="$TMP/bad-limits" EXPECT_RC=800 "$C" init
expect_err limits-bad-line-message "expected KEY=VALUE"
t limits-missing-file 0 VAI_LIMITS_FILE="$TMP/none" EXPECT_RC=800 "$C" init
expect_err limits-missing-file-message "cannot read the limits file"
# The system path (here moved into the build tree) wins; VAI_LIMITS_FILE is then ignored.
SYS=$B/syspath
printf 'BLESS_LIMIT_PCT=25\n' >"$SYS/limits"
printf 'BLESS_LIMIT_PCT=90\n' >"$TMP/loose"
t limits-system-path-wins 0 LD_PRELOAD="$SYS/libvai_accelerator.so" VAI_LIMITS_FILE="$TMP/loose" EXPECT_SMS=32 "$C" green
rm -f "$SYS/limits"
t limits-env-file-without-system 0 LD_PRELOAD="$SYS/libvai_accelerator.so" VAI_LIMITS_FILE="$TMP/loose" \
  EXPECT_SMS=112 "$C" green

# ---- A memory quota without escapes ----
t quota-vmm 0 VAI_MEMORY_LIMIT=1Gi "$C" vmm
t quota-async-frees 0 VAI_MEMORY_LIMIT=1Gi "$C" async
t quota-async-many 0 VAI_MEMORY_LIMIT=1Gi "$C" async_many
# The same with the counting build: entries looked at stay linear in frees + polls (issue: the
# pending list was rescanned from its start at every credit).
t quota-async-many-visits 0 VAI_MEMORY_LIMIT=1Gi LD_PRELOAD="$B/counting/libvai_accelerator.so" \
  EXPECT_VISIT_BOUND=1 "$C" async_many
t quota-pools 0 VAI_MEMORY_LIMIT=1Gi "$C" pools
t quota-v1 0 VAI_MEMORY_LIMIT=1Mi "$C" v1
mkdir -p "$TMP/st2"
t status-fields 0 FAKE_CUDA_MPS=1 BLESS_LIMIT_PCT=50 VAI_DEVICE_SM_COUNT=132 "$CD" EXPECT_SHARE=66 \
  EXPECT_BLAS=132 "VAI_STATUS_DIR=$TMP/st2" "$C" callers
f=$(ls "$TMP"/st2/vai-*.json 2>/dev/null | head -1)
expect_file status-line-sms "${f:-missing}" '"mechanism":"mps"' '"sms_device":132' '"sms_asked":66' \
  '"sms_granted":66' '"sms_device_source":"env"' '"sm_attribute":"auto"' '"attr_told_device":18' \
  '"attr_told_share":7'

echo "shim tests: $pass passed, $fail failed"
[ "$fail" = 0 ]
