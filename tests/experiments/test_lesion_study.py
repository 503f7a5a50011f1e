"""The lesion study: zeroed branches change nothing, the verdict follows the one rule on hand
numbers, results.json is checked, and the report rebuilds from results.json alone."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import write_cifar
from reslab.checks import Invalid
from reslab.errors import ConfigError, ReslabError
from reslab.experiments import StudyConfig, build_report, run_study
from reslab.experiments import lesion as lesion_study
from reslab.experiments.lesion import STUDY, lesion_verdict
from reslab.experiments.lesion_views import RESULTS
from reslab.experiments.runner import resolved_precision
from reslab.measure.lesion import lesion_net, top1_error
from reslab.models import create_model
from reslab.report.schema import load_results, new_results, write_results
from reslab.train import RunFolder, runtime
from reslab.train.runtime import PrecisionChoice
from reslab.weights import save_weights


def _net(name: str, seed: int, **options: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_channels=1, width=0.25, **options).eval()


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_top1_error_counts_wrong_predictions() -> None:
    x, y = _data(10)
    net = _net("resnet8", 0)
    predicted = net(x).argmax(1)
    y = predicted.clone()
    y[:3] = (y[:3] + 1) % 10
    assert top1_error(x, y, batch_size=4)(net) == pytest.approx(30.0)


def test_a_net_whose_branches_are_zero_loses_nothing_to_any_lesion() -> None:
    """Zero-init residual: every branch's last BN scale and shift are 0, so F ≡ 0 everywhere."""
    net = _net("resnet14", 0, zero_init_residual=True)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
            assert not m.bias.any()
    x, y = _data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = lesion_net(net, top1_error(x, y), x[:1], draws=3)
    intact = out["intact_error"]
    assert out["deleted_error"] == [intact] * 6
    assert out["shape_preserving"] == [True, True, False, True, False, True]
    for curve in ("deleted", "swapped"):
        assert out[curve] and all(row["errors"] == [intact] * 3 for row in out[curve])
    assert [row["k"] for row in out["deleted"]] == [1, 2, 3, 4]
    assert [row["k"] for row in out["swapped"]] == [1]  # one pair: layer1.0, layer1.1
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# --- the verdict on hand numbers -------------------------------------------------------------


def _entry(family: str, seed: int, intact: float, deleted: list[float | None]) -> dict[str, Any]:
    return {
        "label": f"{'plain' if family == 'plain' else 'resnet'}-14",
        "family": family,
        "depth": 14,
        "shortcut": None if family == "plain" else "A",
        "seed": seed,
        "intact_error": intact,
        "block": [f"layer{i // 2 + 1}.{i % 2}" for i in range(6)],
        "stage": [0, 0, 1, 1, 2, 2],
        "shape_preserving": [True, True, False, True, False, True],
        "deleted_error": deleted,
        "deleted": [{"k": 1, "errors": [d for d in deleted if d is not None][:2]}],
        "swapped": [{"k": 1, "errors": [intact + 1]}],
    }


def _results(nets: list[dict[str, Any]]) -> dict[str, Any]:
    results = new_results("lesion", "t", {})
    results["lesion"] = {"chance_error": 90.0, "draws": 1, "images": 10, "nets": nets}
    return results


def test_the_verdict_compares_the_increase_per_shape_preserving_block() -> None:
    # Residual: intact 2, shape-preserving deletions 3, 4, 5, 4 -> +2.0 (the 40 and 60 of the
    # shape-changing blocks are left out); seed 1 gives +3.0. Plain: 89 for every block -> +84
    # and +83; its mean deleted error 89 is 1 point short of chance, within the tolerance 1.
    nets = [
        _entry("residual", 0, 2.0, [3.0, 4.0, 40.0, 5.0, 60.0, 4.0]),
        _entry("residual", 1, 2.0, [4.0, 5.0, 40.0, 6.0, 60.0, 5.0]),
        _entry("plain", 0, 5.0, [89.0, 89.0, None, 89.0, None, 89.0]),
        _entry("plain", 1, 6.0, [89.0, 89.0, None, 89.0, None, 89.0]),
    ]
    verdict = lesion_verdict(_results(nets), tolerance=1.0)
    assert verdict["residual_increase"] == pytest.approx(2.5)
    assert verdict["plain_increase"] == pytest.approx(83.5)
    assert verdict["increase_gap"] == pytest.approx(81.0)
    assert verdict["increase_gap_noise"] == pytest.approx((0.5 + 0.5) ** 0.5)  # stds √0.5 each
    assert verdict["residual_loses_less"] is True
    assert verdict["plain_deleted_error"] == pytest.approx(89.0)
    assert verdict["plain_at_chance"] is True
    assert verdict["text"].startswith(
        "deleting one shape-preserving block costs resnet-14 far less than plain-14: +2.5 vs "
        "+83.5 points of test error on average (intact 2.0 % vs 5.5 %), a gap of 81.0 points"
    )
    assert (
        "plain-14 falls to chance with one block deleted: 89.0 % vs 90 % chance"
        in (verdict["text"])
    )


