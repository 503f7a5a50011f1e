"""A run folder that is damaged, edited or hostile: resume refuses in one line or recovers, and
never loses the committed checkpoint (issue 11, class 4). Each test here failed on main."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_folder_helpers import (
    Runs,
    copy_run,
    last_json,
    make_runs,
    same_weights,
    snapshot,
    step_files,
)

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.experiments.records import aggregate
from reslab.train import RunFolder, fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("attack"))


def _resume(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    return code, err


def _refused(run: Path, capsys: pytest.CaptureFixture[str], *words: str) -> None:
    """Exit 2, one line naming the problem, and not one byte of the folder changed."""
    before = snapshot(run)
    code, err = _resume(run, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("reslab: error: "), err
    assert all(w in err for w in words), err
    assert snapshot(run) == before


def test_deleting_last_json_resumes_from_the_newest_intact_step_files(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main: a silent restart at step 0 that deleted the step files."""
    run = copy_run(runs, tmp_path / "run")
    epoch1 = (run / "metrics.jsonl").read_text()
    (run / "checkpoints" / "last.json").unlink()
    code = main(["train", "--resume", str(run)])
    out = capsys.readouterr().out
    assert code == 0 and f"rebuilt it from step-{runs.step:09d}.json" in out
    assert "epoch 1/2" not in out and "epoch 2/2" in out  # resumed at epoch 2
    assert (run / "metrics.jsonl").read_text().startswith(epoch1)  # epoch 1 not trained again
    assert same_weights(run, runs.reference)


def test_without_any_commit_the_step_files_are_kept_and_resume_refuses(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """last.json and its copy gone, the metrics show a commit: refuse, never start over."""
    run = copy_run(runs, tmp_path / "run")
    (run / "checkpoints" / "last.json").unlink()
    (run / "checkpoints" / f"step-{runs.step:09d}.json").unlink()
    kept = step_files(run, runs.step)
    _refused(run, capsys, "last.json is missing", "restore last.json")
    assert step_files(run, runs.step) == kept


def test_checkpoints_replaced_by_a_file_is_refused_before_the_metrics(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main: metrics.jsonl and metrics.csv were deleted before the resume failed."""
    run = copy_run(runs, tmp_path / "run")
    ckpt = run / "checkpoints"
    os.rename(ckpt, tmp_path / "moved")
    ckpt.write_text("not a folder")
    _refused(run, capsys, "checkpoints is not a folder")
    assert (run / "metrics.jsonl").is_file() and (run / "metrics.csv").is_file()


def test_a_path_outside_the_run_is_never_linked(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main: last.safetensors became a hard link to the outside file, then resume failed."""
    run = copy_run(runs, tmp_path / "run")
    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours\n")
    state = last_json(run)
    name = os.path.relpath(outside, run / "checkpoints")
    state["weights"] = name
    state["files"][name] = {
        "size": outside.stat().st_size,
        "sha256": hashlib.sha256(outside.read_bytes()).hexdigest(),
    }
    (run / "checkpoints" / "last.json").write_text(json.dumps(state))
    _refused(run, capsys, "weights = '../../secret'", "edited or damaged")
    assert outside.stat().st_nlink == 1  # no hard link was made to it


@pytest.mark.parametrize("rename_files", [False, True])
def test_an_edited_step_is_refused(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], rename_files: bool
) -> None:
    """On main: step 22 -> 24 resumed at 24 with step-22 weights and finished wrong, unflagged.

    Renaming the step files to match the new step does not help: their header says step 22.
    """
    run = copy_run(runs, tmp_path / "run")
    ckpt, new = run / "checkpoints", runs.step + 2
    state = last_json(run)
    state["step"] = new
    if rename_files:
        for old_name, key in ((state["weights"], "weights"), (state["optim"], "optim")):
            new_name = old_name.replace(f"{runs.step:09d}", f"{new:09d}")
            os.rename(ckpt / old_name, ckpt / new_name)
            state[key] = new_name
            state["files"][new_name] = state["files"].pop(old_name)
    (ckpt / "last.json").write_text(json.dumps(state))
    words = ("holds step '22'", "was edited") if rename_files else ("weights =", "step-24")
    _refused(run, capsys, *words)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s.pop("files"), id="no-files"),
        pytest.param(lambda s: s.pop("rng"), id="no-rng"),
        pytest.param(lambda s: s.update(step="abc"), id="step-abc"),
        pytest.param(lambda s: s["loader"].update(batch=10**30), id="huge-batch"),
        pytest.param(lambda s: s["records"].append([1]), id="record-a-list"),
    ],
)
def test_a_malformed_last_json_is_one_line(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[..., Any]
) -> None:
    """On main each of these was a traceback (KeyError, ValueError, OverflowError...)."""
    run = copy_run(runs, tmp_path / "run")
    state = last_json(run)
    edit(state)
    (run / "checkpoints" / "last.json").write_text(json.dumps(state))
    _refused(run, capsys, "last.json")


def test_finished_runs_with_bad_result_or_config_are_one_line(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main: a JSONDecodeError traceback, and AttributeError in `reslab report`."""
    run = tmp_path / "study" / "runs" / "r"
    run.parent.mkdir(parents=True)
    shutil.copytree(runs.reference, run, symlinks=True)
    result = (run / "result.json").read_text()
    (run / "result.json").write_text(result[: len(result) // 2])
    _refused(run, capsys, "corrupt JSON file result.json")
    with pytest.raises(ReslabError, match="corrupt JSON"):  # as a study's rerun meets it
        fit(dataclasses.replace(RunFolder(run).read_config(), out=str(run)), resume=True)
    for name, text in (("result.json", "[1, 2]"), ("config.json", '["resnet8"]')):
        (run / "result.json").write_text(result)
        (run / name).write_text(text)
        with pytest.raises(ReslabError, match=f"{name} must hold a JSON object"):
            aggregate(tmp_path / "study")
