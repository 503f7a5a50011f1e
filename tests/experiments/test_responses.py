"""The responses study: layer-response std and ‖F(x)‖/‖x‖, for every seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import fake_probes
from reslab.experiments import StudyConfig, get_study, run_study
from reslab.experiments.probe_views import probes_section


def test_a_short_study_probes_every_net(tmp_path: Path) -> None:
    study = StudyConfig(
        experiment="responses", depths=(8,), seeds=(0,), epochs=1, width=0.25, jobs=1,
        out=str(tmp_path / "r"),
    )  # fmt: skip
    results = run_study(study, log=lambda _: None)
    assert list(results["probes"]) == ["layer_responses", "residual_magnitude"]
    assert [e["label"] for e in results["probes"]["layer_responses"]] == ["plain-8", "resnet-8"]
    assert "seed" not in results["probes"]["layer_responses"][0]  # one seed: as before
    assert "runs" not in results  # the study's product is its probes
    figures = {p.stem for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert figures == {"residual_ratio", "layer_responses"}
    mean_ratio = np.mean(results["probes"]["residual_magnitude"][1]["ratio"])
    assert f"resnet-8: mean ‖F(x)‖/‖x‖ = {mean_ratio:.2f}" in results["verdict"]["text"]


def test_several_seeds_give_mean_and_std() -> None:
    probes = fake_probes((14,), seeds=(0, 1))
    del probes["gradient_flow"]  # the responses study's two probes only
    verdict = get_study("responses").verdict({"probes": probes}, StudyConfig("responses"))
    stds = [np.mean(e["std"]) for e in probes["layer_responses"] if e["label"] == "resnet-14"]
    expected = f"{np.mean(stds):.2f} ± {np.std(stds, ddof=1):.2f} over 2 seeds"
    assert f"resnet-14: mean layer response std = {expected}" in verdict["text"]
    assert "plain-14: mean ‖F(x)‖/‖x‖" not in verdict["text"]  # plain nets have no branch
    table = probes_section({"probes": probes}).html
    assert table.count("<td>resnet-14</td>") == 2  # one row per net and table, not per seed
