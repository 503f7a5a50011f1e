"""``reslab trainability``: every variant trains on one budget; the verdict sorts them by the
one rule into those that close the degradation gap, those that close part of it, and failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reslab.cli import main
from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.trainability import VARIANTS, trainability_verdict


def _row(variant: str, error: float | None, std: float | None = None, n: int = 1) -> dict[str, Any]:
    return {
        "variant": variant, "label": VARIANTS[variant].label, "n_seeds": n,
        "family": "residual" if VARIANTS[variant].shortcut else "plain", "depth": 56,
        "clean_train_error_mean": error, "clean_train_error_std": std,
    }  # fmt: skip


def test_the_verdict_sorts_the_variants_by_the_one_rule() -> None:
    summary = [
        _row("plain", 80.0), _row("residual", 5.0), _row("dirac", 5.5), _row("fixup", 40.0),
        _row("plain_no_bn", 85.0), _row("residual_no_bn", None),
    ]  # fmt: skip
    v = trainability_verdict(summary, tolerance=1.0, chance=90.0)
    assert (v["closes"], v["partly"]) == (["dirac"], ["fixup"])
    assert v["fails"] == ["plain_no_bn", "residual_no_bn"]  # worse than plain; diverged
    assert v["gap"] == pytest.approx(75.0) and v["gaps"]["fixup"]["gap"] == pytest.approx(35.0)
    assert "plain, Dirac parametrisation (5.5 %) close it" in v["text"]


def test_seed_noise_can_keep_a_variant_from_closing_the_gap() -> None:
    summary = [_row("plain", 80.0, 1.0, 2), _row("residual", 5.0, 1.0, 2)]
    summary.append(_row("skipinit", 12.0, 4.0, 2))  # 7 points worse, noise 2·√17 ≈ 8.2
    assert trainability_verdict(summary, 1.0, 90.0)["closes"] == ["skipinit"]


def test_no_gap_or_no_learning_is_inconclusive() -> None:
    no_gap = [_row("plain", 5.2), _row("residual", 5.0), _row("dirac", 5.0)]
    v = trainability_verdict(no_gap, 1.0, 90.0)
    assert v["inconclusive"] is True and "no degradation gap to close" in v["text"]
    stuck = [_row("plain", 89.0), _row("residual", 88.5)]
    assert trainability_verdict(stuck, 1.0, 90.0)["text"].startswith("inconclusive:")


def test_the_references_are_required_and_names_checked() -> None:
    with pytest.raises(ConfigError, match="must include residual"):
        StudyConfig(experiment="trainability", options={"trainability_variants": ("plain",)})
    with pytest.raises(ConfigError, match="unknown variant 'shortcutless'"):
        StudyConfig(
            experiment="trainability",
            options={"trainability_variants": ("plain", "residual", "shortcutless")},
        )
    config = StudyConfig(experiment="trainability")
    assert config.depths == (56,) and config.options["trainability_variants"] == tuple(VARIANTS)
    specs = get_study("trainability").plan(config)
    assert len(specs) == len(VARIANTS) and {s.depth for s in specs} == {56}
    dirac = next(s for s in specs if "dirac" in s.name)
    assert (dirac.model, dirac.overrides["init"]) == ("plain56", "dirac")


@pytest.mark.slow
def test_a_small_study_trains_measures_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "t"
    argv = ["trainability", "--depth", "8", "--variants", "plain,residual,dirac,residual_no_bn"]
    argv += ["--steps", "4", "--seeds", "0", "--jobs", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["summary"]] == [
        "plain",
        "residual",
        "dirac",
        "residual_no_bn",
    ]
    signal = results["probes"]["signal_propagation"]
    assert {(e["label"], e["when"]) for e in signal} >= {
        ("plain, Dirac parametrisation", "init"), ("residual, no BN", "init")
    }  # fmt: skip
    assert "verdict" in results and results["verdict"]["text"]
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"trainability_errors.png", "signal_propagation.png"} <= figures
