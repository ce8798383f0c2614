#!/usr/bin/env bash
# Remove every test workload (workload-a..d and npu-test): kuberay/clean.sh
# Only pods labelled app.kubernetes.io/part-of=keti-workloads are touched; keti-ray itself stays.
set -euo pipefail

kubectl delete pod --all-namespaces -l app.kubernetes.io/part-of=keti-workloads \
  --ignore-not-found --wait=true
