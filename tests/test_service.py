"""AllocationService without Ray: booking, dry runs, policies, extender scores, metrics."""

from __future__ import annotations

import pytest

from keti_ray.service import AllocationService, Conflict, NoFit, PolicySpec
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
    with pytest.raises(NoFit, match="no node can host pod 'default/more'"):
        service.allocate(pod("more", num=1, milli=100))
    with pytest.raises(Conflict, match="pod 'default/all' is booked already"):
        service.allocate(pod("all", num=1, milli=100))
    assert service.allocate(pod("all", num=8, milli=1000)).existing  # same request: its booking


def test_policy_swap_and_refused_checkpoint_keeps_the_current_policy(tmp_path):
    service = AllocationService(simulated_nodes(2))
    assert service.set_policy(PolicySpec("bestfit")) == "bestfit"
    bogus = tmp_path / "ckpt"
    bogus.mkdir()
    assert service.set_policy(PolicySpec("ppo", str(bogus))) == "bestfit"
    assert "still serving bestfit" in service.health()["policy_error"]
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
    assert "keti_allocator_decision_duration_seconds_bucket" in text
    assert (
        "keti_cluster_unallocated_gpu_ratio" in text and "keti_cluster_fragmentation_ratio" in text
    )
    with pytest.raises(NoFit):
        service.allocate(pod("huge", cpu=10**7))
    with pytest.raises(Conflict):
        service.allocate(pod("a", num=1, milli=400))
    text = service.metrics_text().decode()
    assert 'keti_allocator_decisions_total{outcome="nofit",policy="fgd"} 1.0' in text
    assert 'keti_allocator_decisions_total{outcome="refused",policy="fgd"} 1.0' in text
    assert "keti_allocator_decision_duration_seconds_count 3.0" in text  # refusals timed too


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
    assert service.set_policy(wrong) == f"ppo@{digest[:12]}"  # the current policy stays
    assert "not the expected" in service.health()["policy_error"]


def test_pointer_to_a_tampered_checkpoint_keeps_the_current_policy(tmp_path):
    import shutil

    from keti_ray.promotion import write_pointer
    from keti_ray.rl.checkpoint import read_manifest
    from keti_ray.rl.policy import DEFAULT_CHECKPOINT

    copy = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_CHECKPOINT, copy)
    digest = read_manifest(copy)["checkpoint_sha256"]
    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="bestfit")
    service = AllocationService(
        simulated_nodes(2), policy=PolicySpec.from_config({"pointer": str(pointer)})
    )
    victim = max(
        (p for p in copy.rglob("*") if p.is_file() and "manifest" not in p.name),
        key=lambda p: p.stat().st_size,
    )
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")  # one byte changed
    write_pointer(pointer, copy, digest, policy="ppo")
    assert service.refresh_pointer() == "bestfit"
    assert "refused" in service.health()["policy_error"]
    assert service.allocate(pod("p", num=1, milli=250)).policy == "bestfit"


def test_pointer_follower_survives_errors(tmp_path, monkeypatch):
    import time

    from keti_ray.booking import policy_host
    from keti_ray.promotion import write_pointer

    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="bestfit")
    service = AllocationService(
        simulated_nodes(2),
        policy=PolicySpec.from_config({"pointer": str(pointer)}),
        follow_pointer_s=0.05,
    )
    calls = {"n": 0}
    real = policy_host.PolicySpec.from_pointer

    def flaky(path):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise OSError("stale NFS handle")
        return real(path)

    monkeypatch.setattr(policy_host.PolicySpec, "from_pointer", staticmethod(flaky))
    write_pointer(pointer, None, None, policy="packing")
    deadline = time.time() + 10
    while service.policy_version != "packing" and time.time() < deadline:
        time.sleep(0.05)
    assert calls["n"] > 3 and service.policy_version == "packing"
    service.close()


def test_decisions_book_served_milli_and_report_the_share():
    service = AllocationService(simulated_nodes(1))  # one H100 node: 132 SMs per GPU
    gpu = service.allocate(pod("s", num=1, milli=995)).gpus[0]
    assert gpu["milli"] == 990 and gpu["sm_pct"] == 99  # 995 is served as 99%, never uncapped
    assert (gpu["sms"], gpu["device_sms"], gpu["mechanism"]) == (130, 132, "mps")
    assert service.bookings()[0]["milli"] == [990]
    assert service.allocate(pod("s", num=1, milli=995)).existing  # the asked request matches
    tiny = service.allocate(pod("t", num=1, milli=5)).gpus[0]
    # the smallest share of a 132-SM GPU is 7% (8 SMs, the measured floor): 5 milli -> 70
    assert (tiny["milli"], tiny["sm_pct"], tiny["sms"]) == (70, 7, 8)
    whole = service.allocate(pod("w", num=2, milli=1000))
    assert [g["mechanism"] for g in whole.gpus] == ["exclusive", "exclusive"]
    assert whole.gpus[0]["sms"] == 132 and whole.sm_pct == 100
    part = service.partition()["nodes"]["sim-node-00"]["gpus"]
    assert sum(p["milli"] for g in part for p in g["partitions"]) == 990 + 70 + 2000


def test_the_smallest_share_is_the_smallest_gpus_unless_the_node_is_named():
    service = AllocationService(simulated_nodes(3))  # H100 (132 SMs), A100 (108), T4 (40)
    anywhere = service.allocate(pod("a", num=1, milli=5))
    assert anywhere.gpus[0]["milli"] == 200  # 8 of a T4's 40 SMs: 20%, wherever it lands
    bound = service.allocate(pod("b", num=1, milli=5), node="sim-node-00")
    assert (bound.node, bound.gpus[0]["milli"], bound.gpus[0]["sms"]) == ("sim-node-00", 70, 8)


def test_decisions_flag_a_conflict_apart_from_a_nofit():
    """What a bind tests to replace a stale booking: the flag, not the error text."""
    service = AllocationService(simulated_nodes(1))
    service.allocate(pod("all", num=8, milli=1000))
    conflict, nofit, same = service.decide_json(
        [(pod("all", num=1, milli=100), False), (pod("more", num=1, milli=100), False),
         (pod("all", num=8, milli=1000), False)]
    )  # fmt: skip
    assert (conflict["status"], conflict["conflict"]) == (409, True)
    assert "booked already" in conflict["error"]
    assert (nofit["status"], nofit["conflict"]) == (409, False)
    assert same["status"] == 200 and "conflict" not in same
    with pytest.raises(Conflict) as raised:
        service.allocate(pod("all", num=1, milli=100))
    assert raised.value.conflict is True
