"""Every manifest parses, the loader's errors are clear, deploy.sh/clean.sh parse and behave,
and the Dockerfile puts things where the manifests expect them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from keti_ray import constants as C
from keti_ray.manifests import MANIFEST_DIR, Manifest, ManifestError, load_file, manifest_files

SCRIPTS = ("deploy.sh", "clean.sh")
WORKLOAD_LABEL = ("app.kubernetes.io/part-of", "keti-workloads")


def test_every_yaml_file_parses_into_objects() -> None:
    files = manifest_files()
    assert len(files) >= 12
    for path in files:
        docs = load_file(path)
        assert docs, f"{path} holds no object"


def test_no_other_files_hide_in_kuberay() -> None:
    allowed = {"README.md", "Dockerfile", "Dockerfile.dockerignore", *SCRIPTS}
    for path in MANIFEST_DIR.rglob("*"):
        if path.is_relative_to(MANIFEST_DIR / "monitoring"):
            continue  # not manifests: checked by test_monitoring.py
        if path.is_file() and path.suffix != ".yaml":
            assert path.name in allowed, f"unexpected file {path}"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: [1,\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("apiVersion: v1\nmetadata: {}\n", "'kind' is missing"),
    ],
)
def test_loader_names_the_file_and_the_problem(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ManifestError, match=match) as info:
        load_file(bad)
    assert "bad.yaml" in str(info.value)


def test_loader_skips_empty_documents(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(
        "---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
    )
    (m,) = load_file(f)
    assert (m.kind, m.name, m.index) == ("Namespace", "x", 1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_bash_n_and_are_executable(script: str) -> None:
    path = MANIFEST_DIR / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert path.stat().st_mode & stat.S_IXUSR


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A kubectl on PATH that records its arguments, one call per line."""
    log = tmp_path / "kubectl.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kubectl"
    exe.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(MANIFEST_DIR / script), *args], env=env, capture_output=True, text=True
    )


def test_deploy_applies_the_named_workloads(fake_kubectl) -> None:
    env, log = fake_kubectl
    result = _run("deploy.sh", ["a", "c"], env)
    assert result.returncode == 0, result.stderr
    (call,) = log.read_text().splitlines()
    files = re.findall(r"-f (\S+)", call)
    assert call.startswith("apply ")
    assert [Path(f).name for f in files] == ["workload-a.yaml", "workload-c.yaml"]
    assert all(Path(f).is_file() for f in files)


def test_deploy_all(fake_kubectl) -> None:
    env, log = fake_kubectl
    assert _run("deploy.sh", ["all"], env).returncode == 0
    assert len(re.findall(r"-f ", log.read_text())) == 4


@pytest.mark.parametrize("args", [[], ["a", "x"], ["e"]])
def test_deploy_rejects_bad_input_and_changes_nothing(fake_kubectl, args: list[str]) -> None:
    env, log = fake_kubectl
    result = _run("deploy.sh", args, env)
    assert result.returncode == 2
    assert "a|b|c|d" in result.stderr or "accepted: a, b, c, d or all" in result.stderr
    assert not log.exists(), "kubectl was called despite bad input"


def test_clean_deletes_by_the_workload_label(fake_kubectl, manifests: list[Manifest]) -> None:
    env, log = fake_kubectl
    assert _run("clean.sh", [], env).returncode == 0
    (call,) = log.read_text().splitlines()
    assert call.startswith("delete pod") and f"-l {WORKLOAD_LABEL[0]}={WORKLOAD_LABEL[1]}" in call
    # Everything deploy.sh and npu-test create carries that label, so clean.sh removes it all,
    # and nothing else does.
    pods = [m for m in manifests if m.kind == "Pod"]
    assert {m.name for m in pods} == {
        "workload-a",
        "workload-b",
        "workload-c",
        "workload-d",
        "npu-test",
    }
    for m in manifests:
        labelled = m.doc["metadata"].get("labels", {}).get(WORKLOAD_LABEL[0]) == WORKLOAD_LABEL[1]
        assert labelled == (m.kind == "Pod"), m.where()


def test_dockerfile_layout_matches_the_manifests(manifests: list[Manifest]) -> None:
    text = (MANIFEST_DIR / "Dockerfile").read_text()
    assert re.search(
        rf"COPY --from=native \S+/{C.SHIM_LIBRARY_NAME} {C.SHIM_CONTAINER_PATH}\n", text
    )
    dest = re.search(r"COPY --from=native /out/workloads/ (\S+)/\n", text)
    assert dest
    for m in manifests:
        if m.name.startswith("workload-"):
            (c,) = m.doc["spec"]["containers"]
            assert c["command"][0] == f"{dest[1]}/{m.name}"
    assert f"ENV {C.ENV_API_PORT}={C.DEFAULT_API_PORT}" in text
