"""Packed studies: the same results as training every run on its own, run by run."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.experiments import StudyConfig, run_study
from reslab.experiments.degradation import plan
from reslab.experiments.runner import plan_packs, train_config


def _study(out: Path, pack: bool | None = True, seeds: tuple[int, ...] = (0,)) -> StudyConfig:
    # lr 0.02: at the digits recipe's 0.1, one epoch in, two fits of one net that differ only
    # in memory layout (channels_last or not) already differ by up to 2e-2 in some weights:
    # float noise grows fast there, whichever way it is made.
    return StudyConfig(
        depths=(8, 14), seeds=seeds, epochs=1, lr=0.02, width=0.5, jobs=1, out=str(out),
        pack=pack,
    )  # fmt: skip


@pytest.fixture
def one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """One job of one thread: the study's runs in this process, and no thread oversubscription
    of a shared test machine (which times, not results, would suffer)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})


def test_a_packed_study_matches_the_unpacked_one_run_by_run(tmp_path: Path, one_core: None) -> None:
    lines: list[str] = []
    packed = run_study(_study(tmp_path / "packed"), log=lines.append)
    assert "4 runs train as 2 packs of twins (--no-pack: one by one)" in lines
    assert [line.split()[0] for line in lines if line.startswith("[")] == [
        "[1/4]", "[2/4]", "[3/4]", "[4/4]"
    ]  # fmt: skip
    argv = ["degradation", "--depths", "8,14", "--seeds", "0", "--epochs", "1", "--lr", "0.02"]
    argv += ["--width", "0.5", "--jobs", "1", "--no-pack", "--out", str(tmp_path / "alone")]
    assert main(argv) == 0
    alone = json.loads((tmp_path / "alone/results.json").read_text())
    assert alone["config"]["pack"] is False and packed["config"]["pack"] is True
    assert [r["name"] for r in packed["runs"]] == [r["name"] for r in alone["runs"]]
    for a, b in zip(packed["runs"], alone["runs"], strict=True):
        for key in ("final_clean_train_error", "final_test_error"):  # within an image or two
            assert a[key] == pytest.approx(b[key], abs=0.15), (a["name"], key)
        assert a["curves"]["train_loss"] == pytest.approx(b["curves"]["train_loss"], rel=1e-3)
    for study in ("packed", "alone"):  # each run's own log lines in its own train.log
        log = (tmp_path / study / "runs/plain8-s0/train.log").read_text().splitlines()
        assert log[0].startswith("epoch 1/1 step 11 ") and "plain8-s0: clean train" in log[1]


def test_packs_split_until_every_worker_has_a_job(tmp_path: Path) -> None:
    study = _study(tmp_path, seeds=(0, 1))
    configs = [train_config(study, s, 1) for s in plan(study)]
    assert [len(p) for p in plan_packs(study, configs, 1)] == [4, 4]  # depth 14, then 8
    assert [len(p) for p in plan_packs(study, configs, 3)] == [4, 2, 2]  # 14 split
    assert plan_packs(_study(tmp_path, False), configs, 1) == [[i] for i in range(8)]
    # By default only runs on CUDA pack: on this project's CPU packing measured no faster.
    assert plan_packs(_study(tmp_path, None), configs, 1) == [[i] for i in range(8)]
    on_gpu = [dataclasses.replace(c, device="cuda") for c in configs]
    assert [len(p) for p in plan_packs(_study(tmp_path, None), on_gpu, 1)] == [4, 4]
    clipped = [dataclasses.replace(c, grad_clip=1.0) for c in configs]
    lines: list[str] = []
    assert len(plan_packs(study, clipped, 1, lines.append)) == 8
    assert lines == [
        "packing off for these runs (--grad-clip (a global gradient norm)): they train one by one"
    ]


def test_no_pack_is_a_flag_of_every_study(capsys: pytest.CaptureFixture[str]) -> None:
    for study in ("degradation", "shortcuts", "ablation", "lesion"):
        with pytest.raises(SystemExit):
            main([study, "--help"])
        assert "--no-pack" in capsys.readouterr().out
