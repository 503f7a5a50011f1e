"""The gradients study: gradient flow at init, at chosen steps and trained, for every seed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import fake_probes
from reslab.experiments import StudyConfig, get_study, run_study
from reslab.experiments.probe_views import gradient_norm, gradient_readings, probes_section
from reslab.weights import load_model


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gradients") / "g"
    study = StudyConfig(
        experiment="gradients",
        depths=(8,),
        seeds=(0, 1),
        epochs=2,
        width=0.25,
        jobs=1,
        probe_steps=(0, 5),
        out=str(out),
    )
    return out, run_study(study, log=lambda _: None)


def test_every_seed_is_probed_at_the_chosen_steps(two_seeds: tuple[Path, dict[str, Any]]) -> None:
    out, results = two_seeds
    flows = results["probes"]["gradient_flow"]
    for seed in (0, 1):
        mine = [f["when"] for f in flows if f["family"] == "plain" and f["seed"] == seed]
        assert mine == ["init", "step 5", "trained"]
    # The snapshots are the run's own weights at those steps: five SGD steps moved them.
    ckpt = out / "runs" / "plain8-s1" / "checkpoints"
    init, step5 = (load_model(ckpt / f"snapshot-{s:09d}.safetensors") for s in (0, 5))
    pairs = zip(init.state_dict().values(), step5.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert {p.name for p in (out / "figures").glob("*.png")} == {"gradient_norm.png"}


def test_the_verdict_averages_the_seeds(two_seeds: tuple[Path, dict[str, Any]]) -> None:
    _, results = two_seeds
    ratios = [
        f["input_grad_norm"][0] / f["input_grad_norm"][-1]
        for f in results["probes"]["gradient_flow"]
        if f["label"] == "plain-8" and f["when"] == "init"
    ]
    assert len(ratios) == 2
    expected = f"{np.mean(ratios):.2g} ± {np.std(ratios, ddof=1):.2g} over 2 seeds"
    assert f"plain-8: ‖∂L/∂x‖ first/last block = {expected} at init" in results["verdict"]["text"]


def test_one_seed_reads_as_before() -> None:
    probes = {
        "gradient_flow": [{"label": "plain-56", "when": "init", "input_grad_norm": [100.0, 1.0]}]
    }
    assert gradient_readings(probes) == ["plain-56: ‖∂L/∂x‖ first/last block = 1e+02 at init"]
    text = get_study("gradients").verdict({"probes": probes}, StudyConfig("gradients"))["text"]
    assert text == "plain-56: ‖∂L/∂x‖ first/last block = 1e+02 at init"
    assert get_study("gradients").verdict({"probes": {}}, StudyConfig("gradients")) == {
        "text": "no probes"
    }


def test_seeds_of_one_net_are_one_line_and_one_row() -> None:
    probes = fake_probes((8,), seeds=(0, 1, 2))
    flows = probes["gradient_flow"]
    fig = gradient_norm(flows)
    labels = {t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()}
    assert labels == {"plain-8 (3 seeds)", "resnet-8 (3 seeds)"}
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # one mean line per net and panel
    plain_init = [f for f in flows if f["label"] == "plain-8" and f["when"] == "init"]
    first = [f["input_grad_norm"][0] for f in plain_init]
    table = probes_section({"probes": {"gradient_flow": flows}}).html
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 1 + 4  # header, then plain/resnet × init/trained
    cell = f"{np.mean(first):.3g} ± {np.std(first, ddof=1):.3g}"
    assert cell in rows[1] and rows[1].startswith("<td>plain-8</td><td>init</td>")
