"""The landscape study: its scans agree with the nets' own losses, its verdict follows the one
rule, its section validates, and ``reslab report`` rebuilds it from results.json alone."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from reslab.errors import ReslabError
from reslab.experiments import StudyConfig, build_report, run_study
from reslab.experiments.landscape import (
    SECTION,
    landscape_verdict,
    scan_images,
    scan_models,
    settings_of,
)
from reslab.experiments.landscape_views import RESULTS
from reslab.measure.landscape import ScanSettings
from reslab.models import create_model
from reslab.report.schema import validate_results
from reslab.train import RunFolder
from reslab.weights import load_model, save_weights

SMALL = {"grid": 5, "curve": 5, "images": 64}
FIGURES = {"landscape_curves", "landscape_contours", "landscape_surfaces", "landscape_sharpness"}


def _config(out: Path, **options: Any) -> StudyConfig:
    return StudyConfig(
        experiment="landscape",
        depths=(8,),
        seeds=(0,),
        epochs=1,
        width=0.25,
        jobs=1,
        out=str(out),
        options={**SMALL, **options},
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("landscape") / "l"
    return out, run_study(_config(out), log=lambda _: None)


def test_the_origin_is_each_trained_nets_own_loss(study: tuple[Path, dict[str, Any]]) -> None:
    out, results = study
    config = _config(out)
    x, y = scan_images(config)
    nets = results[SECTION]["nets"]
    assert {n["label"] for n in nets} == {"plain-8", "resnet-8"}
    for net in nets:
        model = load_model(RunFolder(net["source"]).weights_path).eval()
        with torch.no_grad():
            logits = model(x)
        assert net["loss_origin"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        assert net["error_origin"] == pytest.approx(
            100 * (logits.argmax(1) != y).double().mean().item()
        )
        mid = len(net["grid"]) // 2
        assert net["loss"][mid][mid] == net["loss_origin"]
        assert net["curve_loss"][len(net["curve_alpha"]) // 2] == net["loss_origin"]
        assert len(net["loss"]) == len(net["loss"][0]) == SMALL["grid"]
        assert net["images"] == SMALL["images"]


def test_the_study_writes_a_valid_section_and_its_figures(
    study: tuple[Path, dict[str, Any]],
) -> None:
    out, results = study
    assert results[SECTION]["settings"]["grid"] == SMALL["grid"]
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES
    verdict = results["verdict"]
    # The fixture's budget leaves the nets at chance: a surface around weights that never
    # learned is not a minimum's, and the verdict says so instead of comparing them.
    assert verdict["depth"] == 8 and verdict["inconclusive"] is True
    assert "have not learned" in verdict["text"] and "sharper" not in verdict
    saved = json.loads((out / "results.json").read_text())
    validate_results(saved, check=RESULTS)
    html = (out / "report.html").read_text()
    assert "Landscape numbers" in html and "rise at r" in html


def test_report_rebuilds_from_results_json_alone(
    study: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = study
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / "results.json").write_bytes((out / "results.json").read_bytes())
    build_report(copy_dir)  # no run folders, no weights: results.json only
    for name in FIGURES:
        png = f"figures/{name}.png"
        assert (copy_dir / png).read_bytes() == (out / png).read_bytes(), name


def test_the_workers_give_the_numbers_of_one_process(study: tuple[Path, dict[str, Any]]) -> None:
    out, _ = study
    config = _config(out)
    x, y = scan_images(config)
    nets = [create_model(n, in_channels=1, width=0.25).eval() for n in ("plain8", "resnet8")]
    settings = ScanSettings(grid=3, curve=3, ring_points=4)
    one = scan_models(nets, x, y, settings, config)
    two = scan_models(nets, x, y, settings, StudyConfig("landscape", jobs=2, out=str(out)))
    for a, b in zip(one, two, strict=True):
        assert a.pop("scan_time") >= 0 and b.pop("scan_time") >= 0
        assert a == b


def test_a_weights_file_is_measured_without_training(tmp_path: Path) -> None:
    net = create_model("resnet8", in_channels=1, width=0.25, num_classes=10)
    weights = save_weights(net, tmp_path / "w.safetensors")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    results = run_study(_config(tmp_path / "s", weights=str(weights)), log=lambda _: None)
    assert results["runs"] == [] and not (tmp_path / "s" / "runs").exists()
    (entry,) = results[SECTION]["nets"]
    assert entry["label"] == "resnet-8" and entry["source"] == str(weights)
    assert results["verdict"]["text"].startswith("no verdict: it needs a plain and a residual")
    assert all(torch.equal(v, load_model(weights).state_dict()[k]) for k, v in before.items())


# --- the verdict on synthetic numbers -------------------------------------------------------------


def _results(rises: dict[str, list[float | None]], depth: int = 56) -> dict[str, Any]:
    nets = [
        {"family": fam, "depth": depth, "seed": s, "rise": r, "nonconvex": 0.2}
        for fam, values in rises.items()
        for s, r in enumerate(values)
    ]
    return {SECTION: {"settings": {"ring_radius": 0.5}, "nets": nets}}


def test_a_sharper_plain_net_is_named_with_its_numbers() -> None:
    v = landscape_verdict(_results({"plain": [34.0], "residual": [0.5]}), tolerance=0.1)
    assert v["sharper"] is True and v["rise_gap"] == pytest.approx(33.5)
    assert v["rise_gap_noise"] is None
    assert v["text"].startswith("plain-56's loss surface is sharper than resnet-56's")
    assert "34 vs 0.5 nats at radius 0.5" in v["text"] and "seed noise is unknown" in v["text"]


def test_a_gap_inside_twice_the_seed_noise_does_not_count() -> None:
    noisy = _results({"plain": [1.0, 9.0], "residual": [0.5, 0.6]})
    v = landscape_verdict(noisy, tolerance=0.1)  # gap 4.45, noise 2 x 5.66
    assert v["sharper"] is False and "within twice the seed noise" in v["text"]
    assert v["rise_gap_noise"] == pytest.approx(math.hypot(math.sqrt(32), math.sqrt(0.005)))
    clear = landscape_verdict(_results({"plain": [9.0, 9.2], "residual": [0.5, 0.6]}), 0.1)
    assert clear["sharper"] is True and "beyond the tolerance" in clear["text"]
    level = landscape_verdict(_results({"plain": [0.55], "residual": [0.5]}), 0.1)
    assert level["sharper"] is False and "not measurably sharper" in level["text"]


def test_the_deepest_shared_depth_is_compared_and_overflow_is_sharp() -> None:
    both = _results({"plain": [3.0], "residual": [1.0]}, depth=20)
    both[SECTION]["nets"] += _results({"plain": [50.0]}, depth=110)[SECTION]["nets"]
    assert landscape_verdict(both, 0.1)["depth"] == 20  # plain-110 has no twin
    inf = landscape_verdict(_results({"plain": [None], "residual": [1.0]}), 0.1)
    assert inf["sharper"] is True and "overflowed" in inf["text"]
    assert landscape_verdict({}, 0.1)["text"].startswith("no verdict")


# --- the section's schema and the flags -----------------------------------------------------------


def test_a_ragged_surface_is_refused(study: tuple[Path, dict[str, Any]]) -> None:
    _, results = study
    bad = copy.deepcopy(results)
    bad[SECTION]["nets"][0]["loss"][1] = bad[SECTION]["nets"][0]["loss"][1][:-1]
    with pytest.raises(ReslabError, match=r"landscape\.nets\[0\]\.loss\[1\]"):
        validate_results(bad, check=RESULTS)
    bad[SECTION]["nets"][0]["family"] = "dense"
    with pytest.raises(ReslabError, match="family"):
        validate_results(bad, check=RESULTS)


def test_flags_reach_the_scan_and_bad_ones_are_one_line(cli_error: Any, tmp_path: Path) -> None:
    config = StudyConfig("landscape", options={"grid": 7, "ring_radius": 0.25, "direction_seed": 3})
    assert settings_of(config) == ScanSettings(grid=7, ring_radius=0.25, seed=3)
    # A flag that slipped through would start a (cheap) study: none may.
    cheap = ["landscape", "--depths", "8", "--epochs", "1", "--out", str(tmp_path / "no")]
    assert "odd" in cli_error([*cheap, "--grid", "4"])
    assert "--radius must be a positive number" in cli_error([*cheap, "--radius", "wide"])
    assert "--images must be a positive integer" in cli_error([*cheap, "--images", "0"])
    assert "two sources" in cli_error([*cheap, "--from", "a", "--weights", "b"])
    assert not (tmp_path / "no").exists()
