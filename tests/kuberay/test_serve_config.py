"""RayService.serveConfigV2: a valid Serve config, the same applications as serve/serve_config.yaml,
and an import path that resolves inside the package.

Two tests here need serve/ (another part of the project): they fail, naming the missing file,
until serve/app.py and serve/serve_config.yaml exist.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from keti_ray.manifests import (
    REPO_ROOT,
    SERVING_POINTER,
    Manifest,
    ManifestError,
    cluster_applications,
    load_serve_config,
    serve_config_v2,
    sync_serve_config,
)


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys the Serve schema does not declare (Serve ignores them for forward compatibility)."""
    if not isinstance(data, dict):
        return []
    names: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        names[name] = field.annotation
        if field.alias:
            names[field.alias] = field.annotation
    errors = []
    for key, value in data.items():
        if key not in names:
            errors.append(f"{path}.{key}: not a field of {model.__name__}")
            continue
        for sub in _models_in(names[key]):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}"
                errors += unknown_keys(sub, item, where)
    return errors


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


@pytest.fixture(scope="module")
def rayservice(ray_objects: list[Manifest]) -> Manifest:
    (rs,) = [m for m in ray_objects if m.kind == "RayService"]
    return rs


def test_serve_config_v2_is_a_serve_deploy_config(rayservice: Manifest) -> None:
    config = serve_config_v2(rayservice.doc)
    ServeDeploySchema.model_validate(config)
    assert unknown_keys(ServeDeploySchema, config) == []


def test_unknown_serve_keys_are_caught(rayservice: Manifest) -> None:
    config = serve_config_v2(rayservice.doc)
    config["applications"][0]["import_paht"] = "x:y"
    config["applications"][0]["deployments"] = [{"name": "A", "num_replica": 2}]
    errors = unknown_keys(ServeDeploySchema, config)
    assert any("import_paht" in e for e in errors), errors
    assert any("deployments[0].num_replica" in e for e in errors), errors


def test_serve_config_v2_matches_serve_config_yaml(rayservice: Manifest) -> None:
    """Needs serve/serve_config.yaml; `python -m keti_ray.manifests sync-serve-config` syncs."""
    ours = serve_config_v2(rayservice.doc)["applications"]
    theirs = cluster_applications(load_serve_config()["applications"])
    assert ours == theirs, "run: python -m keti_ray.manifests sync-serve-config"


def test_the_rayservice_models_the_clusters_nodes_and_follows_the_pointer(
    rayservice: Manifest,
) -> None:
    """No simulated nodes (issue 13): the node list is the API server's; the policy is the
    serving pointer on the volume the retrain RayJob writes."""
    (app,) = serve_config_v2(rayservice.doc)["applications"]
    env = app["runtime_env"]["env_vars"]
    assert not [k for k in env if "SIM" in k or k == "KETI_NODES_CSV"]
    assert env["KETI_K8S_API"] == "in-cluster"
    assert {d["user_config"]["pointer"] for d in app["deployments"]} == {SERVING_POINTER}


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_import_path_resolves_in_the_package(rayservice: Manifest) -> None:
    """Needs serve/app.py. The module is a file of this repository, in a package pyproject ships,
    and defines the named attribute at top level (checked without importing it)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for app in serve_config_v2(rayservice.doc)["applications"]:
        module, _, attr = app["import_path"].partition(":")
        if not attr:
            module, _, attr = module.rpartition(".")
        assert any(fnmatch.fnmatch(module.split(".")[0], pat) for pat in shipped), (
            f"{module} is not in a package pyproject.toml ships ({shipped})"
        )
        path = _module_file(module)
        assert path is not None, f"{app['import_path']}: no module file for {module} in {REPO_ROOT}"
        tree = ast.parse(path.read_text())
        top = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        } | {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        assert attr in top, f"{path} defines no top-level {attr!r}"


# --- sync-serve-config, on copies -------------------------------------------------------------


def test_sync_serve_config_rewrites_only_the_block(tmp_path: Path, rayservice: Manifest) -> None:
    rs_copy = tmp_path / "rs.yaml"
    rs_copy.write_text(rayservice.path.read_text())
    apps = [
        {
            "name": "allocator",
            "route_prefix": "/",
            "import_path": "serve.app:app",
            "deployments": [{"name": "Allocator", "num_replicas": 2, "user_config": {"k": [1]}}],
        }
    ]
    serve_cfg = tmp_path / "serve_config.yaml"
    serve_cfg.write_text(yaml.safe_dump({"proxy_location": "EveryNode", "applications": apps}))

    assert sync_serve_config(rs_copy, serve_cfg) is True
    doc = yaml.safe_load(rs_copy.read_text())
    (app,) = serve_config_v2(doc)["applications"]
    assert app["runtime_env"]["env_vars"]["KETI_K8S_API"] == "in-cluster"
    assert app["deployments"][0]["user_config"] == {"pointer": SERVING_POINTER}
    assert {k: v for k, v in app.items() if k != "runtime_env"} == {
        **apps[0],
        "deployments": [{**apps[0]["deployments"][0], "user_config": {"pointer": SERVING_POINTER}}],
    }
    before = rayservice.doc.copy()
    before["spec"] = {k: v for k, v in before["spec"].items() if k != "serveConfigV2"}
    after_spec = {k: v for k, v in doc["spec"].items() if k != "serveConfigV2"}
    assert after_spec == before["spec"]  # nothing else changed
    assert rs_copy.read_text().startswith("# keti-allocator")  # comments kept
    assert sync_serve_config(rs_copy, serve_cfg) is False  # idempotent


def test_sync_serve_config_refuses_bad_input(tmp_path: Path, rayservice: Manifest) -> None:
    rs_copy = tmp_path / "rs.yaml"
    rs_copy.write_text(rayservice.path.read_text())
    original = rs_copy.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: not-a-list\n")
    with pytest.raises(ManifestError, match="applications"):
        sync_serve_config(rs_copy, bad)
    with pytest.raises(ManifestError, match="does not exist"):
        sync_serve_config(rs_copy, tmp_path / "missing.yaml")
    assert rs_copy.read_text() == original  # nothing changed
