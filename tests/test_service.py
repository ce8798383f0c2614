"""AllocationService without Ray: booking, dry runs, journal recovery, extender scores."""

from __future__ import annotations

import pytest

from keti_ray.cluster import ModelError
from keti_ray.service import AllocationService, NoFit, PolicySpec
from keti_ray.simcluster import simulated_nodes

from .factories import pod


def test_allocate_books_and_release_frees():
    service = AllocationService(simulated_nodes(2))
    decision = service.allocate(pod("a", cpu=4000, mem=1024, num=1, milli=250))
    assert decision.sm_pct == 25 and decision.policy == "fgd"
    assert decision.env["BLESS_LIMIT_PCT"] == "25"
    assert decision.env["NVIDIA_VISIBLE_DEVICES"] == decision.gpus[0]["uuid"]
    assert decision.env["VAI_MEMORY_LIMIT"] == f"{80 * 1024 * 250 // 1000}Mi"  # H100 node
    assert service.health()["placements"] == 1
    assert service.release("a") is True
    assert service.release("a") is False
    assert service.health()["placements"] == 0


def test_dry_run_books_nothing_and_nofit_is_clear():
    service = AllocationService(simulated_nodes(1))
    service.allocate(pod("d", num=8, milli=1000), dry_run=True)
    assert service.health()["placements"] == 0
    service.allocate(pod("all", num=8, milli=1000))
    with pytest.raises(NoFit, match="no node can host pod 'more'"):
        service.allocate(pod("more", num=1, milli=100))
    with pytest.raises(ModelError, match="already placed"):
        service.allocate(pod("all", num=1, milli=100))


def test_journal_brings_back_every_acknowledged_placement(tmp_path):
    journal = tmp_path / "journal.jsonl"
    first = AllocationService(simulated_nodes(3), journal=journal)
    for i in range(6):
        first.allocate(pod(f"p{i}", num=1, milli=300 + 100 * i))
    first.release("p2")
    with journal.open("a") as handle:
        handle.write('{"op": "allocate", "pod": {"na')  # a write torn by a crash
    second = AllocationService(simulated_nodes(3), journal=journal)
    assert sorted(second.state.placements) == ["p0", "p1", "p3", "p4", "p5"]
    assert (second.state.gpu_free == first.state.gpu_free).all()


def test_policy_swap_and_refused_checkpoint_keeps_fgd(tmp_path):
    service = AllocationService(simulated_nodes(2))
    assert service.set_policy(PolicySpec("bestfit")) == "bestfit"
    bogus = tmp_path / "ckpt"
    bogus.mkdir()
    assert service.set_policy(PolicySpec("ppo", str(bogus))) == "fgd"
    assert service.health()["policy_error"]
    with pytest.raises(ValueError, match="unknown; accepted"):
        service.set_policy(PolicySpec("worstfit"))
    with pytest.raises(ValueError, match="unknown key"):
        PolicySpec.from_config({"polcy": "fgd"})


def test_extender_filter_and_prioritize():
    service = AllocationService(simulated_nodes(3))
    service.allocate(pod("full", num=8, milli=1000))  # fills sim-node-00
    p = pod("x", num=4, milli=1000)
    ok, failed = service.filter_nodes(p, ["sim-node-00", "sim-node-01", "nope"])
    assert ok == ["sim-node-01"]
    assert set(failed) == {"sim-node-00", "nope"}
    scores = {s["Host"]: s["Score"] for s in service.prioritize(p, ["sim-node-00", "sim-node-01"])}
    assert scores == {"sim-node-00": 0, "sim-node-01": 10}


def test_metrics_text_has_decisions_and_gauges():
    service = AllocationService(simulated_nodes(2))
    service.allocate(pod("a", num=1, milli=500))
    text = service.metrics_text().decode()
    assert 'keti_allocator_decisions_total{outcome="placed",policy="fgd"} 1.0' in text
    assert "keti_allocator_decision_seconds_bucket" in text
    assert "keti_cluster_unallocated_gpu_pct" in text and "keti_cluster_fragmentation_pct" in text


def test_serving_pointer_is_followed(tmp_path):
    from keti_ray.promotion import PointerError, read_pointer, write_pointer

    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="bestfit")
    service = AllocationService(
        simulated_nodes(2), policy=PolicySpec.from_config({"pointer": str(pointer)})
    )
    assert service.policy_version == "bestfit"
    write_pointer(pointer, None, None, policy="packing")
    assert service.refresh_pointer() == "packing"
    pointer.write_text("{not json")
    assert service.refresh_pointer() == "packing"  # a broken pointer keeps the current policy
    assert "not JSON" in service.policy_error
    with pytest.raises(PointerError, match="field 'sha256'"):
        write_pointer(pointer, tmp_path, "abc", policy="ppo")
        read_pointer(pointer)


def test_shipped_ppo_checkpoint_is_served_with_its_digest(tmp_path):
    from keti_ray.rl.checkpoint import read_manifest
    from keti_ray.rl.policy import DEFAULT_CHECKPOINT

    digest = read_manifest(DEFAULT_CHECKPOINT)["checkpoint_sha256"]
    service = AllocationService(simulated_nodes(2))
    assert service.set_policy(PolicySpec("ppo")) == f"ppo@{digest[:12]}"
    assert service.allocate(pod("p", num=1, milli=250)).policy == f"ppo@{digest[:12]}"
    wrong = PolicySpec("ppo", str(DEFAULT_CHECKPOINT), "0" * 64)  # digest from an untrusted pointer
    assert service.set_policy(wrong) == "fgd"
    assert "not the expected" in service.health()["policy_error"]
