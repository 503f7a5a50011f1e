"""The run folder: atomic checkpoints, the commit point, and clear errors when files are damaged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from reslab.errors import CheckpointError, ReslabError
from reslab.train import (
    RunFolder,
    TrainConfig,
    find_runs,
    fit,
)


def test_truncated_checkpoint_is_a_clear_error(
    small: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = small(epochs=1)
    fit(config)
    run = config.run_dir()
    (run / "result.json").unlink()  # pretend it was killed before finishing
    last = run / "checkpoints" / "last.safetensors"
    size = last.stat().st_size
    with last.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError) as exc:
        fit(resume_from=run)
    message = str(exc.value)
    assert "last.safetensors" in message and "truncated or corrupt" in message
    assert "\n" not in message


def test_crash_between_files_and_commit_keeps_previous_checkpoint(
    small: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    """Step files written but last.json not: the committed checkpoint is used and linked."""
    config = small(epochs=1)
    fit(config)
    ckpt = config.run_dir() / "checkpoints"
    committed = json.loads((ckpt / "last.json").read_text())
    # A newer, uncommitted weights file and a stale link, as a crash after writing would leave.
    (ckpt / "step-000000999.safetensors").write_bytes(b"partial")
    (ckpt / "last.safetensors").unlink()
    (ckpt / ".step-000000999.safetensors.abc.tmp").write_bytes(b"x")
    folder = RunFolder(config.run_dir())
    loaded = folder.load_checkpoint()
    assert loaded is not None
    state, weights, _ = loaded
    assert state["step"] == committed["step"] and weights.name == committed["weights"]
    assert (ckpt / "last.safetensors").samefile(weights)
    assert not list(ckpt.glob(".*.tmp"))


# --- the reading API the studies use ------------------------------------------------------------


def test_result_and_config_readers_are_strict(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(ReslabError, match=r"is not a finished run \(missing result\.json"):
        folder.read_result()
    folder.path.mkdir()
    folder.result_path.write_text('{"status": "finished"')
    with pytest.raises(ReslabError, match="corrupt JSON"):
        folder.read_result()
    folder.result_path.write_text("[1, 2]")
    with pytest.raises(ReslabError, match="must hold a JSON object"):
        folder.read_result()
    folder.config_path.write_text('{"model": "resnet20", "bogus": 1, "_meta": {}}')
    with pytest.raises(ReslabError, match="unknown key bogus"):
        folder.read_saved_config()
    folder.config_path.write_text('{"model": "resnet20", "seed": 3, "_meta": {"x": 1}}')
    assert folder.read_saved_config() == {"model": "resnet20", "seed": 3}


def test_diverged_marker_and_finding_runs(tmp_path: Path) -> None:
    for name in ("b", "a", "unfinished"):
        (tmp_path / name).mkdir()
    RunFolder(tmp_path / "b").write_diverged("training loss became NaN/inf at step 3")
    RunFolder(tmp_path / "a").write_result({"status": "finished", "test_error": 1.5})
    assert find_runs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    diverged = RunFolder(tmp_path / "b").read_result()
    assert diverged["status"] == "diverged" and diverged["test_error"] is None
    assert "step 3" in diverged["message"]
    assert RunFolder(tmp_path / "b").is_finished()
    assert not RunFolder(tmp_path / "unfinished").is_finished()


def test_a_finished_run_records_its_files_relative_to_the_folder(
    small: Callable[..., TrainConfig],
) -> None:
    history = fit(small(epochs=1, ema=0.5))
    folder = RunFolder(history.run_dir)
    assert history.final["weights"] == "checkpoints/last.safetensors"
    assert (folder.path / history.final["weights"]).samefile(folder.weights_path)
    assert (folder.path / history.final["eval_weights"]) == folder.ema_path
    assert folder.committed_step() == history.final["steps"]
    assert folder.read_records() == history.records
