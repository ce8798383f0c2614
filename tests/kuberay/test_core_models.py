"""Core objects (DaemonSets, RBAC, Pods, ...) against the kubernetes client's models."""

from __future__ import annotations

import copy

import pytest
from kuberay_validators import core_errors, model_class, model_errors

from keti_ray.manifests import Manifest


def test_core_objects_have_no_unknown_fields(core_objects: list[Manifest]) -> None:
    problems = {m.where(): core_errors(m.doc) for m in core_objects}
    assert {k: v for k, v in problems.items() if v} == {}


def test_expected_core_kinds_are_there(core_objects: list[Manifest]) -> None:
    kinds = {m.kind for m in core_objects}
    for kind in (
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "Deployment",
        "ConfigMap",
        "Pod",
        "PersistentVolumeClaim",
    ):
        assert kind in kinds, f"no {kind} in kuberay/"


def _daemonset(core_objects: list[Manifest], name: str) -> dict:
    return copy.deepcopy(
        next(m.doc for m in core_objects if m.kind == "DaemonSet" and m.name == name)
    )


@pytest.mark.parametrize(
    ("plant", "expect"),
    [
        # A misspelt pod-spec field (a typed client drops it; the API server rejects or drops it).
        (lambda d: d["spec"]["template"]["spec"].update(tolerration=[]), "tolerration"),
        # Deep: inside a container's securityContext.capabilities.
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"][
                "capabilities"
            ].update(dropp=["ALL"]),
            "dropp",
        ),
        # Inside a list item of volumes.
        (lambda d: d["spec"]["template"]["spec"]["volumes"][0].update(hostpath={}), "hostpath"),
        # Top level.
        (lambda d: d.update(specc={}), "specc"),
    ],
)
def test_planted_unknown_field_is_caught(core_objects: list[Manifest], plant, expect) -> None:
    doc = _daemonset(core_objects, "keti-gpu-plugin")
    assert core_errors(doc) == []
    plant(doc)
    errors = core_errors(doc)
    assert any(expect in e and "unknown field" in e for e in errors), errors


def test_wrong_type_is_caught(core_objects: list[Manifest]) -> None:
    doc = _daemonset(core_objects, "keti-gpu-plugin")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["periodSeconds"] = "30"  # must be an integer
    container["resources"]["limits"]["memory"] = 2  # quantities are strings in the model
    errors = core_errors(doc)
    assert any("periodSeconds" in e and "expected int" in e for e in errors), errors
    assert any("limits.memory" in e and "expected str" in e for e in errors), errors


def test_missing_required_field_is_caught(core_objects: list[Manifest]) -> None:
    doc = _daemonset(core_objects, "keti-gpu-plugin")
    del doc["spec"]["template"]["spec"]["containers"][0]["name"]
    errors = core_errors(doc)
    assert errors and any("name" in e for e in errors), errors


def test_model_class_mapping() -> None:
    assert model_class("apps/v1", "DaemonSet").__name__ == "V1DaemonSet"
    assert model_class("rbac.authorization.k8s.io/v1", "ClusterRole").__name__ == "V1ClusterRole"
    assert model_class("v1", "ConfigMap").__name__ == "V1ConfigMap"
    with pytest.raises(LookupError, match="no model"):
        model_class("v1", "NoSuchKind")


def test_int_or_string_fields_take_both() -> None:
    for port in (80, "http"):
        assert model_errors({"httpGet": {"port": port}}, "V1Probe") == []