def test_one_seed_says_the_noise_is_unknown_and_a_small_gap_does_not_count() -> None:
    nets = [
        _entry("residual", 0, 2.0, [3.0, 3.0, 40.0, 3.0, 60.0, 3.0]),
        _entry("plain", 0, 2.0, [3.5, 3.5, None, 3.5, None, 3.5]),
    ]
    verdict = lesion_verdict(_results(nets), tolerance=1.0)
    assert verdict["residual_loses_less"] is False and verdict["plain_at_chance"] is False
    assert verdict["increase_gap_noise"] is None
    assert "not clearly less than" in verdict["text"]
    assert "does not fall all the way to chance" in verdict["text"]
    assert "one seed, so the seed noise is unknown" in verdict["text"]
    with pytest.raises(ReslabError, match="needs a plain and a residual net"):
        lesion_verdict(_results(nets[:1]), tolerance=1.0)


# --- results.json and the config ---------------------------------------------------------------


def test_the_section_check_names_the_first_problem() -> None:
    good = _results([_entry("residual", 0, 2.0, [3.0] * 6)])
    RESULTS.check(good, "")
    cases = [
        (lambda n: n.update(deleted_error=[1.0]), r"deleted_error must have one entry per block"),
        (lambda n: n.update(stage=["a"] * 6), r"stage must be a list of integers"),
        (lambda n: n["deleted"][0].update(k=0), r"deleted\[0\]\.k must be a positive integer"),
        (lambda n: n["swapped"][0].update(errors="x"), r"swapped\[0\]\.errors must be a list"),
        (lambda n: n.update(family="vgg"), r"nets\[0\]\.family must be 'plain' or 'residual'"),
    ]
    for spoil, message in cases:
        bad = copy.deepcopy(good)
        spoil(bad["lesion"]["nets"][0])
        with pytest.raises(Invalid, match=message):
            RESULTS.check(bad, "")


def test_the_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="nets of one depth"):
        StudyConfig(experiment="lesion", depths=(20, 32))
    with pytest.raises(ConfigError, match="--draws must be a positive integer"):
        StudyConfig(experiment="lesion", depths=(20,), options={"draws": 0})
    assert STUDY.depths == (32,) and STUDY.seeds == (0, 1)
    # One --precision, the common one (the trainer's and the lesion passes'), one validator.
    assert "precision" in STUDY.takes and "precision" not in {f.name for f in STUDY.flags}
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16"):
        StudyConfig(experiment="lesion", depths=(20,), precision="fp16")


