"""Run records: what a study keeps of each finished run, read from its run folder alone.

A record is a results.json ``runs`` entry (:class:`reslab.report.schema.RunRecord`). Because it
is read from the run folder and nothing else, runs trained by a cluster scheduler as separate
``reslab train`` jobs aggregate exactly like the runs a study trained itself
(:func:`aggregate`). The run folder is read through :class:`reslab.train.RunFolder`, the only
code that knows its files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reslab.errors import ReslabError
from reslab.fileio import atomic_write_json
from reslab.models import ResNet, create_model
from reslab.report.schema import new_results, write_results
from reslab.report.stats import summarize_runs

__all__ = ["aggregate", "run_record"]

# Curves a record keeps, in results.json's order; val_error is there with a validation split.
_CURVES = (
    "epoch",
    "step",
    "clean_train_error",
    "train_error",
    "test_error",
    "val_error",
    "train_loss",
    "lr",
)
_MODEL_KEYS = ("shortcut", "plain", "width", "zero_init_residual")


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """A results.json ``runs`` entry, read from a finished run folder alone."""
    folder = RunFolder(run_dir)
    config = folder.read_saved_config()
    result = folder.read_result()
    rows = folder.read_records()  # [] if the run diverged in its first epoch
    model = create_model(
        config["model"], **{k: config[k] for k in _MODEL_KEYS if config.get(k) is not None}
    )
    assert isinstance(model, ResNet)
    return {
        "name": folder.path.name,
        "model": config["model"],
        "family": "plain" if model.plain else "residual",
        "depth": model.depth,
        "shortcut": None if model.plain else model.shortcut_option,
        "seed": config.get("seed", 0),
        "params": result.get("params"),
        "status": result.get("status", "finished"),
        "final_clean_train_error": result.get("clean_train_error"),
        "final_test_error": result.get("test_error"),
        "wall_time": result.get("wall_time"),
        "curves": {key: [row.get(key) for row in rows] for key in _CURVES},
    }


def aggregate(study_dir: str | Path) -> dict[str, Any]:
    """Results of a study folder rebuilt from its run folders (e.g. runs made by a scheduler).

    The runs are read as a degradation study's: a summary per family and depth, and its
    verdict. Writes and returns the new results.json.
    """
    from reslab.experiments.config import StudyConfig
    from reslab.experiments.registry import get_study

    study_dir = Path(study_dir)
    run_root = study_dir / "runs" if (study_dir / "runs").is_dir() else study_dir
    run_dirs = find_runs(run_root)
    if not run_dirs:
        raise ReslabError(
            f"no results.json and no finished run folders in {study_dir}: run "
            f"`reslab degradation --out {study_dir}` or point at a folder of `reslab train` runs"
        )
    records = [run_record(d) for d in run_dirs]
    study = get_study("degradation")
    results = new_results(
        study.name, f"Degradation study aggregated from {study_dir}", {"runs": len(records)}
    )
    results["runs"] = records
    results["summary"] = summarize_runs(records)
    results["verdict"] = study.verdict(results, StudyConfig())
    write_results(study_dir, results)
    return results


# --- TODO(train merge): replace this block by `from reslab.train import RunFolder` and
# `from reslab.train.run_folder import find_runs` once branch `train` has landed. Until then it
# is the one place that reads run files itself, with the same API and the same messages.


class RunFolder:
    """Stand-in for :class:`reslab.train.RunFolder` (the four calls studies make)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.result_path = self.path / "result.json"
        self.ckpt_dir = self.path / "checkpoints"
        self.weights_path = self.ckpt_dir / "last.safetensors"

    def snapshot_path(self, step: int) -> Path:
        return self.ckpt_dir / f"snapshot-{step:09d}.safetensors"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReslabError(
                f"{self.path} is not a finished run (missing {path.name}): "
                "finish it with `reslab train --resume DIR` or remove it"
            ) from None
        except json.JSONDecodeError as exc:
            raise ReslabError(f"{self.path} has a corrupt JSON file ({exc.msg})") from exc
        return data

    def read_saved_config(self) -> dict[str, Any]:
        config = self._read(self.config_path)
        return config.get("config", config)

    def read_result(self) -> dict[str, Any]:
        return self._read(self.result_path)

    def read_records(self) -> list[dict[str, Any]]:
        metrics = self.path / "metrics.jsonl"
        if not metrics.is_file():
            return []
        try:
            return [json.loads(line) for line in metrics.read_text().splitlines()]
        except json.JSONDecodeError as exc:
            raise ReslabError(f"{self.path} has a corrupt JSON file ({exc.msg})") from exc

    def write_diverged(self, message: str) -> None:
        atomic_write_json(
            self.result_path,
            {"status": "diverged", "message": message, "clean_train_error": None,
             "test_error": None},
        )  # fmt: skip


def find_runs(root: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).glob("*/result.json"))
