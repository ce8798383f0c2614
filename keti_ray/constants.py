"""Names every part relies on (design.md, "Names that everyone relies on").

One source of truth: the device plugins, the Serve app, the shim helper and the
KubeRay manifests all read these, and a test checks the manifests against them.
"""

from __future__ import annotations

# Kubernetes extended resources.
GPU_RESOURCE = "keti.re.kr/gpu-pct"
NPU_RESOURCE = "keti.re.kr/npu"
GPU_UNITS_PER_DEVICE = 100  # SM percent units per physical GPU

# Environment variables.
ENV_BLESS_LIMIT_PCT = "BLESS_LIMIT_PCT"
ENV_VAI_MEMORY_LIMIT = "VAI_MEMORY_LIMIT"
ENV_VAI_STATUS_DIR = "VAI_STATUS_DIR"
ENV_VAI_LOG_LEVEL = "VAI_LOG_LEVEL"
ENV_LD_PRELOAD = "LD_PRELOAD"
ENV_MPS_PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"
ENV_MPS_LOG_DIRECTORY = "CUDA_MPS_LOG_DIRECTORY"
ENV_NPU_DEVICE_COUNT = "NPU_DEVICE_COUNT"
ENV_API_PORT = "API_PORT"
ENV_GPU_UUID = "GPU_UUID"
ENV_NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
ENV_TOKEN = "KETI_RAY_TOKEN"

# Files and directories (defaults on a node / inside a container).
SHIM_LIBRARY_NAME = "libvai_accelerator.so"
SHIM_CONTAINER_PATH = "/usr/local/vai/" + SHIM_LIBRARY_NAME
DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
KUBELET_SOCKET_NAME = "kubelet.sock"
MPS_PIPE_DIR = "/tmp/nvidia-mps"  # CUDA_MPS_PIPE_DIRECTORY inside containers (agent and tenants)
# The pipe directory on the node: NOT /tmp/nvidia-mps, because libnvidia-container bind-mounts
# that host path into every GPU container when it exists (lookup_ipcs/mount_ipc), which would
# hand the control socket to whole-GPU tenants too.  Only the plugin's Allocate mounts this one.
MPS_PIPE_HOST_DIR = "/run/keti-ray/mps-pipe"
MPS_SHM_CONTAINER_PATH = "/dev/shm"  # where MPS clients and the server look for their shm files
MPS_LOG_DIR = "/var/log/nvidia-mps"
MPS_SHM_HOST_DIR = "/run/keti-ray/mps-shm"  # the MPS server's /dev/shm on the node (the GPU
# DaemonSet's agent mounts it there); MPS tenants need it at /dev/shm too, instead of hostIPC
VAI_STATUS_HOST_DIR = "/var/run/keti-ray/vai-status"

# Ray custom resource carried by each GPU/NPU node that runs a NodeAgent.
RAY_NODE_RESOURCE = "keti_node"

DEFAULT_API_PORT = 8000

# Kubernetes deployment (kuberay/): names the manifests share with the plugins and the shim helper.
SHIM_CONFIGMAP_NAME = "vai-accelerator-binary"  # ConfigMap carrying the shim (binaryData key:
# SHIM_LIBRARY_NAME), printed by `keti-ray shim configmap`.
SHIM_HOST_DIR = "/var/lib/keti-ray/vai"  # where the plugin DaemonSet installs the shim on each
# node; Allocate mounts SHIM_HOST_DIR/SHIM_LIBRARY_NAME read-only at SHIM_CONTAINER_PATH.
GPU_PLUGIN_SOCKET = "keti-gpu.sock"  # the GPU plugin's socket in DEVICE_PLUGIN_DIR
NPU_PLUGIN_SOCKET = "keti-npu.sock"  # the NPU plugin's socket in DEVICE_PLUGIN_DIR

# The shim's limits (CONTRACTS: the plugin writes them, the shim applies the stricter of them
# and the pod's env).
ENV_VAI_DEVICE_SM_COUNT = "VAI_DEVICE_SM_COUNT"  # the GPU's full SM count, from NVML
ENV_VAI_SM_ATTRIBUTE = "VAI_SM_ATTRIBUTE"  # auto (default)|granted|device: SM-count answer
ENV_VAI_LIMITS_FILE = "VAI_LIMITS_FILE"  # another limits file, honoured only when the mount
# at LIMITS_CONTAINER_PATH is absent (tests)
ENV_VAI_MECHANISM = "VAI_MECHANISM"  # mps|green|auto
LIMITS_CONTAINER_PATH = "/etc/vai/limits"  # read-only mount of the allocation's limits file
LD_SO_PRELOAD_CONTAINER_PATH = "/etc/ld.so.preload"  # read-only mount naming the shim
LIMITS_HOST_DIR = "/var/lib/keti-ray/limits"  # <allocation-id>/limits on the node

# The allocator's decision on a pod (written at bind, honoured by the GPU plugin), and what a
# node publishes about its GPUs.
ANN_ALLOCATION = "keti.re.kr/allocation"  # JSON, keti_ray/annotations.py
LABEL_GPU_MODEL = "keti.re.kr/gpu-model"  # node label
ANN_GPU_UUIDS = "keti.re.kr/gpu-uuids"  # node annotation: UUIDs in index order, comma-separated
ANN_GPU_SM_COUNT = "keti.re.kr/gpu-sm-count"  # node annotation: SMs per GPU
ANN_GPU_MEMORY_MIB = "keti.re.kr/gpu-memory-mib"  # node annotation: memory per GPU (MiB)

# The allocator on Kubernetes (keti_ray/k8s/): where its API server is. "in-cluster": the pod's
# service account; a URL: that server (tests: the API-server emulator), with the bearer token
# in KETI_K8S_TOKEN; unset: not on Kubernetes (simulated or CSV nodes, as `make up`).
ENV_K8S_API = "KETI_K8S_API"
ENV_K8S_TOKEN = "KETI_K8S_TOKEN"
K8S_IN_CLUSTER = "in-cluster"
