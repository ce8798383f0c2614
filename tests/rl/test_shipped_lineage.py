"""The published figures belong to the shipped checkpoint, and it was chosen by the rule.

The README's tables come from files in bench/results: the search reports (one per stage,
each continuing the one before) and the seeds 42-51 evaluation. These tests tie them to the
checkpoint that `keti-ray up` serves, so that swapping the checkpoint without its evidence,
or publishing a table of another checkpoint, fails here. Runs on every machine (no replays).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from keti_ray.rl.candidates import CANDIDATE_FEATURES
from keti_ray.rl.checkpoint import load_scorer, verify_checkpoint
from keti_ray.rl.pod_groups import POD_GROUPS
from keti_ray.rl.policy import DEFAULT_CHECKPOINT, SHIPPED_CHECKPOINT_SHA256

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
STAGE = re.compile(r"ppo_search_stage(\d+)(_rejected)?\.json")


def _stages() -> list[tuple[int, bool, dict]]:
    """(stage number, rejected, report) for every search report, in stage order."""
    found = []
    for path in RESULTS.glob("ppo_search_stage*.json"):
        match = STAGE.fullmatch(path.name)
        if match:
            found.append((int(match[1]), bool(match[2]), json.loads(path.read_text())))
    return sorted(found, key=lambda item: item[0])


@pytest.fixture(scope="module")
def stages() -> list[tuple[int, bool, dict]]:
    found = _stages()
    assert len(found) >= 2, "the search reports are missing from bench/results"
    return found


def _shipped(stages: list[tuple[int, bool, dict]]) -> tuple[int, dict]:
    matches = [(n, r) for n, _, r in stages if r["checkpoint_sha256"] == SHIPPED_CHECKPOINT_SHA256]
    assert len(matches) == 1, "exactly one search report must have produced the shipped checkpoint"
    return matches[0]


def test_the_default_checkpoint_is_the_pinned_one() -> None:
    assert verify_checkpoint(DEFAULT_CHECKPOINT)["checkpoint_sha256"] == SHIPPED_CHECKPOINT_SHA256


def test_each_stage_continues_the_one_before(stages) -> None:
    numbers = [n for n, _, _ in stages]
    assert numbers == list(range(1, len(stages) + 1)), f"stages are not consecutive: {numbers}"
    for (_, _, before), (n, _, report) in zip(stages, stages[1:], strict=False):
        assert report["started_from"] == before["checkpoint_sha256"], f"stage {n}"
        if report["validation"]["pairs"] != before["validation"]["pairs"]:
            continue  # stage 1 validated on 10 pairs, the later stages on 50
        # The start, replayed on the same pairs, gives the figures the stage before reported.
        assert report["validation"]["started_from"]["per_pair"] == pytest.approx(
            before["validation"]["result"]["per_pair"], abs=1e-9
        ), f"stage {n}: its start does not replay as the stage before reported"


def test_design_seeds_never_overlap_validation_or_evaluation_seeds(stages) -> None:
    used: dict[int, int] = {}
    for n, _, report in stages:
        s = report["settings"]
        seeds = range(
            s["seed_base"], s["seed_base"] + len(report["curve"]) * s["seeds_per_generation"]
        )
        assert not set(seeds) & set(range(42, 52)), f"stage {n} searched on seeds 42-51"
        assert not set(seeds) & set(s["validation_seeds"]), f"stage {n} searched on validation"
        for seed in seeds:
            assert seed not in used, f"stages {used.get(seed)} and {n} share design seed {seed}"
            used[seed] = n


def test_the_shipped_stage_is_the_one_the_rule_keeps(stages) -> None:
    """The rule keeps the lower validation mean at each step: the shipped stage is not rejected
    and no stage after it did better on the same 50 pairs."""
    shipped_number, shipped = _shipped(stages)
    rejected = {n for n, r, _ in stages if r}
    assert shipped_number not in rejected
    best = shipped["validation"]["mean"]
    for n, _, report in stages:
        if n > shipped_number:
            assert report["validation"]["mean"] >= best, f"stage {n} was better"
            assert n in rejected, f"stage {n} came after the shipped one but is not marked rejected"


def test_the_shipped_weights_are_the_reported_ones(stages) -> None:
    _, shipped = _shipped(stages)
    net, _, _ = load_scorer(DEFAULT_CHECKPOINT, SHIPPED_CHECKPOINT_SHA256)
    head = net.linear.weight.detach().numpy().astype(np.float64)
    reported = np.array(
        [[shipped["weights"][g][f] for f in CANDIDATE_FEATURES] for g in POD_GROUPS]
    )
    np.testing.assert_allclose(head, reported, atol=1e-5, rtol=1e-5)
    assert not net.logit.weight.detach().numpy().any(), "the shipped MLP output is not zeroed"


def test_the_published_evaluation_is_of_the_shipped_checkpoint() -> None:
    evaluation = json.loads((RESULTS / "ppo_eval.json").read_text())
    assert evaluation["checkpoint_sha256"] == SHIPPED_CHECKPOINT_SHA256
    assert evaluation["seeds"] == list(range(42, 52))
    for name, row in evaluation["lists"].items():
        diff = np.array(row["ppo_per_seed"]) - np.array(row["fgd_per_seed"])
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        assert row["ppo_minus_fgd"] == pytest.approx(diff.mean(), abs=6e-4), name
        assert row["ppo_wins"] == bool(-diff.mean() > 2 * se), name
