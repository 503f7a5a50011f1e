"""The chance rule, part of the one verdict rule: a comparison of nets that have not learned is
inconclusive, says why and what to do — in every study whose verdict compares trained nets.

Issue: `reslab degradation --depths 20,56 --seeds 0,1 --epochs 1 --lr 1e-7` left every net at
chance and the verdict said "plain-56 trains as well as plain-20"; with one seed and one epoch
it declared degradation on a 1.1-point gap between two nets both at chance (88.8 vs 89.9 %).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reslab.cli import main
from reslab.experiments.ablation import ablation_verdict
from reslab.experiments.degradation import degradation_verdict
from reslab.experiments.shortcuts import shortcut_verdict
from reslab.experiments.verdicts import CHANCE_MARGIN, chance_error, not_learned

CHANCE = chance_error(10)  # 90 %


def _row(label: str, family: str, depth: int, error: float, **extra: Any) -> dict[str, Any]:
    return {
        "label": label, "family": family, "depth": depth, "shortcut": None, "n_seeds": 1,
        "clean_train_error_mean": error, "clean_train_error_std": None,
        "test_error_mean": error, "test_error_std": None, **extra,
    }  # fmt: skip


def test_chance_is_the_error_of_guessing() -> None:
    assert chance_error(10) == pytest.approx(90.0)
    assert chance_error(2) == pytest.approx(50.0)


def test_a_net_within_the_margin_of_chance_has_not_learned() -> None:
    learned = _row("resnet-20", "residual", 20, CHANCE - CHANCE_MARGIN - 0.1)
    stuck = _row("plain-20", "plain", 20, CHANCE - CHANCE_MARGIN)
    assert not_learned([learned], CHANCE) is None
    verdict = not_learned([learned, stuck], CHANCE)
    assert verdict is not None and verdict["inconclusive"] is True
    assert "plain-20 (80.0 %) has not learned" in verdict["text"]
    assert "--epochs" in verdict["text"] and "--lr" in verdict["text"]
    assert not_learned([stuck], None) is None  # chance unknown: no judgement


def test_degradation_at_chance_is_inconclusive_not_degradation() -> None:
    summary = [
        _row("plain-20", "plain", 20, 88.8),
        _row("plain-56", "plain", 56, 89.9),
        _row("resnet-20", "residual", 20, 89.0),
        _row("resnet-56", "residual", 56, 89.5),
    ]
    verdict = degradation_verdict(summary, 1.0, CHANCE)
    assert verdict["text"].startswith("inconclusive: plain-20 (88.8 %), resnet-20 (89.0 %)")
    assert "degradation" not in verdict and "residual_ok" not in verdict
    # A deep plain net stuck at chance while the shallow nets learned IS degradation.
    summary[0]["clean_train_error_mean"] = summary[2]["clean_train_error_mean"] = 2.0
    assert degradation_verdict(summary, 1.0, CHANCE)["degradation"] is True


def test_shortcuts_and_ablation_at_chance_are_inconclusive() -> None:
    rows = [_row("plain-20", "plain", 20, 89.0), _row("resnet-20 (A)", "residual", 20, 88.0)]
    assert shortcut_verdict(rows, 1.0, CHANCE)["inconclusive"] is True
    ablation = [
        _row("identity", "residual", 56, 89.0, variant="identity"),
        _row("gated", "residual", 56, 90.0, variant="exclusive_gate"),
    ]
    assert ablation_verdict(ablation, 1.0, CHANCE)["inconclusive"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["degradation", "--depths", "8,14"],
        ["shortcuts", "--depth", "8", "--variants", "plain,A"],
        ["ablation", "--depth", "8", "--variants", "identity,scale"],
        ["lesion", "--depth", "8", "--draws", "1", "--ks", "1"],
        ["landscape", "--depths", "8", "--grid", "3", "--curve", "3", "--images", "16"],
        ["trainability", "--depth", "8", "--variants", "plain,residual,skipinit"],
    ],
    ids=lambda argv: argv[0],
)
def test_runs_that_never_leave_chance_give_an_inconclusive_verdict(
    argv: list[str], tmp_path: Path
) -> None:
    """Real runs at a learning rate that leaves every net at chance, in every study that
    trains the nets its verdict compares."""
    out = tmp_path / "study"
    budget = ["--seeds", "0", "--steps", "2", "--lr", "1e-9", "--jobs", "1", "--device", "cpu"]
    assert main([*argv, *budget, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["chance_error"] == pytest.approx(CHANCE)
    verdict = results["verdict"]
    assert verdict.get("inconclusive") is True, verdict["text"]
    assert verdict["text"].startswith("inconclusive:") and "not learned" in verdict["text"]
