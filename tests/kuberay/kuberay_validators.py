"""Strict validators for the manifests in kuberay/, standing in for the API server.

Why strict: the API server prunes fields a CRD schema does not declare, and a typed client drops
what its model does not know, both silently. A typo (`tolerration`, `serveConfigv2`) would deploy
and be ignored. Here every unknown field is an error.

What this emulates (of the API server, for the ray.io/v1 CRDs):
  - structural pruning turned into rejection: an object schema with `properties` (or none at all)
    and no `additionalProperties` accepts no other keys, unless it says
    `x-kubernetes-preserve-unknown-fields: true`; `x-kubernetes-embedded-resource` objects also
    accept apiVersion, kind and metadata;
  - `x-kubernetes-int-or-string` (integer or string), `nullable`, `format` int32/int64 ranges;
  - defaults before validation: a required field with a default may be left out, and list-map
    keys with a default count as that default;
  - `x-kubernetes-list-type: map` (unique keys) and `set` (unique items).
What it does not cover: CEL rules (`x-kubernetes-validations`; `cel_paths` lists where they sit so
a test can keep the manifests off those fields), admission webhooks, and the KubeRay operator's
own checks at reconcile time. Top-level `metadata` is checked against the kubernetes client's
V1ObjectMeta model instead of the CRD (the CRD leaves it to the API server).

For core objects, `model_errors` walks the `kubernetes` client's models (openapi_types and
attribute_map) and reports every key the model does not declare and every value of the wrong
type; `deserialize` then builds the model the way the client does, which enforces required fields.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client
import yaml
from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import ValidationError

# shared/ sits beside the repository (design.md: ../shared/k8s/crds), or inside it; KETI_CRD_DIR
# overrides. Tests that need the CRDs skip, naming this path, when none is found.
_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = [_REPO.parent / "shared" / "k8s" / "crds", _REPO / "shared" / "k8s" / "crds"]
CRD_DIR = Path(
    os.environ.get("KETI_CRD_DIR") or next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0])
)

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
RAY_API_VERSION = "ray.io/v1"

# ---------------------------------------------------------------------------------------------
# CRD schemas
# ---------------------------------------------------------------------------------------------


def _is_object(node: dict[str, Any]) -> bool:
    return node.get("type") == "object" or "properties" in node


def make_strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI v3 CRD schema in which unknown fields are validation errors."""
    out = copy.deepcopy(schema)
    _strict_walk(out)
    return out


