"""Ray resources against the ray.io/v1 CRD schemas, with unknown fields as errors."""

from __future__ import annotations

import copy

import pytest
from kuberay_validators import (
    CRD_DIR,
    CRD_FILES,
    StrictValidator,
    cel_paths,
    crd_errors,
    crd_schema,
    make_strict,
    present,
)

from keti_ray.manifests import Manifest

pytestmark = pytest.mark.skipif(
    not CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {CRD_DIR} (set KETI_CRD_DIR)"
)


def test_every_ray_kind_is_present(ray_objects: list[Manifest]) -> None:
    assert sorted({m.kind for m in ray_objects}) == sorted(CRD_FILES)


def test_ray_objects_validate_strictly(ray_objects: list[Manifest]) -> None:
    problems = {m.where(): crd_errors(m.doc) for m in ray_objects}
    assert {k: v for k, v in problems.items() if v} == {}


def test_manifests_stay_off_fields_with_cel_rules(ray_objects: list[Manifest]) -> None:
    """CEL rules (x-kubernetes-validations) are not evaluated here, so none may apply to us."""
    for m in ray_objects:
        paths = cel_paths(crd_schema(m.kind))
        assert paths, "the CRDs do carry CEL rules; the walker should find them"
        hits = [".".join(p) for p in paths if present(m.doc, p)]
        assert hits == [], f"{m.where()} sets fields checked by CEL rules: {hits}"


def _find(ray_objects: list[Manifest], kind: str) -> dict:
    return copy.deepcopy(next(m.doc for m in ray_objects if m.kind == kind))


def _head_container(doc: dict) -> dict:
    spec = doc["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or spec
    return cluster["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("kind", "plant", "expect"),
    [
        # Misspelt top-level spec field: the API server would drop it silently.
        ("RayService", lambda d: d["spec"].update(serveConfigv2="x"), "serveConfigv2"),
        # Unknown field deep in the embedded pod template.
        (
            "RayCluster",
            lambda d: _head_container(d).update(imagePullPolicyy="Always"),
            "imagePullPolicyy",
        ),
        # Unknown field in a worker group.
        (
            "RayService",
            lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replica=3),
            "replica",
        ),
        # Unknown field in a securityContext (object with properties, no additionalProperties).
        (
            "RayCluster",
            lambda d: _head_container(d).update(securityContext={"privilegedd": True}),
            "privilegedd",
        ),
        # Unknown top-level field.
        ("RayJob", lambda d: d.update(specc={}), "specc"),
        # Unknown field in top-level metadata (checked through V1ObjectMeta).
        ("RayJob", lambda d: d["metadata"].update(lables={"a": "b"}), "lables"),
    ],
)
def test_planted_unknown_field_is_caught(
    ray_objects: list[Manifest], kind: str, plant, expect: str
) -> None:
    doc = _find(ray_objects, kind)
    assert crd_errors(doc) == []
    plant(doc)
    errors = crd_errors(doc)
    assert errors and any(expect in e for e in errors), errors


def test_wrong_types_and_formats_are_caught(ray_objects: list[Manifest]) -> None:
    doc = _find(ray_objects, "RayCluster")
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2**31  # int32
    errors = crd_errors(doc)
    assert any("num-cpus" in e and "string" in e for e in errors), errors
    assert any("maxReplicas" in e for e in errors), errors


def test_duplicate_list_map_keys_are_caught(ray_objects: list[Manifest]) -> None:
    doc = _find(ray_objects, "RayService")
    ports = _head_container(doc)["ports"]
    ports.append(dict(ports[0], name="again"))  # same containerPort, protocol defaults to TCP
    errors = crd_errors(doc)
    assert any("duplicate" in e and "ports" in e for e in errors), errors


def test_int_or_string_accepts_both() -> None:
    schema = make_strict(crd_schema("RayCluster"))
    container = schema["properties"]["spec"]["properties"]["headGroupSpec"]["properties"][
        "template"
    ]["properties"]["spec"]["properties"]["containers"]["items"]
    probe = container["properties"]["livenessProbe"]
    validator = StrictValidator(probe)
    for port in (8080, "http"):
        assert list(validator.iter_errors({"httpGet": {"port": port}})) == []
    assert list(validator.iter_errors({"httpGet": {"port": [1]}}))


# make_strict on small schemas: each CRD extension the walker must respect.


def _errors(schema: dict, instance: object) -> list[str]:
    return [e.message for e in StrictValidator(make_strict(schema)).iter_errors(instance)]


def test_properties_without_additional_properties_become_closed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert _errors(schema, {"a": "x"}) == []
    assert _errors(schema, {"a": "x", "b": 1})


def test_bare_object_is_pruned_to_nothing() -> None:
    schema = {"type": "object", "properties": {"m": {"type": "object"}}}
    assert _errors(schema, {"m": {}}) == []
    assert _errors(schema, {"m": {"anything": 1}})


def test_maps_and_preserve_unknown_fields_stay_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"known": {"type": "integer"}},
            },
        },
    }
    assert _errors(schema, {"labels": {"x": "y"}, "raw": {"known": 1, "extra": {"deep": 1}}}) == []
    assert _errors(schema, {"labels": {"x": 1}})  # map values still typed
    assert _errors(schema, {"raw": {"known": "no"}})  # known fields still typed


def test_embedded_resource_accepts_type_meta() -> None:
    schema = {
        "type": "object",
        "properties": {
            "obj": {
                "type": "object",
                "x-kubernetes-embedded-resource": True,
                "properties": {"spec": {"type": "object", "properties": {}}},
            }
        },
    }
    ok = {"obj": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}}
    assert _errors(schema, ok) == []
    assert _errors(schema, {"obj": {"kindd": "Pod"}})


def test_int_or_string_without_any_of_and_nullable() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"x-kubernetes-int-or-string": True},
            "s": {"type": "string", "nullable": True},
        },
    }
    assert _errors(schema, {"n": 3, "s": None}) == []
    assert _errors(schema, {"n": "3"}) == []
    assert _errors(schema, {"n": 1.5})


def test_required_with_default_may_be_omitted() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {"a": {"type": "string", "default": "x"}, "b": {"type": "string"}},
    }
    assert _errors(schema, {"b": "y"}) == []
    assert _errors(schema, {"a": "y"})


def test_list_type_set_and_map() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "m": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k", "p"],
                "items": {
                    "type": "object",
                    "properties": {
                        "k": {"type": "string"},
                        "p": {"type": "string", "default": "T"},
                    },
                },
            },
        },
    }
    assert _errors(schema, {"s": ["a", "b"], "m": [{"k": "a"}, {"k": "a", "p": "U"}]}) == []
    assert _errors(schema, {"s": ["a", "a"]})
    assert _errors(schema, {"m": [{"k": "a"}, {"k": "a", "p": "T"}]})
