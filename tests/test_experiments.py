"""Experiments: study planning, the verdict logic on both outcomes, and a shortened study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.degradation import degradation_verdict
from reslab.experiments.shortcuts import shortcut_verdict


def plan(config: StudyConfig) -> list:  # type: ignore[type-arg]
    return get_study(config.experiment).plan(config)


def probe_verdict(probes: dict) -> dict:  # type: ignore[type-arg]
    return get_study("gradients").verdict({"probes": probes}, StudyConfig("gradients"))


def _row(family: str, depth: int, train: float, test: float) -> dict[str, object]:
    prefix = "plain" if family == "plain" else "resnet"
    return {
        "family": family,
        "depth": depth,
        "shortcut": None if family == "plain" else "A",
        "label": f"{prefix}-{depth}",
        "n_seeds": 2,
        "clean_train_error_mean": train,
        "clean_train_error_std": 0.1,
        "test_error_mean": test,
        "test_error_std": 0.1,
    }


def test_verdict_reports_degradation_when_the_numbers_show_it() -> None:
    summary = [
        _row("plain", 20, 0.5, 2.0),
        _row("plain", 56, 40.0, 42.0),
        _row("residual", 20, 0.3, 1.5),
        _row("residual", 56, 0.2, 1.2),
    ]
    verdict = degradation_verdict(summary, tolerance=1.0)
    assert verdict["degradation"] and verdict["residual_ok"]
    assert verdict["plain_gap"] == pytest.approx(39.5)
    assert verdict["text"].startswith("plain-56 trains worse than plain-20 (degradation)")
    assert "resnet-56 trains as well as resnet-20" in verdict["text"]


def test_verdict_says_so_when_there_is_no_degradation() -> None:
    summary = [
        _row("plain", 20, 0.5, 2.0),
        _row("plain", 56, 0.9, 2.5),
        _row("residual", 20, 0.3, 1.5),
        _row("residual", 56, 5.0, 6.0),
    ]
    verdict = degradation_verdict(summary, tolerance=1.0)
    assert not verdict["degradation"] and not verdict["residual_ok"]
    assert "plain-56 trains as well as plain-20 (no degradation" in verdict["text"]
    assert "resnet-56 also trains worse than resnet-20" in verdict["text"]


def test_plan_covers_families_depths_and_seeds() -> None:
    specs = plan(StudyConfig(depths=(20, 56), seeds=(0, 1, 2)))
    assert len(specs) == 12
    assert specs[0].depth == 56  # the most expensive runs start first
    assert {s.model for s in specs} == {"plain20", "plain56", "resnet20", "resnet56"}
    shortcut_specs = plan(StudyConfig(experiment="shortcuts", depths=(20,), seeds=(0,)))
    assert [s.shortcut for s in shortcut_specs] == [None, "A", "B", "C"]
    assert len({s.name for s in shortcut_specs}) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depths": (20,)}, "two or more --depths"),
        ({"depths": (21, 56)}, r"depth 21 is not 6n\+2"),
        ({"seeds": ()}, "at least one seed"),
        ({"experiment": "nope"}, "unknown experiment"),
        ({"jobs": 0}, "--jobs must be at least 1"),
        ({"experiment": "shortcuts", "depths": (20,), "variants": ("plain", "D")}, "variant 'D'"),
    ],
)
def test_bad_study_configs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        StudyConfig(**kwargs)  # type: ignore[arg-type]


def test_shortcut_and_probe_verdicts_are_computed() -> None:
    summary = [
        {**_row("plain", 20, 5.0, 8.0), "label": "plain-20"},
        {**_row("residual", 20, 1.0, 3.0), "label": "resnet-20 (A)"},
        {**_row("residual", 20, 0.8, 2.5), "label": "resnet-20 (B)"},
    ]
    verdict = shortcut_verdict(summary, tolerance=1.0)
    assert verdict["best"] == "resnet-20 (B)"
    assert verdict["plain_gap"] == pytest.approx(4.2)
    text = probe_verdict(
        {"gradient_flow": [{"label": "plain-56", "when": "init", "input_grad_norm": [100.0, 1.0]}]}
    )["text"]
    assert "first/last block = 1e+02" in text


def test_shortened_study_end_to_end_and_resumes(tmp_path: Path) -> None:
    from reslab.experiments import run_study

    study = StudyConfig(
        depths=(8, 14), seeds=(0,), epochs=2, width=0.25, jobs=1, out=str(tmp_path / "s")
    )
    lines: list[str] = []
    results = run_study(study, log=lines.append)
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["experiment"] == "degradation"
    assert len(saved["runs"]) == 4
    assert {r["family"] for r in saved["runs"]} == {"plain", "residual"}
    for run in saved["runs"]:
        assert len(run["curves"]["clean_train_error"]) == 2
        assert 0.0 <= run["final_clean_train_error"] <= 100.0
    assert saved["verdict"]["text"] == results["verdict"]["text"]
    assert saved["verdict"]["text"] in lines
    assert {p["when"] for p in saved["probes"]["gradient_flow"]} == {"init", "trained"}
    html = (tmp_path / "s" / "report.html").read_text()
    assert saved["verdict"]["text"] in html
    assert list((tmp_path / "s" / "figures").glob("*.png"))

    # A second run of the same study trains nothing: every run folder is finished.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").glob("*/result.json")}
    run_study(study, log=lines.append)
    assert stamps == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").glob("*/result.json")
    }


def test_report_aggregates_run_folders(tmp_path: Path) -> None:
    from reslab.cli import main
    from reslab.experiments import run_study

    study = StudyConfig(
        depths=(8, 14), seeds=(0,), epochs=1, width=0.25, jobs=1, out=str(tmp_path / "s")
    )
    run_study(study, log=lambda _: None)
    (tmp_path / "s" / "results.json").unlink()
    assert main(["report", str(tmp_path / "s")]) == 0
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(saved["runs"]) == 4 and "degradation" in saved["verdict"]


def test_gradients_study_probes_chosen_steps(tmp_path: Path) -> None:
    from reslab.experiments import run_study
    from reslab.weights import load_model

    study = StudyConfig(
        experiment="gradients",
        depths=(8,),
        seeds=(0,),
        epochs=2,
        width=0.25,
        jobs=1,
        probe_steps=(0, 5),
        out=str(tmp_path / "g"),
    )
    results = run_study(study, log=lambda _: None)
    flows = results["probes"]["gradient_flow"]
    assert [f["when"] for f in flows if f["family"] == "plain"] == ["init", "step 5", "trained"]
    # The snapshots are the run's own weights at those steps: five SGD steps moved them.
    ckpt = tmp_path / "g" / "runs" / "plain8-s0" / "checkpoints"
    init, step5 = (load_model(ckpt / f"snapshot-{s:09d}.safetensors") for s in (0, 5))
    differs = [
        not torch.equal(a, b)
        for a, b in zip(init.state_dict().values(), step5.state_dict().values(), strict=True)
    ]
    assert any(differs)
    assert (tmp_path / "g" / "figures" / "gradient_norm.png").is_file()


def test_snapshot_steps_must_increase() -> None:
    from reslab.errors import ConfigError as TrainConfigError
    from reslab.train import TrainConfig

    with pytest.raises(TrainConfigError, match="snapshot_steps"):
        TrainConfig(snapshot_steps=[10, 5])


def test_diverged_runs_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    from reslab.experiments import run_study

    study = StudyConfig(
        depths=(8, 14), seeds=(0,), epochs=1, width=0.25, lr=1e30, jobs=1, out=str(tmp_path / "d")
    )
    lines: list[str] = []
    results = run_study(study, log=lines.append)
    assert {r["status"] for r in results["runs"]} == {"diverged"}
    assert all(r["final_clean_train_error"] is None for r in results["runs"])
    assert results["verdict"]["text"].startswith("no verdict:")
    assert any(line.endswith("diverged") for line in lines)
    assert (tmp_path / "d" / "report.html").is_file()
    # A rerun reads the recorded outcome instead of diverging again.
    assert run_study(study, log=lambda _: None)["verdict"] == results["verdict"]


def test_a_gap_within_the_seed_noise_is_not_degradation() -> None:
    noisy = [
        {**_row("plain", 20, 1.0, 3.0), "clean_train_error_std": 2.0},
        {**_row("plain", 56, 4.0, 6.0), "clean_train_error_std": 2.0},
        _row("residual", 20, 0.3, 1.5),
        _row("residual", 56, 0.2, 1.2),
    ]
    verdict = degradation_verdict(noisy, tolerance=1.0)
    assert verdict["plain_gap"] == pytest.approx(3.0)
    assert verdict["plain_gap_noise"] == pytest.approx(2.8284, abs=1e-3)
    assert not verdict["degradation"]
