#!/bin/bash
# run_gpu.sh - the shim's GPU acceptance runs (issue 3), on the lent machine. Writes to $OUT:
#   shim_gpu.jsonl  one {"label":..., "result": <workload JSON>} line per run
#   status.jsonl    the shim's status lines (VAI_STATUS_DIR) of every run
#   stderr.log      everything the runs printed on stderr; env.txt: GPU and driver
# Usage (from native/vai_accelerator): bash gpu/run_gpu.sh [sections...]  (default: nomps mps)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vai_out}
mkdir -p "$OUT"
J=$OUT/shim_gpu.jsonl
ERR=$OUT/stderr.log
STATUS=/tmp/vai-status
rm -rf "$STATUS" && mkdir -p "$STATUS"
LIB=$PWD/build/libvai_accelerator.so
PY=python3
SECTIONS=${*:-nomps mps}
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,driver_version,compute_mode,mig.mode.current,power.limit --format=csv
  nvcc --version | tail -2; $PY -c 'import torch; print("torch", torch.__version__)'; } >"$OUT/env.txt" 2>&1
make -s all workloads >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }

# run LABEL [VAR=VALUE ...] CMD...: one workload, its last JSON line recorded under LABEL
run() {
  local label=$1
  shift
  echo "== $label" >>"$ERR"
  local out
  out=$(timeout 150 env "$@" 2>>"$ERR" | grep '^{' | tail -1)
  echo "{\"label\":\"$label\",\"result\":${out:-null}}" >>"$J"
  echo "$label: ${out:-FAILED}"
}
shim() { echo LD_PRELOAD="$LIB" VAI_STATUS_DIR="$STATUS" VAI_LOG_LEVEL=info; }

# pair LABEL SECONDS CMD...: two processes at 50% each under the shim, barrier-aligned
pair() {
  local label=$1 secs=$2
  shift 2
  local bar
  bar=$(mktemp -d)
  for i in 1 2; do
    (out=$(timeout 150 env $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS="$secs" VAI_BARRIER_DIR="$bar" \
      VAI_BARRIER_N=2 "$@" 2>>"$ERR" | grep '^{' | tail -1)
     echo "{\"label\":\"$label/$i\",\"result\":${out:-null}}" >"$bar.$i") &
  done
  wait
  cat "$bar.1" "$bar.2" >>"$J"
  cat "$bar.1" "$bar.2"
  rm -rf "$bar" "$bar.1" "$bar.2"
}

A=build/workload_a B=build/workload_b C=build/workload_c D="$PY workloads/workload_d.py"

overhead() { # three alternating rounds of the empty-kernel launch rate
  local tag=$1
  shift
  for r in 1 2 3; do
    run "$tag/c/noshim/$r" VAI_WL_LAUNCHES=100000 $C
    for pct in "$@"; do run "$tag/c/shim$pct/$r" $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_LAUNCHES=100000 $C; done
  done
}

if [[ " $SECTIONS " == *" nomps "* ]]; then
  run nomps/a/noshim VAI_WL_SECONDS=3 $A
  run nomps/a/shim100 $(shim) BLESS_LIMIT_PCT=100 VAI_WL_SECONDS=3 $A
  for pct in 25 50 75; do run nomps/a/green$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=3 $A; done
  run nomps/a/green50-explicit $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit VAI_WL_SECONDS=3 $A
  run nomps/b/noshim VAI_WL_SECONDS=2 $B
  run nomps/b/green50 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=2 $B
  run nomps/d/noshim VAI_WL_SECONDS=2 $D
  for pct in 25 50; do run nomps/d/green$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=2 $D; done
  run nomps/d-quota/4Gi $(shim) VAI_MEMORY_LIMIT=4Gi $D --quota
  run nomps/d-quota/green50-6Gi $(shim) BLESS_LIMIT_PCT=50 VAI_MEMORY_LIMIT=6Gi $D --quota
  overhead nomps 100 50
fi

