"""Loader for the openb trace CSVs (Alibaba cluster-trace-gpu-v2023).

Pod lists come in two layouts (11 columns with `gpu_spec` and times, or only the first 5
columns); node lists have `sn, cpu_milli, memory_mib, gpu, model`. Every value is checked:
a bad row raises TraceError naming the file, the line and the field, and nothing is returned
half-loaded.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from keti_ray.cluster import MAX_GPUS_PER_NODE, ModelError, NodeSpec, PodRequest

POD_REQUIRED = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_REQUIRED = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


class TraceError(ValueError):
    """A trace file that cannot be loaded; the message names file, line and field."""


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) after checking the header has every required column."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot open: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(f"{path}: line 1: empty file, expected a header row") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(
                f"{path}: line 1: missing column(s) {', '.join(missing)}; "
                f"required columns are {', '.join(required)}"
            )
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise TraceError(
                    f"{path}: line {line}: malformed row: {len(row)} fields, header has "
                    f"{len(header)}"
                )
            yield line, {h: cell.strip() for h, cell in zip(header, row, strict=True)}


def _int(path: Path, line: int, row: dict[str, str], field: str) -> int:
    raw = row[field]
    try:
        value = int(raw)
    except ValueError:
        raise TraceError(
            f"{path}: line {line}: field {field!r} must be a non-negative integer, got {raw!r}"
        ) from None
    if value < 0:
        raise TraceError(
            f"{path}: line {line}: field {field!r} must be a non-negative integer, got {value}"
        )
    return value


def _unique_name(
    path: Path, line: int, row: dict[str, str], field: str, kind: str, seen: set[str]
) -> str:
    """The row's name: not empty, not seen before in this file (recorded as seen)."""
    name = row[field]
    if not name:
        raise TraceError(f"{path}: line {line}: field {field!r} must not be empty")
    if name in seen:
        raise TraceError(f"{path}: line {line}: field {field!r}: {kind} {name!r} appears twice")
    seen.add(name)
    return name


def load_pods(path: str | Path) -> list[PodRequest]:
    """Load a pod list (11- or 5-column layout) into PodRequests, all or nothing."""
    path = Path(path)
    pods: list[PodRequest] = []
    seen: set[str] = set()
    for line, row in _rows(path, POD_REQUIRED):
        name = _unique_name(path, line, row, "name", "pod", seen)
        values = {f: _int(path, line, row, f) for f in POD_REQUIRED[1:]}
        spec_raw = row.get("gpu_spec", "") or ""
        spec = frozenset(s.strip() for s in spec_raw.split("|") if s.strip())
        try:
            pods.append(PodRequest(name=name, gpu_spec=spec, **values))
        except ModelError as exc:
            raise TraceError(f"{path}: line {line}: field {exc.field!r}: {exc}") from None
    if not pods:
        raise TraceError(f"{path}: no pods in file")
    return pods


def load_nodes(path: str | Path) -> list[NodeSpec]:
    """Load a node list into NodeSpecs, all or nothing."""
    path = Path(path)
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_REQUIRED):
        name = _unique_name(path, line, row, "sn", "node", seen)
        cpu = _int(path, line, row, "cpu_milli")
        mem = _int(path, line, row, "memory_mib")
        gpus = _int(path, line, row, "gpu")
        if gpus > MAX_GPUS_PER_NODE:
            raise TraceError(
                f"{path}: line {line}: field 'gpu' must be 0-{MAX_GPUS_PER_NODE}, got {gpus}"
            )
        model = row["model"]
        if gpus > 0 and not model:
            raise TraceError(f"{path}: line {line}: field 'model' must name the GPU model")
        nodes.append(NodeSpec(name=name, cpu_milli=cpu, memory_mib=mem, num_gpus=gpus, model=model))
    if not nodes:
        raise TraceError(f"{path}: no nodes in file")
    return nodes
