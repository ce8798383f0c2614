"""Publish this node's GPUs on its Node object (CONTRACTS §3), through the API server.

The allocator builds its cluster model from Nodes: the label `keti.re.kr/gpu-model`, and the
annotations `keti.re.kr/gpu-uuids` (comma list, index order), `keti.re.kr/gpu-sm-count` and
`keti.re.kr/gpu-memory-mib` (one number when every GPU of the node has the same, else a comma
list in index order).  A label value allows only `[A-Za-z0-9_.-]`, at most 63 characters, so
the model name's other characters become `-` ("NVIDIA H200" -> "NVIDIA-H200").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from keti_ray.constants import ANN_GPU_MEMORY_MIB, ANN_GPU_SM_COUNT, ANN_GPU_UUIDS, LABEL_GPU_MODEL
from keti_ray.deviceplugin.nvml import GpuInfo
from keti_ray.shares import device_sm_count

log = logging.getLogger(__name__)


def label_value(text: str) -> str:
    """A valid label value for `text` (Kubernetes: <= 63 chars, alphanumeric at both ends)."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip())[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", v)


def _one_or_list(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ",".join(str(v) for v in values)


def node_patch(gpus: Sequence[GpuInfo]) -> dict[str, Any]:
    """The strategic-merge patch that publishes `gpus` (index order) on the Node."""
    gpus = sorted(gpus, key=lambda g: g.index)
    if not gpus:
        return {"metadata": {"labels": {LABEL_GPU_MODEL: None}, "annotations": {
            ANN_GPU_UUIDS: None, ANN_GPU_SM_COUNT: None, ANN_GPU_MEMORY_MIB: None}}}  # fmt: skip
    models = sorted({g.name for g in gpus})
    sms = [g.sm_count or device_sm_count(g.name) or 0 for g in gpus]
    return {
        "metadata": {
            "labels": {LABEL_GPU_MODEL: label_value(models[0] if len(models) == 1 else "mixed")},
            "annotations": {
                ANN_GPU_UUIDS: ",".join(g.uuid for g in gpus),
                ANN_GPU_SM_COUNT: _one_or_list(sms),
                ANN_GPU_MEMORY_MIB: _one_or_list([g.memory_mib for g in gpus]),
            },
        }
    }


def publish(api_client: Any, node: str, gpus: Sequence[GpuInfo], timeout_s: float = 5.0) -> dict:
    """PATCH the Node (verb `patch` on `nodes`); returns the patch sent."""
    from kubernetes import client

    body = node_patch(gpus)
    client.CoreV1Api(api_client).patch_node(
        node, body, _request_timeout=timeout_s, _preload_content=False
    )
    return body


class NodePublisher:
    """Publishes at start, retrying with backoff until it lands, then every `every_s`
    (a node object re-created by an operator gets its GPUs back)."""

    def __init__(self, api_client: Any, node: str, gpus: Sequence[GpuInfo], every_s: float = 300.0):
        self.api_client = api_client
        self.node = node
        self.gpus = list(gpus)
        self.every_s = every_s
        self.published = 0
        self.failures = 0
        self.last_error: str | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_once(self) -> bool:
        try:
            publish(self.api_client, self.node, self.gpus)
        except Exception as e:
            self.failures += 1
            self.last_error = str(e)
            log.warning("publishing GPUs on node %s failed: %s", self.node, e)
            return False
        self.published += 1
        self.last_error = None
        return True

    def _loop(self) -> None:
        backoff = 1.0
        while not self._halt.is_set():
            if self.publish_once():
                backoff = 1.0
                self._halt.wait(self.every_s)
            else:
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def start(self) -> NodePublisher:
        self._thread = threading.Thread(target=self._loop, name="node-publish", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