if [[ " $SECTIONS " == *" mps "* ]]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  trap 'echo quit | timeout 20 nvidia-cuda-mps-control' EXIT
  timeout 20 nvidia-cuda-mps-control -d && sleep 1
  run mps/a/noshim VAI_WL_SECONDS=4 $A
  for pct in 25 50 75; do run mps/a/shim$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=4 $A; done
  run mps/a/shim50-explicit $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit VAI_WL_SECONDS=3 $A
  run mps/d/noshim VAI_WL_SECONDS=2 $D
  for pct in 25 50 75; do run mps/d/shim$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=2 $D; done
  # Sustained, barrier-aligned: one at 100% for the reference, then two at 50% at once.
  run mps/a/noshim-5s VAI_WL_SECONDS=5 $A
  pair mps/a/pair50 5 $A
  run mps/b/noshim-4s VAI_WL_SECONDS=4 $B
  run mps/b/shim50-4s $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=4 $B
  pair mps/b/pair50 4 $B
  run mps/d/noshim-4s VAI_WL_SECONDS=4 $D
  pair mps/d/pair50 4 $D
  overhead mps 50
  echo quit | timeout 20 nvidia-cuda-mps-control
  trap - EXIT
  tail -5 /tmp/mpslog/control.log >>"$ERR" 2>/dev/null
fi

# ---- second pass: explicit contexts, PyTorch correctness across MPS shares, pinned overhead ----
if [[ " $SECTIONS " == *" explicit "* ]]; then
  run nomps/a/green50-explicit $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit VAI_WL_SECONDS=2 $A
  run nomps/a/green25-explicit $(shim) BLESS_LIMIT_PCT=25 VAI_WL_CTX=explicit VAI_WL_SECONDS=2 $A
  run nomps/d/green75 $(shim) BLESS_LIMIT_PCT=75 VAI_WL_SECONDS=1 $D
fi
mps_start() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  trap 'echo quit | timeout 20 nvidia-cuda-mps-control' EXIT
  timeout 20 nvidia-cuda-mps-control -d && sleep 1
}
mps_stop() { echo quit | timeout 20 nvidia-cuda-mps-control; trap - EXIT; unset CUDA_MPS_PIPE_DIRECTORY; }
if [[ " $SECTIONS " == *" mpscheck "* ]]; then
  mps_start
  run mps/a/shim50-explicit $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit VAI_WL_SECONDS=2 $A
  run mps/a/shim25-explicit $(shim) BLESS_LIMIT_PCT=25 VAI_WL_CTX=explicit VAI_WL_SECONDS=2 $A
  run mps/d/env75-noshim CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75 VAI_WL_SECONDS=1 $D
  for pct in 75 75 60 70 74 80 90; do run mps/d/shim$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=1 $D; done
  mps_stop
fi
# Launch rate A/B, pinned to one core, ten alternating rounds (CPU-bound: noisy otherwise).
pinned_ab() {
  local tag=$1 pct=$2
  for r in 1 2 3 4 5 6 7 8 9 10; do
    run "$tag/c/noshim/$r" VAI_WL_LAUNCHES=100000 taskset -c 3 $C
    run "$tag/c/shim$pct/$r" $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_LAUNCHES=100000 taskset -c 3 $C
  done
}
if [[ " $SECTIONS " == *" overhead "* ]]; then
  pinned_ab nomps-pinned 50
  mps_start
  pinned_ab mps-pinned 50
  mps_stop
fi

# ---- third pass: MPS explicit-context affinity, GEMM correctness vs SM count, green launch cost ----
if [[ " $SECTIONS " == *" mpsaff "* ]]; then
  mps_start
  export VAI_WL_SECONDS=1 VAI_WL_CTX=explicit
  run mpsaff/env50-noaff CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 $A
  for aff in 66 64 34; do run mpsaff/env50-aff$aff CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 VAI_WL_AFFINITY=$aff $A; done
  run mpsaff/noenv-aff66 VAI_WL_AFFINITY=66 $A
  run mpsaff/noenv-aff34 VAI_WL_AFFINITY=34 $A
  run mpsaff/shim50 $(shim) BLESS_LIMIT_PCT=50 $A
  run mpsaff/shim25 $(shim) BLESS_LIMIT_PCT=25 $A
  unset VAI_WL_SECONDS VAI_WL_CTX
  mps_stop
