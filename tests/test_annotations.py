"""The decision annotation: round trip, and strict refusals naming the field."""

from __future__ import annotations

import json

import pytest

from keti_ray.annotations import Allocation, decode_allocation, encode_allocation

UUID = "GPU-6c1b1d3e-0000-4000-8000-000000000001"


def _doc(**container) -> dict:
    base = {"gpus": [UUID], "milli": 470, "sm_pct": 47, "sms": 62, "mechanism": "mps"}
    base.update(container)
    return {"node": "gpu-node-3", "policy": "fgd", "containers": {"main": base}}


def test_round_trip_is_stable() -> None:
    text = json.dumps(_doc())
    allocation = decode_allocation(text)
    assert isinstance(allocation, Allocation)
    assert allocation.containers["main"].gpus == (UUID,)
    again = encode_allocation(allocation)
    assert decode_allocation(again) == allocation
    assert encode_allocation(decode_allocation(again)) == again


def test_whole_gpus() -> None:
    doc = _doc(gpus=[UUID, UUID[:-1] + "2"], milli=1000, sm_pct=100, sms=132)
    doc["containers"]["main"]["mechanism"] = "exclusive"
    assert len(decode_allocation(json.dumps(doc)).containers["main"].gpus) == 2


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_doc(milli=995, sm_pct=99), "containers.main"),  # not a served share
        (_doc(sm_pct=50), "containers.main"),  # pct disagrees with milli
        (_doc(gpus=[UUID, UUID]), "containers.main"),  # share on two GPUs
        (_doc(mechanism="exclusive"), "containers.main"),
        (_doc(mechanism="mig"), "containers.main.mechanism"),
        (_doc(gpus=["GPU-1; rm -rf /"]), "containers.main.gpus.0"),
        (_doc(extra=1), "containers.main.extra"),
        ({"node": "n", "policy": "fgd", "containers": {}}, "containers"),
        ({"policy": "fgd", "containers": {}}, "node"),
    ],
)
def test_bad_values_are_refused_with_the_field(doc: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"keti.re.kr/allocation: {field}"):
        decode_allocation(json.dumps(doc))


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', "x" * 20000])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="keti.re.kr/allocation"):
        decode_allocation(text)
