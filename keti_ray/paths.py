"""Where the repository's data lives: the openb trace and the shipped artefacts."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
TRACE_ENV = "KETI_TRACE_DIR"


def trace_dir() -> Path:
    """The openb trace folder: $KETI_TRACE_DIR, else ../shared/traces/openb beside the repo."""
    env = os.environ.get(TRACE_ENV)
    candidates = [Path(env)] if env else []
    candidates += [
        REPO_DIR.parent / "shared" / "traces" / "openb",
        REPO_DIR / "shared" / "traces" / "openb",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"openb trace not found; set {TRACE_ENV} to the folder holding openb_node_list_gpu_node.csv"
    )


def default_nodes_csv() -> Path:
    return trace_dir() / "openb_node_list_gpu_node.csv"


def pod_list_csv(name: str = "default") -> Path:
    """A pod list by short name (`default`, `gpushare40`, ...) or as a path."""
    if name.endswith(".csv"):
        return Path(name)
    return trace_dir() / f"openb_pod_list_{name}.csv"


def pod_list_names() -> list[str]:
    """Short names of every pod list in the trace folder."""
    prefix = "openb_pod_list_"
    return sorted(p.stem[len(prefix) :] for p in trace_dir().glob(prefix + "*.csv"))
