"""Checkpoints: safetensors weights + config.json + SHA-256 manifest; nothing is unpickled.

A checkpoint loads only when every file matches the manifest and the folder holds nothing
else; a tampered weight file, an extra (e.g. pickled) file, a forged listing, an old pickled
RLlib checkpoint or a config whose features differ from the code's are refused.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from keti_ray.cluster import ClusterState, NodeSpec, PodRequest
from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
from keti_ray.rl.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_scorer,
    save_scorer,
    verify_checkpoint,
    write_manifest,
)
from keti_ray.rl.module import CandidateScorer
from keti_ray.rl.policy import DEFAULT_CHECKPOINT, load_ppo_allocator


def _config(hidden: int = 8, k: int = 6) -> dict:
    return {
        "hidden": hidden,
        "k": k,
        "random_extra": 1,
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": list(GLOBAL_FEATURES),
    }


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 8)
    root = tmp_path / "ckpt"
    save_scorer(root, net, _config(), {"note": "test"})
    return root, net


def test_a_saved_checkpoint_loads_the_same_network(checkpoint):
    root, net = checkpoint
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["manifest.json", WEIGHTS_NAME, CONFIG_NAME]
    )
    loaded, config, manifest = load_scorer(root)
    assert len(manifest["checkpoint_sha256"]) == 64 and config["k"] == 6
    cands = torch.randn(3, 6, len(CANDIDATE_FEATURES))
    glob = torch.randn(3, len(GLOBAL_FEATURES))
    mask = torch.ones(3, 6)
    with torch.no_grad():
        assert torch.equal(net.logits(cands, glob, mask), loaded.logits(cands, glob, mask))
    allocator = load_ppo_allocator(root, seed=0)
    assert allocator.gen.k == 6 and allocator.gen.random_extra == 1


def test_a_tampered_weight_file_is_refused(checkpoint):
    root, _ = checkpoint
    raw = bytearray((root / WEIGHTS_NAME).read_bytes())
    raw[-1] ^= 0x01  # one bit of one weight
    (root / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_ppo_allocator(root)


def test_an_unlisted_file_is_refused_and_never_opened(checkpoint, tmp_path):
    root, _ = checkpoint
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (root / "module_state.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not in the manifest"):
        load_ppo_allocator(root)
    # Even listed in a regenerated manifest, a file outside the three is refused.
    write_manifest(root, {})
    with pytest.raises(CheckpointError, match="unexpected file"):
        load_ppo_allocator(root)
    assert not marker.exists()


def test_forged_listing_missing_manifest_and_old_format_are_refused(checkpoint):
    root, _ = checkpoint
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["checkpoint_sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="checkpoint_sha256"):
        verify_checkpoint(root)
    manifest["format"] = "keti-ray-checkpoint/1"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="pickled RLlib checkpoints are not loaded"):
        verify_checkpoint(root)
    (root / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(root)


def test_a_config_for_other_features_is_refused(tmp_path):
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 8)
    config = _config()
    config["global_features"] = [*GLOBAL_FEATURES[:-1], "arrived"]
    save_scorer(tmp_path / "c", net, config, {})
    with pytest.raises(CheckpointError, match="global_features"):
        load_ppo_allocator(tmp_path / "c")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 8)
    save_scorer(tmp_path / "c", net, _config(hidden=16), {})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_ppo_allocator(tmp_path / "c")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ppo_allocator(tmp_path / "nope")


def test_the_shipped_checkpoint_verifies_is_small_and_decides():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("no shipped checkpoint in this checkout")
    verify_checkpoint(DEFAULT_CHECKPOINT)
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert not list(DEFAULT_CHECKPOINT.rglob("*.pkl"))
    allocator = load_ppo_allocator(None, seed=0)
    state = ClusterState([NodeSpec(f"n{i}", 32000, 65536, 4, "V100") for i in range(3)])
    placement = allocator.place(state, PodRequest("p", 4000, 1024, 1, 470))
    assert placement is not None and np.isin(placement.node, [0, 1, 2])
