"""A resume whose config.json disagrees with the checkpoint it continues is refused in one
line, and nothing in the run folder changes (issue 20, class 7). Each test failed on main."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from run_folder_helpers import SETTINGS, Runs, snapshot

from reslab.errors import ConfigError
from reslab.train import RunFolder, fit, resolve

EXAMPLES = int(os.environ.get("RESLAB_FUZZ_EXAMPLES", "40"))
# Other values of the killed run's settings (run_folder_helpers.SETTINGS, epochs 2, batch 64,
# cosine, lr 0.1): each one changes what the run trains.
EDITS: dict[str, list[Any]] = {
    "epochs": [1, 3, 9],
    "steps": [3, 9, 500],
    "batch_size": [32, 100],
    "lr": [0.05, 0.3],
    "momentum": [0.5],
    "weight_decay": [0.0, 0.001],
    "schedule": ["multistep", "constant"],
    "warmup_steps": [0, 3],
    "label_smoothing": [0.1],
    "seed": [1, 12345],
    "width": [0.5],
    "model": ["plain8", "resnet14"],
    "deterministic": [False],
    "mixup": [0.2],
    "eval_every": [2],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A run of 8 steps killed after its step-4 commit (a mid-epoch checkpoint: 2 s, not 30)."""
    run = tmp_path_factory.mktemp("agreement") / "killed"
    config = resolve({**SETTINGS, "steps": 8, "checkpoint_every_steps": 4, "out": str(run)})
    with pytest.MonkeyPatch.context() as mp:
        original = RunFolder.save_checkpoint

        def commit_once(self: RunFolder, step: int, *args: Any) -> None:
            if step > 4:  # as kill -9 would: after the first commit, before the next
                raise KeyboardInterrupt
            original(self, step, *args)

        mp.setattr(RunFolder, "save_checkpoint", commit_once)
        with pytest.raises(KeyboardInterrupt):
            fit(config)
    return Runs(run, run, 4)


def _edit(run: Path, changes: dict[str, Any]) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


def _refused(run: Path) -> str:
    before = snapshot(run)
    with pytest.raises(ConfigError) as caught:
        fit(resume_from=run)
    assert snapshot(run) == before
    message = str(caught.value)
    assert "\n" not in message and "--out NEW_FOLDER" in message
    return message


def test_lowered_epochs_are_refused_not_resumed_past_the_end(runs: Runs, tmp_path: Path) -> None:
    """On main: 'resuming ... at step 4 of 2', then a finished result.json for 2 steps."""
    run = shutil.copytree(runs.killed, tmp_path / "run", symlinks=True)
    _edit(run, {"epochs": 1, "steps": 2})
    message = _refused(run)
    assert f"edited after the checkpoint at step {runs.step}" in message
    assert "epochs 2 -> 1" in message and "steps 8 -> 2" in message
    assert not (run / "result.json").exists()


def test_a_checkpoint_without_recorded_settings_is_checked_for_its_step(
    runs: Runs, tmp_path: Path
) -> None:
    """A checkpoint written before the settings were recorded: the step still has to fit."""
    run = shutil.copytree(runs.killed, tmp_path / "run", symlinks=True)
    for name in ("last.json", f"step-{runs.step:09d}.json"):
        path = run / "checkpoints" / name
        state = json.loads(path.read_text())
        state.pop("config", None)
        path.write_text(json.dumps(state))
    _edit(run, {"steps": runs.step - 1})
    message = _refused(run)
    assert f"asks for {runs.step - 1} steps" in message
    assert f"checkpoint stands at step {runs.step}" in message


@settings(max_examples=max(4, EXAMPLES // 4))
@given(edits=st.dictionaries(st.sampled_from(sorted(EDITS)), st.just(None), min_size=1),
       data=st.data())  # fmt: skip
def test_any_edit_of_a_trained_setting_is_refused_naming_it(
    runs: Runs, tmp_path: Path, edits: dict[str, None], data: st.DataObject
) -> None:
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(runs.killed, run, symlinks=True)
    changes = {key: data.draw(st.sampled_from(EDITS[key]), label=key) for key in edits}
    _edit(run, changes)
    message = _refused(run)
    for key, value in changes.items():
        assert f"{key} " in message and f"-> {value!r}" in message