fi
if [[ " $SECTIONS " == *" blas "* ]]; then
  BC="$PY workloads/blas_check.py"
  run blas/nomps-full $BC
  run blas/nomps-green75 $(shim) BLESS_LIMIT_PCT=75 $BC
  run blas/nomps-green75-attrdevice $(shim) BLESS_LIMIT_PCT=75 VAI_SM_ATTRIBUTE=device $BC
  run blas/nomps-green50 $(shim) BLESS_LIMIT_PCT=50 $BC
  mps_start
  run blas/mps-env75 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75 $BC
  run blas/mps-env50 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 $BC
  run blas/mps-env25 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 $BC
  mps_stop
fi
if [[ " $SECTIONS " == *" greenlaunch "* ]]; then
  for r in 1 2 3 4 5 6; do
    run greenlaunch/c/noshim/$r VAI_WL_LAUNCHES=100000 taskset -c 3 $C
    run greenlaunch/c/green64-noshim/$r VAI_WL_CTX=green:64 VAI_WL_LAUNCHES=100000 taskset -c 3 $C
    run greenlaunch/c/shim50/$r $(shim) BLESS_LIMIT_PCT=50 VAI_WL_LAUNCHES=100000 taskset -c 3 $C
  done
fi

# ---- fourth pass: what breaks MPS affinity, GEMM correctness sweep over shares ----
if [[ " $SECTIONS " == *" affprobe "* ]]; then
  mps_start
  P=build/probe_affinity
  aff=30
  for q in none attr_mps attr_sms devres uuid all none; do
    aff=$((aff + 4))
    run affprobe/env50/$q/$aff CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 $P $q $aff
  done
  run affprobe/noenv/attr_sms/20 $P attr_sms 20
  run affprobe/noenv/none/24 $P none 24
  mps_stop
fi
if [[ " $SECTIONS " == *" blassweep "* ]]; then
  BC="$PY workloads/blas_check.py"
  export VAI_BLAS_QUICK=1
  for pct in 30 40 60 70 80 90; do
    run blassweep/green$pct $(shim) BLESS_LIMIT_PCT=$pct $BC
    run blassweep/green$pct-attrdevice $(shim) BLESS_LIMIT_PCT=$pct VAI_SM_ATTRIBUTE=device $BC
  done
  unset VAI_BLAS_QUICK
  run nomps/d/green75-attrdevice $(shim) BLESS_LIMIT_PCT=75 VAI_SM_ATTRIBUTE=device VAI_WL_SECONDS=2 $D
  run nomps/d/green75-attrgranted $(shim) BLESS_LIMIT_PCT=75 VAI_WL_SECONDS=2 $D
  mps_start
  export VAI_BLAS_QUICK=1
  for pct in 10 20 30 40 60 70 80 90 100; do
    run blassweep/mps-env$pct CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$pct $BC
  done
  unset VAI_BLAS_QUICK
  mps_stop
fi

# ---- fifth pass: explicit contexts under MPS through the shim; green PyTorch at the default ----
if [[ " $SECTIONS " == *" final "* ]]; then
  for pct in 25 50 75; do run final/nomps/d/green$pct $(shim) BLESS_LIMIT_PCT=$pct VAI_WL_SECONDS=2 $D; done
  run final/nomps/a/green50 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=2 $A
  mps_start
  export VAI_WL_SECONDS=1
  run final/mps/a/env50-aff66 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 VAI_WL_CTX=explicit VAI_WL_AFFINITY=66 $A
  run final/mps/a/shim50-explicit $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit $A
  run final/mps/a/shim50-explicit-aff40 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_CTX=explicit VAI_WL_AFFINITY=40 $A
  run final/mps/a/shim25-explicit $(shim) BLESS_LIMIT_PCT=25 VAI_WL_CTX=explicit $A
  run final/mps/probe/shim50-none-34 $(shim) BLESS_LIMIT_PCT=50 build/probe_affinity none 34
  run final/mps/probe/shim50-none-80 $(shim) BLESS_LIMIT_PCT=50 build/probe_affinity none 80
  run final/mps/probe/shim50-all-80 $(shim) BLESS_LIMIT_PCT=50 build/probe_affinity all 80
  unset VAI_WL_SECONDS
  mps_stop
