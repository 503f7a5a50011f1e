"""A killed run and its uninterrupted twin, shared by the run-folder attack and fuzz tests."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from reslab.train import RunFolder, TrainConfig, fit, resolve

SETTINGS: dict[str, Any] = {
    "model": "resnet8",
    "width": 0.25,
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 64,
    "threads": 1,
    "deterministic": True,
    "quiet": True,
}


@dataclass
class Runs:
    killed: Path  # committed at the end of epoch 1 (step STEP), killed before epoch 2's commit
    reference: Path  # the same run, never interrupted
    step: int


def make_runs(root: Path, reference: bool = True) -> Runs:
    """The killed run, and (with ``reference``) the same run uninterrupted."""
    twin = root / "reference"
    if reference:
        fit(resolve({**SETTINGS, "out": str(twin)}))
    killed = root / "killed"
    config = resolve({**SETTINGS, "out": str(killed)})
    with pytest.MonkeyPatch.context() as mp:
        original = RunFolder.save_checkpoint
        calls: list[int] = []

        def commit_once(self: RunFolder, step: int, *args: Any) -> None:
            calls.append(step)
            if len(calls) > 1:  # as kill -9 would: after the first commit, before the next
                raise KeyboardInterrupt
            original(self, step, *args)

        mp.setattr(RunFolder, "save_checkpoint", commit_once)
        with pytest.raises(KeyboardInterrupt):
            fit(config)
    return Runs(killed, twin, calls[0])


def copy_run(runs: Runs, dest: Path) -> Path:
    shutil.copytree(runs.killed, dest, symlinks=True)
    return dest


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file (links as their target), to prove nothing changed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != ".lock":
            out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def step_files(folder: Path, step: int) -> dict[str, str]:
    """The checkpoint a test must never lose: the step's weights, optimizer and commit copy."""
    ckpt = folder / "checkpoints"
    names = [f"step-{step:09d}.safetensors", f"step-{step:09d}.optim.safetensors"]
    return {n: hashlib.sha256((ckpt / n).read_bytes()).hexdigest() for n in names}


def same_weights(a: Path, b: Path) -> bool:
    wa = load_file(a / "checkpoints" / "last.safetensors")
    wb = load_file(b / "checkpoints" / "last.safetensors")
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def last_json(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "checkpoints" / "last.json").read_text())
    return data


def config_of(folder: Path) -> TrainConfig:
    return RunFolder(folder).read_config()
