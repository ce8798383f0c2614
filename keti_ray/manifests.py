"""Load the Kubernetes manifests in kuberay/ and keep RayService.serveConfigV2 in step with Serve.

Why: the manifests are data that other code (tests, the deployment guide, CI) reads, and the
RayService must carry the same Serve applications as serve/serve_config.yaml, except what the
cluster sets differently (`cluster_applications`: the nodes come from the API server, not
simulated; the policy follows the serving pointer the retrain RayJob promotes through). One
loader gives every reader the same view and the same clear errors (file and document index).

    python -m keti_ray.manifests list                 # every object: file, kind, namespace/name
    python -m keti_ray.manifests sync-serve-config    # copy serve_config.yaml's applications
                                                      # into 30-rayservice.yaml's serveConfigV2
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = REPO_ROOT / "kuberay"
SERVE_CONFIG = REPO_ROOT / "serve" / "serve_config.yaml"
RAYSERVICE_FILE = MANIFEST_DIR / "30-rayservice.yaml"

_SERVE_KEY = "serveConfigV2:"

# What the RayService runs differently from `make up` (serve/serve_config.yaml): its env vars
# (the API server instead of simulated nodes; telemetry and bookings on the shared volume) and
# its policy (the serving pointer on the shared volume, which `keti-ray retrain --pointer`
# rewrites).
CLUSTER_ENV_VARS = {
    "KETI_K8S_API": "in-cluster",
    "KETI_TELEMETRY_DIR": "/data/telemetry",
    # The booking store must outlive the state actor, which Ray may restart on any node of the
    # RayService: the shared volume is the one place every node mounts (see kuberay/README.md
    # on SQLite over network file systems).
    "KETI_STATE": "/data/allocator/bookings.sqlite",
}
SERVING_POINTER = "/data/checkpoints/serving.json"
CLUSTER_USER_CONFIG = {"pointer": SERVING_POINTER}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and where it came from."""

    path: Path
    index: int  # document index in the file, from 0
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name", ""))

    @property
    def namespace(self) -> str | None:
        return self.doc.get("metadata", {}).get("namespace")

    def where(self) -> str:
        """`file#index (Kind namespace/name)`, for error messages."""
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.path.name}#{self.index} ({self.kind} {ns}{self.name})"


def load_file(path: Path) -> list[Manifest]:
    """Parse every YAML document of `path`; empty documents are skipped, others must be objects."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    out: list[Manifest] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{path}#{i}: a manifest document must be a mapping with apiVersion and kind, "
                f"got {type(doc).__name__}"
            )
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise ManifestError(f"{path}#{i}: field {key!r} is missing; it must be a string")
        out.append(Manifest(path, i, doc))
    return out


def manifest_files(root: Path = MANIFEST_DIR) -> list[Path]:
    """Every *.yaml under `root`, sorted, which is also the apply order of the numbered files."""
    return sorted(p for p in root.rglob("*.yaml") if p.is_file())


def load_all(root: Path = MANIFEST_DIR) -> list[Manifest]:
    """Every object in every manifest file under `root`."""
    return [m for path in manifest_files(root) for m in load_file(path)]


def find(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The one object of `kind` called `name`; ManifestError when there is not exactly one."""
    hits = [m for m in manifests if m.kind == kind and m.name == name]
    if len(hits) != 1:
        raise ManifestError(f"expected one {kind} named {name!r}, found {len(hits)}")
    return hits[0]


def serve_config_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The parsed serveConfigV2 of a RayService object (KubeRay carries it as a YAML string)."""
    raw = rayservice.get("spec", {}).get("serveConfigV2")
    if not isinstance(raw, str):
        raise ManifestError("RayService spec.serveConfigV2 must be a YAML string")
    parsed = yaml.safe_load(raw)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("applications"), list):
        raise ManifestError("RayService spec.serveConfigV2 must be a mapping with `applications`")
    return parsed


def load_serve_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    """serve/serve_config.yaml, which must hold an `applications` list."""
    if not path.is_file():
        raise ManifestError(f"{path} does not exist (it comes with the Serve app, serve/)")
    parsed = yaml.safe_load(path.read_text())
    if not isinstance(parsed, dict) or not isinstance(parsed.get("applications"), list):
        raise ManifestError(f"{path}: must be a mapping with an `applications` list")
    return parsed


def cluster_applications(applications: list[Any]) -> list[Any]:
    """serve_config.yaml's applications as the RayService runs them (see CLUSTER_ENV_VARS)."""
    out = copy.deepcopy(applications)
    for app in out:
        if isinstance(app, dict):
            app.setdefault("runtime_env", {})["env_vars"] = dict(CLUSTER_ENV_VARS)
            for deployment in app.get("deployments") or []:
                if isinstance(deployment, dict) and "user_config" in deployment:
                    deployment["user_config"] = dict(CLUSTER_USER_CONFIG)
    return out


def render_serve_block(applications: list[Any], indent: int) -> list[str]:
    """The lines of a `serveConfigV2: |` literal block carrying `applications`."""
    body = yaml.safe_dump({"applications": applications}, sort_keys=False, default_flow_style=False)
    pad = " " * indent
    return [pad + line if line else line for line in body.splitlines()]


def sync_serve_config(
    rayservice_path: Path = RAYSERVICE_FILE, serve_config_path: Path = SERVE_CONFIG
) -> bool:
    """Rewrite the serveConfigV2 block of `rayservice_path` with the Serve config's applications.

    Only that block changes, so the file's comments stay. Returns True when the file changed.
    """
    apps = cluster_applications(load_serve_config(serve_config_path)["applications"])
    lines = rayservice_path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == _SERVE_KEY + " |"]
    if len(starts) != 1:
        raise ManifestError(f"{rayservice_path}: expected one `serveConfigV2: |` literal block")
    start = starts[0]
    key_indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > key_indent
    ):
        end += 1
    new = lines[: start + 1] + render_serve_block(apps, key_indent + 2) + lines[end:]
    text = "\n".join(new) + "\n"
    if text == rayservice_path.read_text():
        return False
    rayservice_path.write_text(text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keti_ray.manifests", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list every object in kuberay/")
    sub.add_parser("sync-serve-config", help="copy serve_config.yaml's applications")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            for m in load_all():
                print(m.where())
        else:
            changed = sync_serve_config()
            print(f"{RAYSERVICE_FILE.name}: {'updated' if changed else 'already in step'}")
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
