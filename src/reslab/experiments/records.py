"""Run records: what a study keeps of each finished run, read from its run folder alone.

A record is a results.json ``runs`` entry (the schema: :mod:`reslab.report.schema`). Because it
is read from the run folder and nothing else, runs trained by a cluster scheduler as separate
``reslab train`` jobs aggregate exactly like the runs a study trained itself
(:func:`aggregate`). The run folder is read through :class:`reslab.train.RunFolder`, the only
code that knows its files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reslab.errors import ReslabError
from reslab.models import model_layout
from reslab.report.schema import new_results, write_results
from reslab.report.stats import mean_std, summarize_runs
from reslab.train import RunFolder
from reslab.train.run_folder import find_runs

__all__ = ["aggregate", "run_record", "variant_row"]

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
    # The layout alone says what the net is: nothing is built (config.json may name a net of
    # any size; model_layout refuses one beyond reslab.checks in milliseconds).
    layout = model_layout(
        config["model"], **{k: config[k] for k in _MODEL_KEYS if config.get(k) is not None}
    )
    return {
        "name": folder.path.name,
        "model": config["model"],
        "family": "plain" if layout.plain else "residual",
        "depth": layout.depth,
        "shortcut": None if layout.plain else layout.shortcut,
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


def variant_row(members: Sequence[Mapping[str, Any]], label: str) -> dict[str, Any]:
    """A summary row for the runs of one variant of a study (one net, several seeds): the
    columns :func:`reslab.report.stats.summarize_runs` gives a (family, depth) group, and how
    many of the runs diverged."""
    train = mean_std([r.get("final_clean_train_error") for r in members])
    test = mean_std([r.get("final_test_error") for r in members])
    return {
        "family": members[0]["family"],
        "depth": members[0]["depth"],
        "shortcut": members[0]["shortcut"],
        "label": label,
        "n_seeds": len(members),
        "clean_train_error_mean": train[0],
        "clean_train_error_std": train[1],
        "test_error_mean": test[0],
        "test_error_std": test[1],
        "params": members[0].get("params"),
        "diverged": sum(r.get("status") == "diverged" for r in members),
    }
