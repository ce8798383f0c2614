"""Checkpoints without pickles: weights as safetensors, the module built from code + JSON.

A checkpoint folder holds exactly three files: `weights.safetensors` (tensors only, no code),
`config.json` (the network's sizes and the feature names it was trained on) and
`manifest.json` (the SHA-256 of each file and one digest over that listing, plus training
info). `verify_checkpoint` refuses a folder without a manifest, with a file missing, changed
or not listed, or whose listing digest does not match; `load_scorer` then also refuses any
file other than those three, a config whose feature names differ from the code's, and
weights that do not fit the network exactly. Nothing in a checkpoint is ever executed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "keti-ray-checkpoint/2"
WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_FILES = frozenset({MANIFEST_NAME, WEIGHTS_NAME, CONFIG_NAME})
MODULE_KIND = "keti-ray-candidate-scorer"


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
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(
            f"checkpoint {root}: {MANIFEST_NAME} field 'format' must be {MANIFEST_FORMAT!r} "
            f"(safetensors weights + config.json), got {got!r}; older pickled RLlib "
            "checkpoints are not loaded"
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


def save_scorer(root: str | Path, net, config: dict[str, Any], info: dict[str, Any]) -> dict:
    """Write weights (safetensors), config.json and the manifest into `root` (a new folder)."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(p.name for p in root.iterdir())
    if leftovers:
        raise CheckpointError(f"checkpoint {root}: folder is not empty ({', '.join(leftovers)})")
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(tensors, str(root / WEIGHTS_NAME))
    (root / CONFIG_NAME).write_text(json.dumps({"kind": MODULE_KIND, **config}, indent=1) + "\n")
    return write_manifest(root, info)


def _config_int(config: dict, key: str, root: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(
            f"checkpoint {root}: {CONFIG_NAME} field {key!r} must be a positive integer, "
            f"got {value!r}"
        )
    return value


def _config_bool(config: dict, key: str, root: Path) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise CheckpointError(
            f"checkpoint {root}: {CONFIG_NAME} field {key!r} must be true or false, got {value!r}"
        )
    return value


def _config_groups(config: dict, root: Path) -> int:
    """`linear_groups` (absent in older checkpoints: one weight vector for every pod)."""
    from keti_ray.rl.pod_groups import group_count_problem

    value = config.get("linear_groups", 1)
    problem = group_count_problem(value)
    if problem:
        raise CheckpointError(f"checkpoint {root}: {CONFIG_NAME} field 'linear_groups' {problem}")
    return int(value)


def load_scorer(
    root: str | Path,
    expected_sha256: str | None = None,
    candidate_features: tuple[str, ...] | None = None,
    global_features: tuple[str, ...] | None = None,
):
    """(CandidateScorer, config, manifest) of a verified checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from keti_ray.rl.scorer import CandidateScorer

    root = Path(root)
    manifest = verify_checkpoint(root, expected_sha256)
    unknown = sorted(set(manifest["files"]) - CHECKPOINT_FILES)
    if unknown:
        raise CheckpointError(
            f"checkpoint {root}: unexpected file(s) {', '.join(unknown)}; a checkpoint holds "
            f"only {', '.join(sorted(CHECKPOINT_FILES))}"
        )
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if name not in manifest["files"]:
            raise CheckpointError(f"checkpoint {root}: no {name}")
    try:
        config = json.loads((root / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {root}: {CONFIG_NAME} is not JSON ({exc.msg})") from None
    if not isinstance(config, dict) or config.get("kind") != MODULE_KIND:
        raise CheckpointError(
            f"checkpoint {root}: {CONFIG_NAME} field 'kind' must be {MODULE_KIND!r}"
        )
    for key, expected in (
        ("candidate_features", candidate_features),
        ("global_features", global_features),
    ):
        if expected is not None and tuple(config.get(key) or ()) != tuple(expected):
            raise CheckpointError(
                f"checkpoint {root}: {CONFIG_NAME} field {key!r} does not match this code's "
                f"features {list(expected)}; retrain the checkpoint"
            )
    net = CandidateScorer(
        len(config.get("candidate_features") or ()) or _config_int(config, "cand_dim", root),
        len(config.get("global_features") or ()) or _config_int(config, "glob_dim", root),
        _config_int(config, "hidden", root),
        linear_head=_config_bool(config, "linear_head", root),
        linear_groups=_config_groups(config, root),
    )
    try:
        tensors = load_file(str(root / WEIGHTS_NAME))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {root}: {WEIGHTS_NAME} is not readable: {exc}") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {root}: {WEIGHTS_NAME} does not fit the network of {CONFIG_NAME}: {first}"
        ) from None
    return net.eval(), config, manifest
