"""Where a study's trained nets come from: its own runs, --from STUDY_DIR, --weights FILE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from reslab.errors import ConfigError
from reslab.experiments import StudyConfig
from reslab.experiments.trained import check_sources, own_runs, trained_nets
from reslab.models import create_model
from reslab.report.schema import new_results, write_results
from reslab.train import RunFolder
from reslab.weights import save_weights


def _config(tmp_path: Path, **options: Any) -> StudyConfig:
    return StudyConfig(depths=(8, 14), seeds=(0,), out=str(tmp_path / "study"), options=options)


def _net(name: str) -> torch.nn.Module:
    return create_model(name, num_classes=10, in_channels=1, width=0.25)


def _study(root: Path, dataset: str = "digits") -> Path:
    """A finished study folder: results.json and one run folder per net, as run_study leaves."""
    runs = []
    for name, family, depth in (("plain8-s0", "plain", 8), ("resnet8-s0", "residual", 8)):
        folder = RunFolder(root / "runs" / name)
        save_weights(_net(name.split("-")[0]), folder.weights_path)
        runs.append({"name": name, "family": family, "depth": depth, "seed": 0})
    runs.append({"name": "plain14-s0", "family": "plain", "depth": 14, "seed": 0})  # diverged
    results = new_results("degradation", "t", {"dataset": dataset})
    results["runs"] = runs
    write_results(root, results)
    return root


def test_the_flags_name_one_source_or_are_refused(tmp_path: Path) -> None:
    weights = save_weights(_net("resnet8"), tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="two sources"):
        check_sources(_config(tmp_path, from_dir=str(tmp_path), weights=str(weights)))
    with pytest.raises(ConfigError, match="add --weights FILE"):
        check_sources(_config(tmp_path, model="resnet8"))
    with pytest.raises(ConfigError, match=r"no results\.json there"):
        check_sources(_config(tmp_path, from_dir=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="no such file"):
        check_sources(_config(tmp_path, weights=str(tmp_path / "missing.safetensors")))
    check_sources(_config(tmp_path, weights=str(weights)))  # one source: fine


def test_an_outside_source_plans_no_training(tmp_path: Path) -> None:
    planned = own_runs(lambda config: ["a run"])  # type: ignore[arg-type, return-value]
    assert planned(_config(tmp_path)) == ["a run"]
    assert planned(_config(tmp_path, from_dir=str(tmp_path))) == []
    assert planned(_config(tmp_path, weights="w.safetensors")) == []


def test_nets_from_a_weights_file_and_from_a_finished_study(tmp_path: Path) -> None:
    net = _net("plain8")
    weights = save_weights(net, tmp_path / "w.safetensors")
    (one,) = trained_nets(_config(tmp_path, weights=str(weights)), [])
    assert (one.label, one.family, one.depth, one.seed) == ("plain-8", "plain", 8, None)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(one.model(x), net.eval()(x)) and not one.model.training

    study = _study(tmp_path / "deg")
    nets = trained_nets(_config(tmp_path, from_dir=str(study)), [])
    assert [(n.label, n.family) for n in nets] == [("plain-8", "plain"), ("resnet-8", "residual")]
    with pytest.raises(ConfigError, match="trained its nets on digits; pass --dataset digits"):
        trained_nets(
            StudyConfig(depths=(8, 14), dataset="mnist", options={"from_dir": str(study)}), []
        )


def test_nets_from_the_studys_own_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    save_weights(_net("resnet8"), RunFolder(Path(config.out) / "runs" / "resnet8-s0").weights_path)
    records = [{"name": "resnet8-s0", "family": "residual", "depth": 8, "seed": 0}]
    (net,) = trained_nets(config, records)
    assert net.source.endswith("resnet8-s0") and net.label == "resnet-8"
    with pytest.raises(ConfigError, match="no trained nets to measure"):
        trained_nets(config, [{"name": "gone", "family": "plain", "depth": 8, "seed": 0}])


# --- each net's input normalisation (issue 10) ---------------------------------------------------


def test_each_net_brings_the_normalisation_it_was_trained_with(tmp_path: Path) -> None:
    from reslab.data import load_dataset
    from reslab.experiments.lesion import _test_data
    from reslab.weights import Normalization

    digits = load_dataset("digits")
    # --weights: the file's header, or --normalize, which wins; a bare state_dict: the dataset's.
    recorded = Normalization.of("digits-holdout", [0.3], [0.35])
    weights = save_weights(_net("resnet8"), tmp_path / "w.safetensors", normalization=recorded)
    (net,) = trained_nets(_config(tmp_path, weights=str(weights)), [])
    assert net.normalization == recorded
    (net,) = trained_nets(_config(tmp_path, weights=str(weights), normalize="0.5,0.25"), [])
    assert (net.normalization.name, net.normalization.mean) == ("custom", (0.5,))
    full = create_model("resnet8", num_classes=10, in_channels=1)  # --model builds full width
    torch.save(full.state_dict(), tmp_path / "bare.pth")
    (bare,) = trained_nets(
        _config(tmp_path, weights=str(tmp_path / "bare.pth"), model="resnet8"), []
    )
    assert (bare.normalization.mean, bare.normalization.std) == (digits.mean, digits.std)
    with pytest.raises(ConfigError, match="--normalize sets the inputs of a --weights file"):
        check_sources(_config(tmp_path, normalize="imagenet"))
    with pytest.raises(ConfigError, match="3 channels"):  # digits has one
        check_sources(_config(tmp_path, weights=str(weights), normalize="imagenet"))
    # --from: every run's own header; older files without one get the dataset's statistics.
    study = _study(tmp_path / "deg")
    save_weights(_net("plain8"), RunFolder(study / "runs" / "plain8-s0").weights_path,
                 normalization=recorded)  # fmt: skip
    plain, res = trained_nets(_config(tmp_path, from_dir=str(study)), [])
    assert plain.normalization == recorded and res.normalization.mean == digits.mean
    assert plain.model.reslab_normalization == recorded  # on the model too, for workers
    # A study that scans all its nets on one batch refuses nets that expect different inputs...
    with pytest.raises(ConfigError, match="differently normalised inputs"):
        trained_nets(_config(tmp_path, from_dir=str(study)), [], shared_inputs=True)
    # ... and lesion normalises each net's test images its own way.
    config = _config(tmp_path, eval_images=4)
    x, _, _ = _test_data(config, torch.device("cpu"), plain.model)
    torch.testing.assert_close(x, (digits.test_images[:4].float() / 255 - 0.3) / 0.35)
    x, _, _ = _test_data(config, torch.device("cpu"), res.model)
    want = (digits.test_images[:4].float() / 255 - digits.mean[0]) / digits.std[0]
    torch.testing.assert_close(x, want)