fi

# ---- sixth pass: MPS explicit contexts after the fix; green launch-rate A/B with hook counts ----
if [[ " $SECTIONS " == *" validate "* ]]; then
  mps_start
  export VAI_WL_SECONDS=1 VAI_WL_CTX=explicit
  run validate/mps/a/shim50-explicit $(shim) BLESS_LIMIT_PCT=50 $A
  run validate/mps/a/shim25-explicit $(shim) BLESS_LIMIT_PCT=25 $A
  run validate/mps/a/shim75-explicit $(shim) BLESS_LIMIT_PCT=75 $A
  run validate/mps/a/shim50-explicit-aff80 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_AFFINITY=80 $A
  run validate/mps/a/shim50-explicit-aff66 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_AFFINITY=66 $A
  run validate/mps/a/shim50-explicit-aff40 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_AFFINITY=40 $A
  run validate/mps/a/env50-noaff CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 $A
  run validate/mps/a/env50-aff66 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 VAI_WL_AFFINITY=66 $A
  run validate/mps/a/env25-aff32 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 VAI_WL_AFFINITY=32 $A
  run validate/mps/a/env25-aff48 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 VAI_WL_AFFINITY=48 $A
  unset VAI_WL_SECONDS VAI_WL_CTX
  mps_stop
  run validate/nomps/c/shim50-debug $(shim) VAI_LOG_LEVEL=debug BLESS_LIMIT_PCT=50 VAI_WL_LAUNCHES=100000 $C
  for r in $(seq 1 12); do
    run validate/nomps-pinned/c/noshim/$r VAI_WL_LAUNCHES=100000 taskset -c 5 $C
    run validate/nomps-pinned/c/shim50/$r $(shim) BLESS_LIMIT_PCT=50 VAI_WL_LAUNCHES=100000 taskset -c 5 $C
  done
fi

# ---- seventh pass: launch-rate A/B/C/D, pinned, interleaved: is any cost the shim's or green's? ----
if [[ " $SECTIONS " == *" launchab "* ]]; then
  for r in $(seq 1 10); do
    run launchab/c/noshim/$r VAI_WL_LAUNCHES=100000 taskset -c 5 $C
    run launchab/c/shim100/$r $(shim) BLESS_LIMIT_PCT=100 VAI_WL_LAUNCHES=100000 taskset -c 5 $C
    run launchab/c/green64-noshim/$r VAI_WL_CTX=green:64 VAI_WL_LAUNCHES=100000 taskset -c 5 $C
    run launchab/c/shim50/$r $(shim) BLESS_LIMIT_PCT=50 VAI_WL_LAUNCHES=100000 taskset -c 5 $C
  done
fi

# ---- final library sanity: quota, green PyTorch, MPS caps (primary and explicit), pair ----
if [[ " $SECTIONS " == *" sanity "* ]]; then
  run sanity/nomps/d-quota/4Gi $(shim) VAI_MEMORY_LIMIT=4Gi $D --quota
  run sanity/nomps/d/green50 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=1 $D
  run sanity/nomps/a/green25 $(shim) BLESS_LIMIT_PCT=25 VAI_WL_SECONDS=1 $A
  mps_start
  run sanity/mps/a/noshim VAI_WL_SECONDS=2 $A
  run sanity/mps/a/shim50 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=2 $A
  run sanity/mps/a/shim25-explicit $(shim) BLESS_LIMIT_PCT=25 VAI_WL_CTX=explicit VAI_WL_SECONDS=1 $A
  run sanity/mps/d/shim50 $(shim) BLESS_LIMIT_PCT=50 VAI_WL_SECONDS=1 $D
  run sanity/mps/d-quota/shim50-2Gi $(shim) BLESS_LIMIT_PCT=50 VAI_MEMORY_LIMIT=2Gi $D --quota
  pair sanity/mps/a/pair50 3 $A
  mps_stop
fi

cat "$STATUS"/*.json >"$OUT/status.jsonl" 2>/dev/null
echo "done: $(wc -l <"$J") runs"
