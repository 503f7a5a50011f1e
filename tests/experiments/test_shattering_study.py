"""The shattering study: measured at initialisation, judged from its numbers, drawn from
results.json alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_cifar
from reslab.cli import main
from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study, run_study
from reslab.experiments.shattering import shattering_verdict, summarize
from reslab.measure.shattering import line_inputs, line_shattering, mlp_stack

SMALL = {"mlp_depths": (1, 12), "mlp_width": 64, "line_points": 64, "path_points": 24}
SMALL_OPTIONS = {**SMALL, "max_lag": 6}


def _config(out: Path, **kw: Any) -> StudyConfig:
    settings: dict[str, Any] = {
        "experiment": "shattering",
        "depths": (8, 20),
        "seeds": (0, 1),
        "probe_batch": 32,
        "out": str(out),
        "options": dict(SMALL_OPTIONS),
    }
    return StudyConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("shattering") / "s"
    return out, run_study(_config(out), log=lambda _: None)


def test_every_net_depth_and_seed_is_measured(small: tuple[Path, dict[str, Any]]) -> None:
    out, results = small
    assert not (out / "runs").exists()  # nothing is trained
    section = results["shattering"]
    for kind, depths in (("mlp", [1, 12]), ("cnn", [8, 20])):
        nets = section[kind]["nets"]
        keys = {(n["family"], n["depth"], n["seed"]) for n in nets}
        assert keys == {(f, d, s) for f in ("plain", "residual") for d in depths for s in (0, 1)}
        for net in nets:
            assert len(net["correlation"]) == 7 and net["correlation"][0] == pytest.approx(1.0)
            assert net["lag1"] == net["correlation"][1]
            assert ("gradients" in net) == (net["seed"] == 0)  # one seed's sequences are kept
    assert len(section["mlp"]["positions"]) == 64 and len(section["cnn"]["positions"]) == 24
    models = {n["model"] for n in section["cnn"]["nets"]}
    assert models == {"plain8", "resnet8", "plain20", "resnet20"}


def test_the_mlp_numbers_are_the_measurement_itself(small: tuple[Path, dict[str, Any]]) -> None:
    _, results = small
    (net,) = [
        n
        for n in results["shattering"]["mlp"]["nets"]
        if (n["family"], n["depth"], n["seed"]) == ("plain", 12, 1)
    ]
    plain12 = mlp_stack(12, width=64, plain=True, seed=1).double()
    again = line_shattering(plain12, line_inputs(64).double(), max_lag=6)
    np.testing.assert_allclose(net["correlation"], again.correlation, rtol=1e-12)


def test_summary_is_mean_and_sample_std_over_seeds(small: tuple[Path, dict[str, Any]]) -> None:
    _, results = small
    section = results["shattering"]
    assert section["summary"] == summarize(section)
    (row,) = [r for r in section["summary"] if (r["kind"], r["label"]) == ("cnn", "plain-20")]
    lag1 = [n["lag1"] for n in section["cnn"]["nets"] if n["label"] == "plain-20"]
    assert row["n_seeds"] == 2
    assert row["lag1_mean"] == pytest.approx(np.mean(lag1))
    assert row["lag1_std"] == pytest.approx(np.std(lag1, ddof=1))


def test_results_and_report_rebuild_from_results_json_alone(
    small: tuple[Path, dict[str, Any]],
) -> None:
    out, results = small
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "shattering" and saved["config"]["mlp_depths"] == [1, 12]
    assert saved["verdict"] == results["verdict"]
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == {spec.name for spec in get_study("shattering").look().figures}
    html = (out / "report.html").read_text()
    assert '<section id="shattering">' in html and "lag-1 correlation" in html
    (out / "report.html").unlink()
    before = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == html
    assert {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")} == before


def test_a_broken_section_is_refused_in_one_line(
    small: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = small
    saved = json.loads((out / "results.json").read_text())
    saved["shattering"]["cnn"]["nets"][0]["correlation"] = "smooth"
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert main(["report", str(tmp_path)]) == 2
    assert "shattering.cnn.nets[0].correlation must be a list of numbers" in capsys.readouterr().err


# --- the verdict ---------------------------------------------------------------------------------


def _row(kind: str, family: str, depth: int, mean: float, std: float, n: int = 3) -> dict:
    label = f"{'plain' if family == 'plain' else 'resnet'}-{depth}"
    return {"kind": kind, "family": family, "depth": depth, "label": label, "n_seeds": n,
            "lag1_mean": mean, "lag1_std": std, "correlation_mean": [1.0, mean]}  # fmt: skip


def _summary(plain_deep: float, std: float, n: int = 3) -> list[dict[str, Any]]:
    rows = []
    for kind in ("mlp", "cnn"):
        rows += [
            _row(kind, "plain", 2, 0.95, std, n),
            _row(kind, "plain", 50, plain_deep, std, n),
            _row(kind, "residual", 2, 0.95, std, n),
            _row(kind, "residual", 50, 0.80, std, n),
        ]
    return rows


def test_verdict_plain_falls_faster_with_the_numbers() -> None:
    v = shattering_verdict(_summary(0.05, 0.02), tolerance=0.05)
    assert v["mlp_plain_falls_faster"] is True and v["cnn_plain_falls_faster"] is True
    assert v["mlp_plain_drop"] == pytest.approx(0.90) and v["mlp_residual_drop"] == 0.15
    assert v["mlp_drop_gap"] == pytest.approx(0.75)
    assert v["mlp_drop_gap_noise"] == pytest.approx(0.04)  # four stds of 0.02 in quadrature
    assert v["mlp_plain_slope"] == pytest.approx(-0.90 / 48)
    assert (
        "falls faster with depth in plain nets than in residual nets: plain drops 0.90 "
        in (v["text"])
    )
    assert (
        "(plain-2 0.95 → plain-50 0.05), residual 0.15 (resnet-2 0.95 → resnet-50 0.80)"
        in (v["text"])
    )
    assert "beyond the tolerance (0.05) and twice the seed noise (0.08)" in v["text"]


def test_verdict_a_difference_inside_the_seed_noise_does_not_count() -> None:
    v = shattering_verdict(_summary(0.05, 0.2), tolerance=0.05)  # 2·√(4·0.2²) = 0.8 > 0.75
    assert v["mlp_plain_falls_faster"] is False
    assert "does not fall measurably faster" in v["text"]
    assert "within twice the seed noise (0.80)" in v["text"]
    small = shattering_verdict(_summary(0.78, 0.0), tolerance=0.05)  # 0.02 < tolerance
    assert small["cnn_plain_falls_faster"] is False
    assert "within the tolerance (0.05)" in small["text"]


def test_verdict_with_one_seed_says_the_noise_is_unknown() -> None:
    v = shattering_verdict(_summary(0.05, 0.0, n=1), tolerance=0.05)
    assert v["mlp_plain_falls_faster"] is True
    assert "one seed, so the seed noise is unknown" in v["text"]
    assert v["mlp_drop_gap_noise"] is None


def test_verdict_needs_two_depths() -> None:
    rows = [r for r in _summary(0.05, 0.0) if r["depth"] == 2]
    v = shattering_verdict(rows, tolerance=0.05)
    assert v["text"].startswith("mlp: no verdict")


# --- settings, the command, other datasets --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mlp_depths": (0, 5)}, "--mlp-depths"),
        ({"mlp_norm": "group"}, "--mlp-norm"),
        ({"max_lag": 40, "path_points": 32}, "--path-points must be at least --max-lag"),
        ({"max_lag": 0}, "--max-lag"),
    ],
)
def test_settings_it_cannot_use_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig(experiment="shattering", options=options)


def test_the_command_parses_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[StudyConfig] = []
    monkeypatch.setattr("reslab.experiments.run_study", seen.append)
    argv = ["shattering", "--mlp-depths", "3,30", "--mlp-norm", "layer", "--max-lag", "5"]
    assert main(argv) == 0
    (config,) = seen
    assert config.options["mlp_depths"] == (3, 30) and config.options["mlp_norm"] == "layer"
    assert config.depths == (8, 20, 32, 56, 110) and config.seeds == (0, 1, 2)
    assert main(["shattering"]) == 0
    defaults = {
        "mlp_depths": (1, 2, 5, 10, 20, 50), "mlp_width": 200, "mlp_norm": "batch",
        "line_points": 256, "path_points": 128, "max_lag": 32, "corr_tolerance": 0.05,
    }  # fmt: skip
    assert {k: seen[1].options[k] for k in defaults} == defaults
    assert StudyConfig(experiment="shattering").options == seen[1].options


def test_works_on_cifar10_files(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", "bin")  # 3×32×32 images, as CIFAR-10's
    config = _config(
        tmp_path / "c",
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        depths=(8,),
        seeds=(0,),
        options={**SMALL_OPTIONS, "mlp_depths": (1, 2)},
    )
    results = run_study(config, log=lambda _: None)
    nets = results["shattering"]["cnn"]["nets"]
    assert {n["model"] for n in nets} == {"plain8", "resnet8"}
    assert all(len(n["gradients"]) == 24 for n in nets)
    assert "one seed, so the seed noise is unknown" in results["verdict"]["text"]
