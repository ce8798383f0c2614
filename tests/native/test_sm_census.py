"""The SM census the shim measured on the H200 (native/vai_accelerator/gpu/results/sweep_*.json)
against keti_ray.shares.granted_sms: what the allocator books must be what a pod gets."""

from __future__ import annotations

import json

import pytest

from keti_ray.shim import NATIVE_DIR

RESULTS = NATIVE_DIR / "gpu" / "results"


def _census(section: str) -> list[dict]:
    rows = []
    for path in sorted(RESULTS.glob("sweep_*.json")):
        sec = json.loads(path.read_text()).get("sections", {}).get(section)
        if isinstance(sec, dict) and sec.get("static"):
            rows = sec["static"]
    return rows


@pytest.mark.parametrize(
    ("section", "mechanism"), [("mps_census", "mps"), ("green_census", "green")]
)
def test_measured_census_matches_shares_granted_sms(section: str, mechanism: str) -> None:
    shares = pytest.importorskip("keti_ray.shares")
    rows = _census(section)
    if not rows:
        pytest.skip(f"no recorded {section} yet")
    mismatches = []
    for row in rows:
        if row["pct"] < shares.MIN_SHARE_PCT:  # never booked: served_milli rounds up to 5%
            continue
        r, st = row.get("result") or {}, row.get("status") or {}
        device = st.get("sms_device") or 132
        want = shares.granted_sms(row["pct"], device, shares.Mechanism(mechanism))
        if not (r.get("census") == st.get("sms_granted") == want):
            mismatches.append((row["pct"], r.get("census"), st.get("sms_granted"), want))
    assert not mismatches, f"(pct, census, shim granted, shares.granted_sms): {mismatches}"
