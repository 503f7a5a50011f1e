"""fit(): history and run folder, resume, NaN stops, step budgets and the sync-free hot path."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import reslab.train.run as run_module
import reslab.train.schedule as schedule
from reslab.errors import ConfigError, ReslabError
from reslab.train import (
    TrainConfig,
    fit,
)


def test_fit_history_and_run_folder(small: Callable[..., TrainConfig], tmp_path: Path) -> None:
    history = fit(small(ema=0.9, grad_clip=5.0, label_smoothing=0.1, val_split=200))
    run = history.run_dir
    assert [r["epoch"] for r in history.records] == [1, 2]
    for r in history.records:
        assert {"train_loss", "train_error", "clean_train_error", "val_error"} <= r.keys()
        assert r["images_per_s"] > 0 and 0 <= r["val_error"] <= 100
    final = json.loads((run / "result.json").read_text())
    assert final == json.loads(json.dumps(history.final))
    assert "test_error" in final and "val_error" in final
    assert final["eval_weights"] == "checkpoints/ema.safetensors"
    for name in ("last.safetensors", "last.optim.safetensors", "best.safetensors", "last.json"):
        assert (run / "checkpoints" / name).is_file(), name
    optim = load_file(run / "checkpoints" / "last.optim.safetensors")
    assert any(k.startswith("optim.") for k in optim) and any(k.startswith("ema.") for k in optim)
    # Only the committed step files remain.
    assert len(list((run / "checkpoints").glob("step-*.safetensors"))) == 2
    assert len(list((run / "checkpoints").glob("step-*.json"))) == 1  # the commit's copy
    saved = json.loads((run / "config.json").read_text())
    assert saved["val_split"] == 200 and saved["out"] == str(run)


def test_resume_finished_run_returns_it(small: Callable[..., TrainConfig], tmp_path: Path) -> None:
    config = small(epochs=1)
    first = fit(config)
    again = fit(config, resume=True)
    assert again.final == first.final and again.records == first.records
    with pytest.raises(ConfigError, match="different config"):
        fit(dataclasses.replace(config, lr=0.5), resume=True)
    with pytest.raises(ReslabError, match="already holds a run"):
        fit(config)


@pytest.mark.slow
def test_resume_from_saved_config(
    small: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after epoch 1 continues with its saved config to the same weights."""
    config = small(epochs=3, deterministic=True)
    whole = fit(dataclasses.replace(config, out=str(tmp_path / "whole")))

    calls = {"n": 0}
    real_eval = run_module.evaluate

    def stop_in_epoch_2(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # 2 evaluations per epoch: this is epoch 2's first
            raise KeyboardInterrupt
        return real_eval(*args, **kw)

    monkeypatch.setattr(run_module, "evaluate", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    monkeypatch.setattr(run_module, "evaluate", real_eval)
    state = json.loads((config.run_dir() / "checkpoints" / "last.json").read_text())
    assert state["step"] == 1437 // 64 and len(state["records"]) == 1
    resumed = fit(resume_from=config.run_dir(), overrides={"quiet": True})
    a = load_file(whole.run_dir / "checkpoints" / "last.safetensors")
    b = load_file(resumed.run_dir / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in resumed.records] == [1, 2, 3]
    with pytest.raises(ConfigError, match="cannot change on resume"):
        fit(resume_from=config.run_dir(), overrides={"lr": 1.0})
    with pytest.raises(ReslabError, match="no run to resume"):
        fit(resume_from=tmp_path / "nothing-here")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    small: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small(epochs=3)
    steps_per_epoch = 1437 // 64
    real_lr_at = schedule.lr_at

    def exploding(c: TrainConfig, step: int, total: int) -> float:
        return 1e30 if step >= steps_per_epoch + 3 else real_lr_at(c, step, total)

    monkeypatch.setattr(schedule, "lr_at", exploding)
    with pytest.raises(ReslabError) as exc:
        fit(config)
    message = str(exc.value)
    assert "NaN/inf" in message and "lr 1e+30" in message
    bad_step = int(message.split("at step ")[1].split()[0])
    assert steps_per_epoch + 3 <= bad_step < 2 * steps_per_epoch
    assert f"step {steps_per_epoch}" in message  # the kept checkpoint
    state = json.loads((config.run_dir() / "checkpoints" / "last.json").read_text())
    assert state["step"] == steps_per_epoch
    weights = load_file(config.run_dir() / "checkpoints" / "last.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    assert not (config.run_dir() / "result.json").exists()


def test_nan_from_a_huge_learning_rate(small: Callable[..., TrainConfig], tmp_path: Path) -> None:
    config = small(epochs=1, lr=1e30, warmup_steps=0, schedule="constant")
    with pytest.raises(ReslabError, match=r"NaN/inf at step \d+ \(lr 1e\+30\)") as exc:
        fit(config)
    assert "no checkpoint was written" in str(exc.value)
    assert not (config.run_dir() / "checkpoints" / "last.json").exists()


def test_steps_override_epochs_mid_epoch(small: Callable[..., TrainConfig], tmp_path: Path) -> None:
    history = fit(small(steps=30, checkpoint_every_steps=7))
    assert history.final["steps"] == 30
    assert [r["step"] for r in history.records] == [22, 30]


@pytest.mark.parametrize(
    "extra",
    [{}, {"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.9, "accum_steps": 2, "label_smoothing": 0.1}],
    ids=["plain", "mixed-accumulated"],
)
def test_hot_path_reads_nothing_back_per_step(
    small: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, Any],
) -> None:
    """Host reads of tensor values (item, float, bool, tolist) don't grow with the step count."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *a: Any, _real: Any = real, **kw: Any) -> Any:
            counts["n"] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads(steps: int) -> int:
        counts["n"] = 0
        config = small(f"s{steps}", steps=steps, augment="flip", ema=0.9, grad_clip=1.0, **extra)
        assert fit(config).final["steps"] == steps  # optimizer steps, whatever --accum-steps
        return counts["n"]

    assert reads(4) == reads(20)  # both within the first epoch of 22 steps


def test_optional_tensorboard_and_anomaly_mode(
    small: Callable[..., TrainConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = fit(small(steps=2, tensorboard=True, detect_anomaly=True, quiet=False))
    assert history.final["steps"] == 2
    assert not torch.is_anomaly_enabled()
    out = capsys.readouterr().out
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in out
    else:
        assert (history.run_dir / "tb").is_dir()
