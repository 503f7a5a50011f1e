"""run_study end to end: a shortened study trains, resumes for free, records divergence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reslab import cpu
from reslab.cli import main
from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study, pool, run_study
from reslab.experiments.runner import train_config
from reslab.train import TrainConfig


@pytest.fixture(scope="module")
def study(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[StudyConfig, dict[str, Any], list[str]]:
    out = tmp_path_factory.mktemp("runner") / "s"
    config = StudyConfig(depths=(8, 14), seeds=(0,), epochs=2, width=0.25, jobs=1, out=str(out))
    lines: list[str] = []
    return config, run_study(config, log=lines.append), lines


def test_shortened_study_end_to_end(study: tuple[StudyConfig, dict[str, Any], list[str]]) -> None:
    config, results, lines = study
    out = Path(config.out)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["experiment"] == "degradation"
    assert saved["title"] == "Degradation: plain vs residual networks on digits"
    assert sorted(r["name"] for r in saved["runs"]) == [
        "plain14-s0", "plain8-s0", "resnet14-s0", "resnet8-s0"
    ]  # fmt: skip
    for run in saved["runs"]:
        assert len(run["curves"]["clean_train_error"]) == 2
        assert 0.0 <= run["final_clean_train_error"] <= 100.0
    progress = [line.split()[0] for line in lines if line.startswith("[")]
    assert progress == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]  # one line per run
    assert saved["verdict"]["text"] in lines and lines[-1] == f"report: {out / 'report.html'}"
    assert {p["when"] for p in saved["probes"]["gradient_flow"]} == {"init", "trained"}
    assert list(saved["probes"]) == [
        "gradient_flow",
        "residual_magnitude",
        "layer_responses",
        "signal_propagation",
    ]
    html = (out / "report.html").read_text()
    assert saved["verdict"]["text"] in html
    assert {p.stem for p in (out / "figures").glob("*.png")} == {
        "error_curves", "error_vs_depth", "gradient_norm", "residual_ratio", "layer_responses",
        "signal_propagation",
    }  # fmt: skip


def test_a_rerun_trains_nothing(study: tuple[StudyConfig, dict[str, Any], list[str]]) -> None:
    config, results, _ = study
    stamps = {p: p.stat().st_mtime_ns for p in Path(config.out).glob("runs/*/result.json")}
    again = run_study(config, log=lambda _: None)
    assert stamps == {p: p.stat().st_mtime_ns for p in Path(config.out).glob("runs/*/result.json")}
    assert again["runs"] == results["runs"] and again["verdict"] == results["verdict"]


def test_report_aggregates_run_folders(
    study: tuple[StudyConfig, dict[str, Any], list[str]], tmp_path: Path
) -> None:
    config, results, _ = study
    shutil.copytree(Path(config.out) / "runs", tmp_path / "s" / "runs")
    assert main(["report", str(tmp_path / "s")]) == 0
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["title"] == f"Degradation study aggregated from {tmp_path / 's'}"
    # The folders alone give the study's own runs, summary and verdict.
    by_name = sorted(json.loads(json.dumps(results["runs"])), key=lambda r: r["name"])
    assert saved["runs"] == by_name  # in folder order
    assert saved["summary"] == json.loads(json.dumps(results["summary"]))
    assert saved["verdict"] == results["verdict"]
    assert (tmp_path / "s" / "report.html").is_file()


def test_diverged_runs_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    config = StudyConfig(
        depths=(8, 14), seeds=(0,), epochs=1, width=0.25, lr=1e30, jobs=1, out=str(tmp_path / "d")
    )
    lines: list[str] = []
    results = run_study(config, log=lines.append)
    assert {r["status"] for r in results["runs"]} == {"diverged"}
    assert all(r["final_clean_train_error"] is None for r in results["runs"])
    assert results["verdict"]["text"].startswith("no verdict:")
    assert sum(line.endswith(" diverged") for line in lines) == 4
    assert (tmp_path / "d" / "report.html").is_file()
    result = json.loads((tmp_path / "d" / "runs" / "plain8-s0" / "result.json").read_text())
    assert result["status"] == "diverged" and result["message"]
    # A rerun reads the recorded outcome instead of diverging again.
    assert run_study(config, log=lambda _: None)["verdict"] == results["verdict"]


def test_the_trainer_gets_the_study_settings(tmp_path: Path) -> None:
    config = StudyConfig(
        experiment="gradients", depths=(8,), seeds=(3,), epochs=2, lr=0.05, width=0.5,
        probe_steps=(5, 0), out=str(tmp_path),
    )  # fmt: skip
    spec = get_study("gradients").plan(config)[0]
    train = train_config(config, spec, threads=1)
    assert (train.model, train.seed, train.epochs, train.lr, train.width) == (
        spec.model, 3, 2, 0.05, 0.5
    )  # fmt: skip
    assert list(train.snapshot_steps) == [0, 5]  # sorted, as the trainer requires:
    with pytest.raises(ConfigError, match="snapshot_steps"):
        TrainConfig(snapshot_steps=[10, 5])
    assert train.out == str(tmp_path / "runs" / spec.name)
    degradation = StudyConfig(depths=(8, 14), out=str(tmp_path))
    plain = train_config(degradation, get_study("degradation").plan(degradation)[0], None)
    assert list(plain.snapshot_steps or []) == [0]  # init weights kept for gradient flow


def test_bad_settings_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = StudyConfig(depths=(8, 14), dataset="nope", out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        run_study(config, log=lambda _: None)
    assert not (tmp_path / "x").exists()


def test_fewer_jobs_than_cores_leave_cores_busy_elsewhere_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs 1 on a busy machine: the worker's threads are cut as a single run's are."""
    share = len(cpu.available_cores())
    if share < 2:
        pytest.skip("needs two usable cores")
    monkeypatch.setattr(cpu, "busy_cores", lambda cores, window=0.2: len(cores) - 1.0)
    out = tmp_path / "s"
    config = StudyConfig(
        depths=(8, 14), families=("residual",), seeds=(0,), steps=2, batch_size=16,
        width=0.25, jobs=1, out=str(out),
    )  # fmt: skip
    lines: list[str] = []
    run_study(config, log=lines.append)
    assert f"1 thread(s) per run, not {share}: other processes keep cores busy" in lines
    assert json.loads((out / "runs" / "resnet8-s0" / "config.json").read_text())["threads"] == 1


def test_a_ray_study_leaves_the_load_unsampled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Ray task trains on one thread whatever the driver's machine is doing."""

    def never(cores: list[int], window: float = 0.2) -> float:
        raise AssertionError("sampled the load for a Ray study")

    monkeypatch.setattr(cpu, "busy_cores", never)
    config = StudyConfig(
        depths=(8, 14), seeds=(0,), jobs=1, device="cpu", cluster="ray", out=str(tmp_path / "s")
    )
    workers = pool.workers_for(config.device, config.jobs, 4, print, config.cluster)
    assert workers == pool.Workers(1, "cpu", threads=1)
