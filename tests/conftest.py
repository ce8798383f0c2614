"""Shared fixtures: small hand-made clusters and the openb trace location."""

from __future__ import annotations

import pytest

from keti_ray.paths import trace_dir


@pytest.fixture
def openb_dir():
    try:
        return trace_dir()
    except FileNotFoundError:
        pytest.skip("openb trace not available")
