"""Fixtures for the kuberay/ manifest tests: every object, loaded once."""

from __future__ import annotations

import pytest

from keti_ray.manifests import Manifest, load_all


@pytest.fixture(scope="session")
def manifests() -> list[Manifest]:
    found = load_all()
    assert found, "no manifests under kuberay/"
    return found


@pytest.fixture(scope="session")
def ray_objects(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m.doc["apiVersion"].startswith("ray.io/")]


@pytest.fixture(scope="session")
def core_objects(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if not m.doc["apiVersion"].startswith("ray.io/")]
