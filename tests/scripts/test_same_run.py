"""scripts/same_run.py: the check that proves a refactor kept a run bit-identical."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "same_run.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("same_run", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, weight: float = 1.0, epoch_time: float = 1.0) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("last", "last.optim", "best"):
        save_file({"w": torch.full((3,), weight)}, folder / "checkpoints" / f"{name}.safetensors")
    (folder / "result.json").write_text(json.dumps({"rank_checksums": [str(weight)]}))
    row = {"epoch": 1, "train_loss": 0.5, "epoch_time": epoch_time}
    (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def test_identical_runs_pass_and_timings_are_ignored(tmp_path: Path) -> None:
    same_run = _script()
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", epoch_time=9.0)
    assert same_run.differences(a, b) == []
    assert same_run.main([str(a), str(b)]) == 0


def test_a_changed_weight_or_number_is_named(tmp_path: Path) -> None:
    same_run = _script()
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", weight=1.0 + 1e-7)
    found = same_run.differences(a, b)
    assert "last.safetensors: w differs" in found
    assert "result.json: parameter checksums differ" in found
    assert same_run.main([str(a), str(b)]) == 1
    shutil.rmtree(b)
    _run(b)
    (b / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.6}) + "\n")
    assert same_run.differences(a, b) == ["metrics.jsonl: epoch 1 differs"]
