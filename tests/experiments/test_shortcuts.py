"""The shortcuts study: plain vs options A, B, C at one depth."""

from __future__ import annotations

import pytest

from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.shortcuts import shortcut_verdict


def _row(family: str, label: str, train: float, test: float) -> dict[str, object]:
    return {
        "family": family,
        "depth": 20,
        "shortcut": None if family == "plain" else label[-2],
        "label": label,
        "n_seeds": 2,
        "clean_train_error_mean": train,
        "clean_train_error_std": 0.1,
        "test_error_mean": test,
        "test_error_std": 0.1,
    }


def test_plan_is_every_variant_at_the_one_depth() -> None:
    specs = get_study("shortcuts").plan(
        StudyConfig(experiment="shortcuts", depths=(20,), seeds=(0, 1))
    )
    assert [(s.name, s.shortcut) for s in specs if s.seed == 0] == [
        ("plain20-plain-s0", None),
        ("resnet20-A-s0", "A"),
        ("resnet20-B-s0", "B"),
        ("resnet20-C-s0", "C"),
    ]
    assert {s.overrides["shortcut"] for s in specs} == {"A", "B", "C"}  # plain nets ignore it
    assert len({s.name for s in specs}) == 8


def test_several_depths_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"one depth, got depths 20,56: give one"):
        StudyConfig(experiment="shortcuts", depths=(20, 56))


def test_verdict_names_the_best_and_the_plain_gap() -> None:
    summary = [
        _row("plain", "plain-20", 5.0, 8.0),
        _row("residual", "resnet-20 (A)", 1.0, 3.0),
        _row("residual", "resnet-20 (B)", 0.8, 2.5),
    ]
    verdict = shortcut_verdict(summary, tolerance=1.0)
    assert verdict == {
        "best": "resnet-20 (B)",
        "plain_gap": pytest.approx(4.2),
        "plain_gap_noise": pytest.approx(0.1414, abs=1e-4),
        "option_spread": pytest.approx(0.5),
        "option_spread_noise": pytest.approx(0.1414, abs=1e-4),
        "text": "best test error: resnet-20 (B) (2.5%); plain-20 trains worse than "
        "resnet-20 (B): 5.0 % vs 0.8 % training error, a gap of 4.2 points, beyond the "
        "tolerance (1) and twice the seed noise (0.3); the shortcut options do not differ "
        "measurably in test error (resnet-20 (B) 2.5 % to resnet-20 (A) 3.0 %, a gap of 0.5 "
        "points, within the tolerance (1))",
    }
    close = shortcut_verdict([_row("plain", "plain-20", 1.5, 3.0), summary[2]], tolerance=1.0)
    assert "plain-20 trains as well as resnet-20 (B)" in close["text"]
    with pytest.raises(Exception, match="no finished runs"):
        shortcut_verdict([{**summary[0], "clean_train_error_mean": None}], tolerance=1.0)
