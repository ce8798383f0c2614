"""Checkpoint manifests: RLlib checkpoints are pickles, so nothing is loaded unverified.

`keti-ray train` writes `manifest.json` beside every checkpoint it saves: the SHA-256 of each
file and one digest over that listing. `verify_checkpoint` refuses a directory without a
manifest, with a file missing, changed or not listed, or whose listing digest does not match,
before any pickle is opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "keti-ray-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded; the message says why and what is accepted."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listing_digest(files: dict[str, str]) -> str:
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and "__pycache__" not in p.parts
    }


def write_manifest(root: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under `root` and write `root/manifest.json`; returns the manifest."""
    root = Path(root)
    files = _files(root)
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint_sha256": _listing_digest(files),
        "files": files,
        "info": info or {},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {root}: no {MANIFEST_NAME}; only checkpoints written by `keti-ray train` "
            "(which records every file's SHA-256) or the shipped one are loaded"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_NAME} is not valid JSON: {exc}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_NAME} field 'format' must be {MANIFEST_FORMAT!r}"
        )
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise CheckpointError(f"checkpoint {root}: {MANIFEST_NAME} field 'files' lists no files")
    return manifest


def verify_checkpoint(root: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check every file against the manifest (and the listing digest against `expected`)."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root}: not a directory")
    manifest = read_manifest(root)
    listed: dict[str, str] = manifest["files"]
    actual = _files(root)
    missing = sorted(set(listed) - set(actual))
    if missing:
        raise CheckpointError(f"checkpoint {root}: file(s) missing: {', '.join(missing)}")
    extra = sorted(set(actual) - set(listed))
    if extra:
        raise CheckpointError(
            f"checkpoint {root}: file(s) not in the manifest, refusing to load: {', '.join(extra)}"
        )
    changed = sorted(name for name, sha in listed.items() if actual[name] != sha)
    if changed:
        raise CheckpointError(
            f"checkpoint {root}: SHA-256 mismatch (changed since `keti-ray train` wrote it): "
            f"{', '.join(changed)}"
        )
    digest = _listing_digest(listed)
    if manifest.get("checkpoint_sha256") != digest:
        raise CheckpointError(
            f"checkpoint {root}: manifest field 'checkpoint_sha256' does not match its file list"
        )
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(
            f"checkpoint {root}: SHA-256 {digest} is not the expected {expected_sha256}"
        )
    return manifest