def _strict_walk(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _strict_walk(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = node.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault(
            "metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
    props = node.get("properties")
    if isinstance(props, dict) and isinstance(node.get("required"), list):
        # The API server applies defaults before it validates.
        node["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
    if (
        _is_object(node)
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties", "definitions"):
        for child in (node.get(key) or {}).values():
            _strict_walk(child)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict | list):
            _strict_walk(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if isinstance(node.get(key), list):
            _strict_walk(node[key])


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]):
    """x-kubernetes-list-type: `map` items are unique by their keys, `set` items are unique."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        item_props = (schema.get("items") or {}).get("properties") or {}
        seen_keys: set[tuple[Any, ...]] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, item_props.get(k, {}).get("default")) for k in keys)
            if key in seen_keys:
                entry = dict(zip(keys, key, strict=True))
                yield ValidationError(f"duplicate entry with {entry} in a list map")
            seen_keys.add(key)


_FORMATS = FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


StrictValidator = jsonschema.validators.extend(
    Draft7Validator, {"x-kubernetes-list-type": _list_type}
)


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The ray.io/v1 openAPIV3Schema of `kind`, as shipped in ../shared/k8s/crds."""
    if kind not in CRD_FILES:
        raise KeyError(f"no CRD for kind {kind!r}; known: {sorted(CRD_FILES)}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 1 MB CRDs in ~0.3 s
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    if crd["spec"]["names"]["kind"] != kind:
        raise ValueError(f"{CRD_FILES[kind]} defines {crd['spec']['names']['kind']}, not {kind}")
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(f"{CRD_FILES[kind]} has no v1 version")


@functools.cache
def strict_validator(kind: str) -> Any:
    """A validator for `kind` with unknown fields as errors (metadata checked separately)."""
    schema = make_strict(crd_schema(kind))
    schema["properties"]["apiVersion"] = {"const": RAY_API_VERSION}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {"type": "object"}  # see metadata_errors
    schema["required"] = sorted({"apiVersion", "kind", "metadata", "spec"})
    StrictValidator.check_schema(schema)
    return StrictValidator(schema, format_checker=_FORMATS)


def _path(error: ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of a ray.io/v1 object, as `.path: message`, plus its metadata's."""
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind {kind!r} is not a ray.io CRD kind ({sorted(CRD_FILES)})"]
    errors = [
        f"{_path(e) or '.'}: {e.message}"
        for e in sorted(strict_validator(kind).iter_errors(doc), key=lambda e: list(e.path))
    ]
    if isinstance(doc.get("metadata"), dict):
        errors += model_errors(doc["metadata"], "V1ObjectMeta", ".metadata")
    return errors


def cel_paths(schema: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths (field names, '*' for list items) of the nodes that carry CEL rules."""
    found: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-validations"):
            found.append(path)
        for name, child in (node.get("properties") or {}).items():
            walk(child, path + (name,))
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + ("*",))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + ("*",))

    walk(schema, ())
    return found


def present(doc: Any, path: tuple[str, ...]) -> bool:
    """Whether `doc` has a value at `path` ('*' matches any list item or map value)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        values = (
            doc if isinstance(doc, list) else list(doc.values()) if isinstance(doc, dict) else []
        )
        return any(present(v, rest) for v in values)
    return isinstance(doc, dict) and head in doc and present(doc[head], rest)


# ---------------------------------------------------------------------------------------------
# Core objects through the kubernetes client's models
# ---------------------------------------------------------------------------------------------

# Both spellings: List[X] / Dict[str, X] (clients >= 35) and list[X] / dict(str, X) (older).
_OPTIONAL = re.compile(r"^Optional\[(.+)\]$")
_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:Dict\[([^,]+), (.+)\]|dict\(([^,]+), (.+)\))$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str,),
    "datetime": (str,),
    "bytes": (str,),  # base64 text in YAML/JSON
}


def model_class(api_version: str, kind: str) -> type:
    """The kubernetes client model for apiVersion/kind, e.g. apps/v1 DaemonSet -> V1DaemonSet."""
    version = api_version.rsplit("/", 1)[-1]
    name = version[0].upper() + version[1:] + kind
    cls = getattr(kubernetes.client.models, name, None)
    if cls is None:
        raise LookupError(f"the kubernetes client has no model {name} for {api_version} {kind}")
    return cls


def model_errors(data: Any, type_name: str, path: str = "") -> list[str]:
    """Unknown keys and wrong types in `data` read as the client type `type_name`."""
    if type_name == "object":
        return []  # IntOrString, RawExtension and the like: anything goes
    if m := _OPTIONAL.match(type_name):
        return [] if data is None else model_errors(data, m[1], path)
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name]) and not (
            type_name in ("int", "float") and isinstance(data, bool)
        )
        return [] if ok else [f"{path or '.'}: expected {type_name}, got {type(data).__name__}"]
    if m := _LIST.match(type_name):
        if not isinstance(data, list):
            return [f"{path or '.'}: expected a list, got {type(data).__name__}"]
        return [e for i, v in enumerate(data) for e in model_errors(v, m[1], f"{path}[{i}]")]
    if m := _DICT.match(type_name):
        if not isinstance(data, dict):
            return [f"{path or '.'}: expected a mapping, got {type(data).__name__}"]
        errors = [f"{path}: key {k!r} is not a string" for k in data if not isinstance(k, str)]
        value_type = m[2] or m[4]
        return errors + [
            e for k, v in data.items() for e in model_errors(v, value_type, f"{path}.{k}")
        ]
    cls = getattr(kubernetes.client.models, type_name, None)
    if cls is None:
        raise LookupError(f"unknown client type {type_name!r} at {path or '.'}")
    if not isinstance(data, dict):
        return [f"{path or '.'}: expected a {type_name} mapping, got {type(data).__name__}"]
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field (not in {type_name})")
        elif value is not None:
            errors += model_errors(value, cls.openapi_types[by_json[key]], f"{path}.{key}")
    return errors


def deserialize(doc: dict[str, Any]) -> Any:
    """Build the client model for a core object as the client does when it reads a response.

    The client's models validate types and required fields here (and drop unknown keys, which is
    why model_errors runs first).
    """
    return model_class(doc["apiVersion"], doc["kind"]).from_dict(doc)


def core_errors(doc: dict[str, Any]) -> list[str]:
    """Unknown fields and wrong types of a core object, then the client's own checks."""
    cls = model_class(doc["apiVersion"], doc["kind"])
    errors = model_errors(doc, cls.__name__)
    if not errors:
        try:
            deserialize(doc)
        except (ValueError, TypeError) as exc:
            errors.append(f".: {cls.__name__}: {exc}")
    return errors


# ---------------------------------------------------------------------------------------------
# KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1): not in the client, so the fields
# of the upstream v1 types, strict.
# ---------------------------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


_PLUGIN_SET = _obj(
    {
        "enabled": {
            "type": "array",
            "items": _obj({"name": {"type": "string"}, "weight": {"type": "integer"}}),
        },
        "disabled": {
            "type": "array",
            "items": _obj({"name": {"type": "string"}, "weight": {"type": "integer"}}),
        },
    }
)
_EXTENSION_POINTS = (
    "preEnqueue queueSort preFilter filter postFilter preScore score reserve permit preBind "
    "bind postBind multiPoint"
).split()

SCHEDULER_CONFIG_SCHEMA: dict[str, Any] = _obj(
    {
        "apiVersion": {"const": "kubescheduler.config.k8s.io/v1"},
        "kind": {"const": "KubeSchedulerConfiguration"},
        "parallelism": {"type": "integer", "minimum": 1},
        "leaderElection": _obj(
            {
                "leaderElect": {"type": "boolean"},
                "leaseDuration": _DURATION,
                "renewDeadline": _DURATION,
                "retryPeriod": _DURATION,
                "resourceLock": {"type": "string"},
                "resourceName": {"type": "string"},
                "resourceNamespace": {"type": "string"},
            }
        ),
        "clientConnection": _obj(
            {
                "kubeconfig": {"type": "string"},
                "acceptContentTypes": {"type": "string"},
                "contentType": {"type": "string"},
                "qps": {"type": "number"},
                "burst": {"type": "integer"},
            }
        ),
        "enableProfiling": {"type": "boolean"},
        "enableContentionProfiling": {"type": "boolean"},
        "percentageOfNodesToScore": {"type": "integer", "minimum": 0, "maximum": 100},
        "podInitialBackoffSeconds": {"type": "integer", "minimum": 1},
        "podMaxBackoffSeconds": {"type": "integer", "minimum": 1},
        "delayCacheUntilActive": {"type": "boolean"},
        "profiles": {
            "type": "array",
            "items": _obj(
                {
                    "schedulerName": {"type": "string", "minLength": 1},
                    "percentageOfNodesToScore": {"type": "integer"},
                    "plugins": _obj({p: _PLUGIN_SET for p in _EXTENSION_POINTS}),
                    "pluginConfig": {
                        "type": "array",
                        "items": _obj({"name": {"type": "string"}, "args": {"type": "object"}}),
                    },
                },
                ["schedulerName"],
            ),
        },
        "extenders": {
            "type": "array",
            "items": _obj(
                {
                    "urlPrefix": {"type": "string", "pattern": "^https?://"},
                    "filterVerb": {"type": "string"},
                    "preemptVerb": {"type": "string"},
                    "prioritizeVerb": {"type": "string"},
                    "weight": {"type": "integer", "minimum": 1},
                    "bindVerb": {"type": "string"},
                    "enableHTTPS": {"type": "boolean"},
                    "tlsConfig": _obj(
                        {
                            k: {"type": "boolean" if k == "insecure" else "string"}
                            for k in (
                                "insecure serverName certFile keyFile caFile certData keyData "
                                "caData"
                            ).split()
                        }
                    ),
                    "httpTimeout": _DURATION,
                    "nodeCacheCapable": {"type": "boolean"},
                    "managedResources": {
                        "type": "array",
                        "items": _obj(
                            {"name": {"type": "string"}, "ignoredByScheduler": {"type": "boolean"}},
                            ["name"],
                        ),
                    },
                    "ignorable": {"type": "boolean"},
                },
                ["urlPrefix"],
            ),
        },
    },
    ["apiVersion", "kind"],
)


def scheduler_config_errors(config: Any) -> list[str]:
    """Schema violations of a KubeSchedulerConfiguration (unknown fields included)."""
    validator = Draft7Validator(SCHEDULER_CONFIG_SCHEMA)
    return [f"{_path(e) or '.'}: {e.message}" for e in validator.iter_errors(config)]
