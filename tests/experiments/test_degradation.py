"""The degradation study: its plan, and its verdict on both outcomes and within the noise."""

from __future__ import annotations

from typing import Any

import pytest

from reslab.errors import ReslabError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.degradation import degradation_verdict


def _row(family: str, depth: int, train: float, std: float = 0.1, **kw: Any) -> dict[str, Any]:
    prefix = "plain" if family == "plain" else "resnet"
    return {
        "family": family,
        "depth": depth,
        "shortcut": None if family == "plain" else "A",
        "label": f"{prefix}-{depth}",
        "n_seeds": 2,
        "clean_train_error_mean": train,
        "clean_train_error_std": std,
        "test_error_mean": train + 2.0,
        "test_error_std": 0.1,
        **kw,
    }


def test_plan_covers_families_depths_and_seeds() -> None:
    specs = get_study("degradation").plan(StudyConfig(depths=(20, 56), seeds=(0, 1, 2)))
    assert len(specs) == 12
    assert [s.depth for s in specs[:6]] == [56] * 6  # the most expensive runs start first
    assert {s.model for s in specs} == {"plain20", "plain56", "resnet20", "resnet56"}
    assert {s.name for s in specs if s.depth == 20 and s.family == "plain"} == {
        "plain20-s0",
        "plain20-s1",
        "plain20-s2",
    }
    assert {(s.family, s.shortcut) for s in specs} == {("plain", None), ("residual", "A")}


def test_verdict_reports_degradation_when_the_numbers_show_it() -> None:
    summary = [_row("plain", 20, 5.0), _row("plain", 56, 8.0)]
    summary += [_row("residual", 20, 5.0), _row("residual", 56, 4.0)]
    verdict = degradation_verdict(summary, tolerance=1.0)
    assert verdict == {
        "text": "plain-56 trains worse than plain-20 (degradation): 8.0 % vs 5.0 % training "
        "error, a gap of 3.0 points, beyond the tolerance (1) and twice the seed noise (0.3); "
        "resnet-56 trains as well as resnet-20: 4.0 % vs 5.0 % training error, a gap of -1.0 "
        "points, within the tolerance (1)",
        "degradation": True,
        "residual_ok": True,
        "plain_gap": 3.0,
        "plain_gap_noise": pytest.approx(0.1414, abs=1e-4),
        "residual_gap": -1.0,
        "residual_gap_noise": pytest.approx(0.1414, abs=1e-4),
        "tolerance": 1.0,
    }


def test_verdict_says_so_when_there_is_no_degradation() -> None:
    summary = [_row("plain", 20, 0.5), _row("plain", 56, 0.9)]
    summary += [_row("residual", 20, 0.3), _row("residual", 56, 5.0)]
    verdict = degradation_verdict(summary, tolerance=1.0)
    assert not verdict["degradation"] and not verdict["residual_ok"]
    assert "plain-56 trains as well as plain-20 (no degradation" in verdict["text"]
    assert "resnet-56 also trains worse than resnet-20" in verdict["text"]


def test_a_gap_within_the_seed_noise_is_not_degradation() -> None:
    noisy = [_row("plain", 20, 1.0, std=2.0), _row("plain", 56, 4.0, std=2.0)]
    noisy += [_row("residual", 20, 0.3), _row("residual", 56, 0.2)]
    verdict = degradation_verdict(noisy, tolerance=1.0)
    assert verdict["plain_gap"] == pytest.approx(3.0)
    assert verdict["plain_gap_noise"] == pytest.approx(2.8284, abs=1e-3)
    assert not verdict["degradation"]
    quiet = [{**r, "clean_train_error_std": 0.5} for r in noisy]
    assert degradation_verdict(quiet, tolerance=1.0)["degradation"]  # 3.0 > 2 × 0.71


def test_verdict_compares_the_first_shortcut_option_only() -> None:
    summary = [_row("plain", 20, 5.0), _row("plain", 56, 8.0)]
    summary += [_row("residual", 20, 5.0), _row("residual", 56, 4.0)]
    summary += [_row("residual", 56, 50.0, shortcut="B", label="resnet-56 (B)")]
    assert degradation_verdict(summary)["residual_gap"] == -1.0


def test_no_verdict_without_two_depths_of_finished_runs() -> None:
    summary = [_row("plain", 20, 5.0), _row("residual", 20, 5.0), _row("residual", 56, 4.0)]
    with pytest.raises(ReslabError, match="needs plain nets at two or more depths"):
        degradation_verdict(summary)
    diverged = [{**r, "clean_train_error_mean": None} for r in summary]
    verdict = get_study("degradation").verdict({"summary": diverged}, StudyConfig())
    assert verdict["text"].startswith("no verdict: the degradation verdict needs plain nets")


def test_the_noise_rule_holds_for_the_residual_family_too() -> None:
    """Issue 12's example: a 23.8-point residual gap with a seed std of 32.9 is seed noise."""
    summary = [_row("plain", 20, 83.8, std=1.0), _row("plain", 32, 89.9, std=4.0)]
    summary += [_row("residual", 20, 40.7, std=32.9), _row("residual", 32, 64.5, std=1.0)]
    verdict = degradation_verdict(summary, tolerance=1.0)
    assert verdict["degradation"] is False  # 6.1 points < 2 × hypot(1, 4)
    assert verdict["residual_ok"] is True
    assert "resnet-32 trains as well as resnet-20" in verdict["text"]
    assert "within twice the seed noise (65.8)" in verdict["text"]
    assert "plain-32 trains as well as plain-20" in verdict["text"]


def test_with_one_seed_the_verdict_says_the_noise_is_unknown() -> None:
    one = [
        _row(f, d, e, std=0.0, n_seeds=1)
        for f, d, e in (("plain", 20, 1.0), ("plain", 56, 9.0), ("residual", 20, 1.0),
                        ("residual", 56, 1.2))
    ]  # fmt: skip
    verdict = degradation_verdict(one, tolerance=1.0)
    assert verdict["degradation"] and verdict["residual_ok"]
    assert verdict["plain_gap_noise"] is None and verdict["residual_gap_noise"] is None
    assert verdict["text"].count("one seed, so the seed noise is unknown") == 2
