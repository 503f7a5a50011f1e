"""The ablation study (He et al. 2016, arXiv:1603.05027): its plan, verdict, tables and a run.

The variants themselves are checked against their formulas in tests/models/test_variants.py;
here, that every planned run trains the net its variant names, that the verdict follows the
one rule of verdicts.py, and that a shortened study writes a results.json the report rebuilds.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import write_cifar
from reslab.blocks import GatedAdd, ScaledAdd
from reslab.checks import Invalid
from reslab.cli import main
from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study, run_study
from reslab.experiments.ablation import (
    DEFAULT_VARIANTS,
    VARIANTS,
    ablation_verdict,
)
from reslab.experiments.ablation_views import RESULTS, console_table
from reslab.experiments.runner import train_config
from reslab.train.session import build_model


def _config(**kw: Any) -> StudyConfig:
    return StudyConfig(experiment="ablation", depths=kw.pop("depths", (56,)), seeds=(0,), **kw)


def test_default_plan_is_both_tables_at_depth_56_on_a_short_digits_budget() -> None:
    assert get_study("ablation").depths == (56,) and get_study("ablation").seeds == (0,)
    specs = get_study("ablation").plan(_config())
    assert [s.name.split("-")[1] for s in specs] == list(DEFAULT_VARIANTS)
    assert {1, 2} <= {t for k in DEFAULT_VARIANTS for t in VARIANTS[k].tables}
    assert len(DEFAULT_VARIANTS) == 10 and set(VARIANTS) - set(DEFAULT_VARIANTS) == {
        "plain",
        "frozen_gate",
    }
    assert all(s.model == "resnet56" and s.overrides["epochs"] == 4 for s in specs)
    # One shortcut option for all (the paper's A), except the 1×1-conv row, which is C.
    assert {s.name: s.shortcut for s in specs if s.shortcut != "A"} == {"resnet56-conv-s0": "C"}
    cifar = get_study("ablation").plan(_config(dataset="cifar10", depths=(110,)))
    assert all("epochs" not in s.overrides for s in cifar)  # the recipe's budget there


@pytest.mark.parametrize("key", list(VARIANTS))
def test_every_planned_run_trains_its_variant(key: str, tmp_path: Path) -> None:
    config = _config(depths=(8,), out=str(tmp_path), options={"ablation_variants": (key,)})
    (spec,) = get_study("ablation").plan(config)
    train = train_config(config, spec, None)
    fake = SimpleNamespace(
        num_classes=10, in_channels=1, enabled=False, channels_last=False, world_size=1,
        train_images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8),  # the memory budget's shape
    )  # fmt: skip
    net = build_model(train, fake, fake, torch.device("cpu"), fake)  # type: ignore[arg-type]
    options = VARIANTS[key].options
    for option, value in options.items():
        assert getattr(train, option) == value
    assert net.reslab_config == {  # type: ignore[operator]
        "name": spec.model, "num_classes": 10, "in_channels": 1,
        "shortcut": "C" if key == "conv" else "A", **options,
    }  # fmt: skip
    joins = {type(b.join) for b in net.blocks()}  # type: ignore[operator]
    if key in ("scale", "frozen_gate"):
        assert joins == {ScaledAdd}
    if key.endswith("_gate") and key != "frozen_gate":
        assert joins == {GatedAdd}
    assert net.plain == (key == "plain")  # type: ignore[comparison-overlap]


def test_bad_configs_are_one_line_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"one depth, got depths 20,56: give one, e\.g\. --depth 56"
    ):
        _config(depths=(20, 56))
    with pytest.raises(ConfigError, match="unknown variant 'gating': choose from identity"):
        _config(options={"ablation_variants": ("identity", "gating")})


def _row(key: str, train: float, test: float, std: float | None = None) -> dict[str, Any]:
    v = VARIANTS[key]
    n = 1 if std is None else 3
    return {
        "family": "plain" if key == "plain" else "residual", "depth": 56, "shortcut": "A",
        "label": v.label, "n_seeds": n, "variant": key, "tables": list(v.tables),
        "clean_train_error_mean": train, "clean_train_error_std": std or 0.0,
        "test_error_mean": test, "test_error_std": std or 0.0,
    }  # fmt: skip


def test_verdict_one_seed_judges_by_the_tolerance_and_says_the_noise_is_unknown() -> None:
    summary = [
        _row("identity", 6.2, 9.7),
        _row("scale", 88.3, 88.6),
        _row("shortcut_gate", 6.9, 8.0),
        _row("conv", 4.0, 5.0),
        _row("bn_after_add", 78.6, 75.0),
        _row("full_preact", 1.2, 3.9),
    ]
    verdict = ablation_verdict(summary, tolerance=1.0)
    assert verdict["worse"] == ["scale", "bn_after_add"]
    assert verdict["as_well"] == ["shortcut_gate"]
    assert verdict["better"] == ["conv", "full_preact"]
    assert verdict["gaps"]["scale"] == {"gap": pytest.approx(82.1), "noise": None}
    assert verdict["identity_best"] is False  # the 1×1 conv beat it here
    assert verdict["best_placement"] == "full_preact" and verdict["preact_best"] is True
    text = verdict["text"]
    assert text.startswith("against the identity shortcut's final clean training error (6.2 %)")
    assert "train worse: constant scaling (88.3 %), BN after addition (78.6 %)" in text
    assert "trains as well: shortcut-only gating, b_g = −6 (6.9 %)" in text
    assert "lowest test error of the placements: full pre-activation (3.9 %) vs original" in text
    assert text.endswith(
        "a gap of 5.8 points, beyond the tolerance (1); one seed, so the seed noise is unknown"
    )
    without = ablation_verdict(summary[:2], tolerance=1.0)["text"]  # no placement to compare
    assert without.endswith("one seed, so the seed noise is unknown and only the tolerance counts")


def test_verdict_a_gap_inside_twice_the_seed_noise_does_not_count() -> None:
    # The example: 64.5 % vs 40.7 % with a seed std of 32.9 is no difference.
    summary = [_row("identity", 40.7, 40.0, std=32.9), _row("dropout", 64.5, 60.0, std=0.5)]
    verdict = ablation_verdict(summary)
    assert verdict["as_well"] == ["dropout"] and verdict["worse"] == []
    assert verdict["gaps"]["dropout"]["noise"] == pytest.approx(32.9038, abs=1e-3)
    assert "seed noise is unknown" not in verdict["text"]
    tight = ablation_verdict([{**summary[0], "clean_train_error_std": 1.0}, summary[1]])
    assert tight["worse"] == ["dropout"] and tight["identity_best"] is True
    assert ablation_verdict(summary[1:])["text"].startswith("no verdict: the identity shortcut")


def test_console_table_is_in_the_papers_layout() -> None:
    summary = [_row("identity", 0.5, 2.0), _row("exclusive_gate", 16.8, 14.7)]
    for row in summary:
        v = VARIANTS[row["variant"]]
        row.update(fig=v.fig, on_shortcut=v.on_shortcut, on_f=v.on_f, paper_error=v.paper)
        row["params"] = 1000
    lines = console_table({"summary": summary}).splitlines()
    assert lines[0] == "Table 1: what the shortcut carries"
    assert [c for c in lines[1].split("  ") if c][:4] == ["case", "Fig.", "on shortcut", "on F"]
    assert [c.strip() for c in lines[3].split("  ") if c.strip()] == [
        "exclusive gating, b_g = −6", "2(c)", "1−g(x)", "g(x)", "16.8", "14.7", "8.70", "1,000",
    ]  # fmt: skip
    assert "Table 2: where BN and ReLU sit" in lines and lines[-1].startswith("original")


# --- a shortened study, end to end ---------------------------------------------------------------


# Width 0.5, not 0.25: torch 2.13's CPU backward of a channels_last 1×1 stride-2 convolution
# from 4 to 8 channels (a quarter-width net's gate or projection) corrupts memory.
@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("ablation") / "s"
    variants = ("identity", "exclusive_gate", "full_preact")
    config = _config(
        depths=(8,), epochs=1, width=0.5, jobs=1, out=str(out),
        options={"ablation_variants": variants},
    )  # fmt: skip
    lines: list[str] = []
    return config, run_study(config, log=lines.append), "\n".join(lines)


def test_shortened_study_writes_its_sections_and_the_paper_table(
    study: tuple[StudyConfig, dict[str, Any], str],
) -> None:
    config, results, log = study
    saved = json.loads((Path(config.out) / "results.json").read_text())
    assert saved["experiment"] == "ablation"
    assert [r["variant"] for r in saved["summary"]] == ["identity", "exclusive_gate", "full_preact"]
    assert [r["variant"] for r in saved["runs"]] == ["identity", "exclusive_gate", "full_preact"]
    assert saved["ablation"] == {"depth": 8, "shortcut": "A", "reference": "identity"}
    gated = saved["summary"][1]
    assert gated["params"] > saved["summary"][0]["params"]  # the gates' 1×1 convs
    assert saved["verdict"]["text"] == results["verdict"]["text"]
    assert "against the identity shortcut's final clean training error" in log
    assert "case" in log and "on shortcut" in log and "Table 2: where BN and ReLU sit" in log


def test_report_rebuilds_from_results_json_alone(
    study: tuple[StudyConfig, dict[str, Any], str], tmp_path: Path
) -> None:
    config, _, _ = study
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "results.json").write_bytes((Path(config.out) / "results.json").read_bytes())
    assert main(["report", str(folder)]) == 0
    assert sorted(p.name for p in (folder / "figures").iterdir()) == [
        "ablation_curves.png",
        "ablation_errors.png",
    ]
    for name in ("ablation_curves.png", "ablation_errors.png"):
        assert (folder / "figures" / name).read_bytes() == (
            Path(config.out) / "figures" / name
        ).read_bytes()
    page = (folder / "report.html").read_text()
    assert "Table 1: what the shortcut carries" in page and "1−g(x)" in page


def test_results_check_refuses_a_broken_section(
    study: tuple[StudyConfig, dict[str, Any], str],
) -> None:
    _, results, _ = study
    RESULTS.check(results, "")
    broken = {**results, "summary": [{**results["summary"][0], "tables": [3]}]}
    with pytest.raises(Invalid, match=r"summary\[0\].tables must be a list of table numbers"):
        RESULTS.check(broken, "")
    with pytest.raises(Invalid, match="ablation must be an object"):
        RESULTS.check({**results, "ablation": None}, "")


def test_runs_on_cifar10_with_the_recipes_budget(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", "py")  # 100 tiny training images, offline
    config = _config(
        dataset="cifar10", data_dir=str(tmp_path / "data"), depths=(8,), steps=2,
        batch_size=16, width=0.5, jobs=1, out=str(tmp_path / "s"),
        options={"ablation_variants": ("identity", "conv")},
    )  # fmt: skip
    results = run_study(config, log=lambda _: None)
    assert [r["variant"] for r in results["summary"]] == ["identity", "conv"]
    assert all(r["status"] == "finished" and r["curves"]["step"][-1] == 2 for r in results["runs"])
    # Two steps on 100 tiny images leave the reference at chance: the verdict says so.
    assert results["verdict"]["inconclusive"] is True
    assert results["verdict"]["text"].startswith("inconclusive: original (identity)")
