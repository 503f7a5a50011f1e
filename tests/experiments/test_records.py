"""Run records are read from a run folder alone, so scheduler-made runs aggregate like a study's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reslab.errors import ReslabError
from reslab.experiments import aggregate
from reslab.experiments.records import run_record


def _run_folder(
    root: Path, name: str, config: dict[str, Any], result: dict[str, Any] | None, epochs: int = 2
) -> Path:
    """A run folder as `reslab train` leaves it: config.json, metrics.jsonl, result.json."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "_meta": {"created": "x"}}))
    rows = [
        {"epoch": e, "step": 10 * e, "clean_train_error": 50.0 / e, "test_error": 60.0 / e}
        for e in range(1, epochs + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if result is not None:
        (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_a_record_is_read_from_the_run_folder(tmp_path: Path) -> None:
    config = {"model": "resnet20", "shortcut": "B", "seed": 3, "width": 0.5}
    result = {"params": 1234, "clean_train_error": 25.0, "test_error": 30.0, "wall_time": 9.5}
    record = run_record(_run_folder(tmp_path, "resnet20-s3", config, result))
    curves = record.pop("curves")
    assert record == {
        "name": "resnet20-s3",
        "model": "resnet20",
        "family": "residual",
        "depth": 20,
        "shortcut": "B",
        "seed": 3,
        "params": 1234,
        "status": "finished",
        "final_clean_train_error": 25.0,
        "final_test_error": 30.0,
        "wall_time": 9.5,
    }
    assert curves["step"] == [10, 20] and curves["clean_train_error"] == [50.0, 25.0]
    assert curves["val_error"] == [None, None]  # not measured: no validation split
    plain = run_record(_run_folder(tmp_path, "p", {"model": "plain20"}, {"status": "diverged"}))
    assert (plain["family"], plain["shortcut"], plain["seed"], plain["status"]) == (
        "plain", None, 0, "diverged"
    )  # fmt: skip


def test_unfinished_and_corrupt_folders_are_one_line(tmp_path: Path) -> None:
    unfinished = _run_folder(tmp_path, "a", {"model": "resnet8"}, None)
    with pytest.raises(ReslabError, match=r"is not a finished run \(missing result\.json\)"):
        run_record(unfinished)
    (unfinished / "result.json").write_text("{")
    with pytest.raises(ReslabError, match="has a corrupt JSON file"):
        run_record(unfinished)


def test_aggregate_reads_a_folder_of_runs(tmp_path: Path) -> None:
    for depth in (8, 14):
        for family in ("plain", "resnet"):
            train = 40.0 if (family, depth) == ("plain", 14) else 10.0
            _run_folder(
                tmp_path / "runs", f"{family}{depth}-s0", {"model": f"{family}{depth}"},
                {"clean_train_error": train, "test_error": train + 5},
            )  # fmt: skip
    results = aggregate(tmp_path)
    assert [r["label"] for r in results["summary"]] == [
        "plain-8",
        "plain-14",
        "resnet-8",
        "resnet-14",
    ]
    assert results["verdict"]["degradation"] is True and results["verdict"]["plain_gap"] == 30.0
    assert json.loads((tmp_path / "results.json").read_text())["verdict"] == results["verdict"]
    with pytest.raises(ReslabError, match=r"no results\.json and no finished run folders"):
        aggregate(tmp_path / "empty")
