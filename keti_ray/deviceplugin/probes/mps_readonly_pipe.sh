#!/bin/bash
# Does an MPS client work with the pipe directory bind-mounted read-only (as the GPU plugin's
# Allocate mounts it for MPS tenants)? Run as root on a GPU machine.
set -u
P=/tmp/mps-pipe-rw; L=/tmp/mps-log; mkdir -p $P $L
export CUDA_MPS_PIPE_DIRECTORY=$P CUDA_MPS_LOG_DIRECTORY=$L
nvidia-cuda-mps-control -d; sleep 1
echo "== control socket files:"; ls -la $P
cat > /tmp/client.py <<'PY'
import torch, os
x = torch.randn(2048, 2048, device="cuda"); y = (x @ x).sum().item()
print("client ok, pipe", os.environ["CUDA_MPS_PIPE_DIRECTORY"], "sms",
      torch.cuda.get_device_properties(0).multi_processor_count)
PY
echo "== read-only bind mount, client with 25%:"
unshare -m --propagation private bash -c "mkdir -p /tmp/ro-pipe && mount --bind $P /tmp/ro-pipe && mount -o remount,bind,ro /tmp/ro-pipe && touch /tmp/ro-pipe/x 2>&1 | head -1; CUDA_MPS_PIPE_DIRECTORY=/tmp/ro-pipe CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 timeout 120 python3 /tmp/client.py; echo rc=\$?"
echo "== server list (a client attached means MPS served it):"; echo get_server_list | nvidia-cuda-mps-control
echo "== control log tail:"; tail -5 $L/control.log
echo quit | nvidia-cuda-mps-control
