"""Checkpoint manifests: only files whose SHA-256 matches what `keti-ray train` wrote load."""

from __future__ import annotations

import json
import pickle

import gymnasium as gym
import pytest

from keti_ray.rl.checkpoint import CheckpointError, verify_checkpoint, write_manifest
from keti_ray.rl.env import observation_space
from keti_ray.rl.module import CandidateScorerModule
from keti_ray.rl.policy import DEFAULT_CHECKPOINT, MODULE_SUBDIR, load_module, load_ppo_allocator


@pytest.fixture
def checkpoint(tmp_path):
    module = CandidateScorerModule(
        observation_space=observation_space(6),
        action_space=gym.spaces.Discrete(6),
        model_config={"hidden": 8},
    )
    root = tmp_path / "ckpt"
    module.save_to_path(str(root / MODULE_SUBDIR))
    write_manifest(root, {"k": 6, "random_extra": 1})
    return root


def test_a_checkpoint_with_its_manifest_loads(checkpoint):
    manifest = verify_checkpoint(checkpoint)
    assert len(manifest["checkpoint_sha256"]) == 64
    module, _ = load_module(checkpoint)
    assert isinstance(module, CandidateScorerModule)
    allocator = load_ppo_allocator(checkpoint, seed=0)
    assert allocator.gen.k == 6 and allocator.gen.random_extra == 1


def test_a_changed_pickle_is_refused_before_it_is_opened(checkpoint, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    target = next((checkpoint / MODULE_SUBDIR).glob("*.pkl"))
    target.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_ppo_allocator(checkpoint)
    assert not marker.exists()


def test_missing_manifest_extra_file_and_forged_listing_are_refused(checkpoint):
    (checkpoint / "extra.pkl").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not in the manifest"):
        verify_checkpoint(checkpoint)
    (checkpoint / "extra.pkl").unlink()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["checkpoint_sha256"] = "0" * 64
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="checkpoint_sha256"):
        verify_checkpoint(checkpoint)
    (checkpoint / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(checkpoint)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ppo_allocator(tmp_path / "nope")


def test_the_shipped_checkpoint_verifies_and_is_small():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("no shipped checkpoint in this checkout")
    verify_checkpoint(DEFAULT_CHECKPOINT)
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert load_ppo_allocator(None, seed=0).name == "ppo"
