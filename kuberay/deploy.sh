#!/usr/bin/env bash
# Deploy test workloads by letter:  kuberay/deploy.sh a b ...   (a-d; `all` for every one)
# Each is a pod requesting keti.re.kr/gpu-pct (see workloads/workload-*.yaml). Needs kubectl
# pointed at the cluster, the plugin DaemonSet and keti-scheduler running (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
  echo "usage: $0 a|b|c|d|all ..." >&2
  echo "  a: compute-bound  b: memory bandwidth  c: small kernels  d: PyTorch matmul" >&2
}

if [[ $# -eq 0 ]]; then
  usage
  exit 2
fi

letters=()
for arg in "$@"; do
  case "$arg" in
    a | b | c | d) letters+=("$arg") ;;
    all) letters+=(a b c d) ;;
    -h | --help) usage; exit 0 ;;
    *)
      echo "deploy.sh: unknown workload '$arg'; accepted: a, b, c, d or all" >&2
      exit 2
      ;;
  esac
done

# Check every file first, so a bad set deploys nothing.
files=()
for l in "${letters[@]}"; do
  f="$here/workloads/workload-$l.yaml"
  [[ -f "$f" ]] || { echo "deploy.sh: missing $f" >&2; exit 1; }
  files+=("-f" "$f")
done

kubectl apply "${files[@]}"
echo "watch them:  kubectl get pods -l app.kubernetes.io/part-of=keti-workloads -o wide"
echo "throughput:  kubectl logs workload-${letters[0]}"