def test_the_lesion_passes_run_in_the_studys_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto is the trainer's rule (here made to say bf16), resolved once: the passes run in it,
    results.json records it, and the banner says it once."""
    why = "bf16 (auto: amx_bf16 on this CPU, 2.6x fp32 in a conv probe)"
    monkeypatch.setattr(runtime, "choose_cpu_precision", lambda: PrecisionChoice(True, why))
    weights = save_weights(_net("resnet14", 0), tmp_path / "w.safetensors")
    asked = []
    real = lesion_study.lesion.top1_error
    monkeypatch.setattr(
        lesion_study.lesion,
        "top1_error",
        lambda x, y, precision: asked.append(precision) or real(x, y, precision=precision),
    )
    config = StudyConfig(
        experiment="lesion",
        depths=(14,),
        seeds=(0,),
        device="cpu",
        jobs=1,
        out=str(tmp_path / "lesion"),
        options={"weights": str(weights), "draws": 1, "ks": (1,), "eval_images": 8},
    )
    assert resolved_precision(config) == ("bf16", why)
    results = run_study(config, log=print)
    assert asked == ["bf16"] and results["lesion"]["precision"] == "bf16"
    assert results["config"]["precision"] == "auto"
    out = capsys.readouterr().out
    assert "lesion: 1 net, each BN after a convolution folded into it\n" in out
    assert out.count("precision: ") == 1 and f"precision: {why}\n" in out


# --- end to end, on nets another study trained ---------------------------------------------------


def _finished_study(root: Path) -> Path:
    runs = []
    for family, name in (("plain", "plain14"), ("residual", "resnet14")):
        for seed in (0, 1):
            folder = RunFolder(root / "runs" / f"{name}-s{seed}")
            save_weights(_net(name, seed), folder.weights_path)
            runs.append({"name": f"{name}-s{seed}", "family": family, "depth": 14, "seed": seed})
    results = new_results("degradation", "t", {"dataset": "digits"})
    results["runs"] = runs
    write_results(root, results)
    return root


def test_a_study_from_another_studys_nets_and_its_report(tmp_path: Path) -> None:
    source = _finished_study(tmp_path / "deg")
    out = tmp_path / "lesion"
    config = StudyConfig(
        experiment="lesion",
        depths=(14,),
        seeds=(0,),
        device="cpu",
        out=str(out),
        options={"from_dir": str(source), "draws": 2, "ks": (1, 2, 9), "eval_images": 40},
    )
    results = run_study(config, log=lambda line: None)
    section = results["lesion"]
    assert section["chance_error"] == pytest.approx(90.0) and section["images"] == 40
    assert results["config"]["precision"] == "auto"
    assert section["precision"] in ("fp32", "bf16")  # what auto chose on this machine
    assert [(n["label"], n["seed"]) for n in section["nets"]] == [
        ("plain-14", 0),
        ("plain-14", 1),
        ("resnet-14", 0),
        ("resnet-14", 1),
    ]
    plain, residual = section["nets"][0], section["nets"][2]
    assert plain["deleted_error"][2] is None and plain["deleted_error"][4] is None
    assert all(e is not None for e in residual["deleted_error"])
    assert [row["k"] for row in residual["deleted"]] == [1, 2]  # 9 > the 4 deletable blocks
    # The source study's nets never left chance: lesioning them says nothing, and the verdict
    # says so (the lesion verdict itself is tested on numbers above).
    assert results["verdict"]["text"].startswith("inconclusive: plain-14")
    assert "intact test error" in results["verdict"]["text"]
    assert "runs" not in results  # nothing was trained
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["lesion_per_block.png", "lesion_vs_k.png"]
    page = (out / "report.html").read_text()
    assert "Lesions" in page and "increase per block" in page
    first = (out / "figures" / "lesion_vs_k.png").read_bytes()
    # From results.json alone, one written before the study had a precision (an old folder).
    old = load_results(out)
    del old["lesion"]["precision"], old["config"]["precision"]
    write_results(out, old)
    (out / "report.html").unlink()
    build_report(out)
    assert (out / "figures" / "lesion_vs_k.png").read_bytes() == first
    assert load_results(out)["lesion"] == {k: v for k, v in section.items() if k != "precision"}


@pytest.mark.slow
def test_cifar10_trains_and_lesions_three_channel_nets(tmp_path: Path) -> None:
    """``--dataset cifar10`` end to end, on a small CIFAR-10 tree in the official layout."""
    write_cifar(tmp_path / "data", "cifar10", "py", n=20)
    config = StudyConfig(
        experiment="lesion",
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        depths=(8,),
        seeds=(0,),
        epochs=1,
        batch_size=50,
        width=0.25,
        jobs=1,
        device="cpu",
        out=str(tmp_path / "lesion"),
        options={"draws": 1},
    )
    results = run_study(config, log=lambda line: None)
    nets = results["lesion"]["nets"]
    assert [n["label"] for n in nets] == ["plain-8", "resnet-8"]
    assert nets[1]["block"] == ["layer1.0", "layer2.0", "layer3.0"]
    assert nets[0]["deleted_error"][1:] == [None, None]  # plain, shape-changing
    assert results["lesion"]["images"] == 20 and len(results["runs"]) == 2
    # One epoch on 100 tiny random images: the nets stay at chance, and the verdict says so.
    assert results["verdict"]["inconclusive"] is True


def test_one_weights_file_is_lesioned_and_the_verdict_says_what_is_missing(
    tmp_path: Path,
) -> None:
    weights = save_weights(_net("resnet14", 0), tmp_path / "w.safetensors")
    config = StudyConfig(
        experiment="lesion",
        depths=(14,),
        seeds=(0,),
        device="cpu",
        out=str(tmp_path / "lesion"),
        options={"weights": str(weights), "draws": 1, "ks": (1,), "eval_images": 20},
    )
    results = run_study(config, log=lambda line: None)
    (net,) = results["lesion"]["nets"]
    assert (net["label"], net["seed"], net["source"]) == ("resnet-14", None, str(weights))
    assert results["verdict"] == {
        "text": "no verdict: the lesion verdict needs a plain and a residual net of one depth"
    }
    assert (tmp_path / "lesion" / "figures" / "lesion_per_block.png").is_file()
