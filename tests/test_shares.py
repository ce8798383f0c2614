"""The shares module: one rounding rule, no uncapped share below a whole GPU, SMs that add up.

Expected SM counts are the ones measured on the H200 (../shared/docs/sm-partitioning.md), not
values recomputed with the module's own formula.
"""

from __future__ import annotations

import random

import pytest

from keti_ray import shares
from keti_ray.shares import Mechanism

H200_SMS = 132


@pytest.mark.parametrize("milli", range(1, 1001))
def test_every_milli_is_a_capped_share_below_a_whole_gpu(milli: int) -> None:
    served = shares.served_milli(milli)
    pct = shares.limit_pct(milli)
    if milli == 1000:
        assert (served, pct) == (1000, None)
        return
    assert 50 <= served < 1000 and served % 10 == 0
    assert pct is not None and 5 <= pct <= 99
    assert served == pct * 10
    assert served <= max(milli, 50)  # never more than asked, except the 5% minimum


def test_rounding_examples_from_the_issue() -> None:
    assert shares.limit_pct(995) == 99  # was 100 = uncapped
    assert shares.limit_pct(991) == 99
    assert shares.limit_pct(470) == 47
    assert shares.limit_pct(5) == 5
    assert shares.served_milli(5) == 50
    assert shares.served_milli(50) == 50  # the trace's smallest request is unchanged


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, "470", True, None])
def test_out_of_range_milli_names_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="gpu_milli"):
        shares.served_milli(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pct", "mechanism", "measured"),
    [
        # MPS census on the H200: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE -> SMs seen
        (25, Mechanism.MPS, 32),
        (50, Mechanism.MPS, 66),
        (75, Mechanism.MPS, 98),
        (10, Mechanism.MPS, 12),
        (40, Mechanism.MPS, 52),
        (60, Mechanism.MPS, 78),
        (70, Mechanism.MPS, 92),
        (74, Mechanism.MPS, 96),
        (80, Mechanism.MPS, 104),
        (90, Mechanism.MPS, 118),
        # green contexts: 8-SM groups
        (90, Mechanism.GREEN, 112),
        (10, Mechanism.GREEN, 8),
        (75, Mechanism.GREEN, 96),
        (40, Mechanism.GREEN, 48),
        (50, Mechanism.GREEN, 64),
        (None, Mechanism.MPS, 132),
        # MPS never grants fewer than 8 SMs (1-6% measured -> 8)
        (1, Mechanism.MPS, 8),
        (5, Mechanism.MPS, 8),
        (7, Mechanism.MPS, 8),
        (8, Mechanism.MPS, 10),
    ],
)
def test_granted_sms_match_the_h200_measurements(pct, mechanism, measured) -> None:
    assert shares.granted_sms(pct, H200_SMS, mechanism) == measured


@pytest.mark.parametrize("device_sms", [132, 114, 108, 80, 56, 40])
@pytest.mark.parametrize("mechanism", [Mechanism.MPS, Mechanism.GREEN])
def test_shares_on_one_gpu_never_exceed_its_sms(device_sms: int, mechanism: Mechanism) -> None:
    """Random packings of one GPU (bookings of served milli adding up to <= 1000)."""
    rng = random.Random(device_sms)
    for _ in range(300):
        free, sms = 1000, 0
        for _attempt in range(200):
            served = shares.served_milli(rng.randint(1, 999), device_sms)
            if served > free:
                continue
            free -= served
            sms += shares.granted_sms(shares.limit_pct(served), device_sms, mechanism)
        assert sms <= device_sms


def test_share_for_reports_what_the_pod_gets() -> None:
    share = shares.share_for(250, H200_SMS, "mps")
    assert share.as_dict() == {
        "milli": 250,
        "sm_pct": 25,
        "sms": 32,
        "device_sms": 132,
        "mechanism": "mps",
    }
    whole = shares.share_for(1000, H200_SMS, "mps")
    assert (whole.mechanism, whole.sms, whole.pct) == (Mechanism.EXCLUSIVE, 132, None)
    unknown = shares.share_for(470, None, "green")
    assert (unknown.sms, unknown.pct) == (None, 47)
    with pytest.raises(ValueError, match="exclusive"):
        shares.share_for(470, H200_SMS, "exclusive")


@pytest.mark.parametrize(
    ("device_sms", "smallest"), [(132, 7), (108, 8), (80, 10), (56, 15), (40, 20), (None, 5)]
)
def test_smallest_share_gets_the_8_sm_floor(device_sms: int | None, smallest: int) -> None:
    assert shares.min_share_pct(device_sms) == smallest
    assert shares.served_milli(1, device_sms) == smallest * 10
    assert shares.served_milli(999, device_sms) == 990


def test_smallest_gpu_of_a_cluster() -> None:
    assert shares.smallest_gpu_sms(["H200", "T4", "G2"]) == 40
    assert shares.smallest_gpu_sms(["G2", "G3"]) is None


def test_units_and_kubelet_requests() -> None:
    assert shares.units_to_milli(47) == 470
    assert shares.milli_to_units(475) == 47
    assert [shares.limit_pct_for_units(u) for u in (1, 4, 5, 99, 100)] == [5, 5, 5, 99, None]
    assert [shares.limit_pct_for_units(u, 132) for u in (1, 6, 7, 100)] == [7, 7, 7, None]
    for bad in (0, 101, -3):
        with pytest.raises(ValueError, match="units"):
            shares.limit_pct_for_units(bad)


@pytest.mark.parametrize(
    ("model", "sms"),
    [
        ("NVIDIA H200", 132),
        ("NVIDIA H100 PCIe", 114),
        ("V100M32", 80),
        ("T4", 40),
        ("A10", 72),
        ("NVIDIA A100-SXM4-80GB", 108),
        ("P100", 56),
        ("G2", None),
    ],
)
def test_data_sheet_sm_counts(model: str, sms: int | None) -> None:
    assert shares.device_sm_count(model) == sms
