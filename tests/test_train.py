"""The training engine: config resolution, schedules, evaluation, checkpoints and failures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import reslab.train as train_mod
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.models import create_model
from reslab.recipes import RECIPES
from reslab.train import (
    TrainConfig,
    evaluate,
    fit,
    load_config_file,
    lr_at,
    resolve,
)


def small(tmp_path: Path, name: str = "run", **kw: Any) -> TrainConfig:
    """resnet20 at quarter width on digits: a real net that trains in about a second."""
    values: dict[str, Any] = {
        "model": "resnet20",
        "width": 0.25,
        "dataset": "digits",
        "epochs": 2,
        "batch_size": 64,
        "threads": 1,
        "quiet": True,
        "out": str(tmp_path / name),
        **kw,
    }
    return resolve(values)


# --- configuration ------------------------------------------------------------------------------


def test_resolve_layers_recipe_then_explicit() -> None:
    c = resolve({"dataset": "digits"})
    assert c.recipe == "digits"
    assert (c.batch_size, c.lr, c.weight_decay, c.schedule) == (128, 0.1, 5e-4, "cosine")
    c = resolve({"dataset": "cifar10"})
    assert c.recipe == "fast-cifar" and c.batch_size == 512 and c.nesterov
    c = resolve({"dataset": "cifar10", "recipe": "paper-cifar", "lr": 0.05})
    assert c.lr == 0.05  # explicit wins over the recipe
    assert (c.steps, c.batch_size, c.weight_decay, c.val_split) == (64_000, 128, 1e-4, 0)
    assert c.schedule == "multistep" and c.milestones == [0.5, 0.75] and c.gamma == 0.1
    assert c.warmup_until_error is None  # only deep nets warm up


def test_paper_recipe_warms_up_110_layers() -> None:
    """He et al. 2015 §4.2: 0.01 until the training error is below 80 %, for 110 layers."""
    for model in ("resnet110", "plain110", "resnet1202"):
        c = resolve({"model": model, "dataset": "cifar10", "recipe": "paper-cifar"})
        assert c.warmup_until_error == 80.0 and c.warmup_lr == 0.01
    c = resolve({"model": "resnet56", "dataset": "cifar10", "recipe": "paper-cifar"})
    assert c.warmup_until_error is None


def test_explicit_epochs_replace_recipe_steps() -> None:
    c = resolve({"dataset": "cifar10", "recipe": "paper-cifar", "epochs": 3})
    assert c.steps is None and c.epochs == 3
    c = resolve({"dataset": "cifar10", "recipe": "paper-cifar", "epochs": 3, "steps": 10})
    assert c.steps == 10


def test_device_names() -> None:
    assert resolve({"device": "cuda:1"}).device == "cuda:1"  # a study worker's GPU
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve({"device": "gpu"})


def test_recipes_are_valid_configs() -> None:
    for name in RECIPES:
        assert resolve({"recipe": name}).recipe == name


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"epochs": 0}, ["epochs", "--epochs"]),
        ({"lr": -1}, ["lr", "--lr"]),
        ({"batch_size": 0}, ["batch_size", "--batch-size"]),
        ({"schedule": "linear"}, ["schedule", "multistep"]),
        ({"milestones": [0.75, 0.5]}, ["milestones"]),
        ({"momentum": 1.0}, ["momentum"]),
        ({"device": "tpu"}, ["device"]),
        ({"ema": 1.5}, ["ema"]),
        ({"recipe": "paper"}, ["recipe", "paper-cifar"]),
        ({"epochs": 2.5}, ["epochs", "int"]),
        ({"plain": "yes"}, ["plain", "bool"]),
    ],
)
def test_invalid_values_name_the_field(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(values)
    message = str(exc.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_config_file_checks_keys_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('model = "resnet56"\nbatch-size = 64\nlr = 1\nmilestones = [0.3, 0.6]\n')
    values = load_config_file(path)
    assert values == {"model": "resnet56", "batch_size": 64, "lr": 1.0, "milestones": [0.3, 0.6]}
    assert TrainConfig.from_toml(path, lr=0.2).lr == 0.2
    path.write_text("lr = 0.1\nbogus = 3\n")
    with pytest.raises(ConfigError, match="unknown key bogus"):
        load_config_file(path)
    path.write_text("lr = [0.1\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_config_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.toml")


# --- learning-rate schedule ---------------------------------------------------------------------


def test_multistep_is_the_papers_schedule() -> None:
    c = resolve({"dataset": "cifar10", "recipe": "paper-cifar"})
    total = c.steps
    assert total == 64_000
    assert lr_at(c, 0, total) == pytest.approx(0.1)
    assert lr_at(c, 31_999, total) == pytest.approx(0.1)
    assert lr_at(c, 32_000, total) == pytest.approx(0.01)
    assert lr_at(c, 47_999, total) == pytest.approx(0.01)
    assert lr_at(c, 48_000, total) == pytest.approx(0.001)
    assert lr_at(c, 63_999, total) == pytest.approx(0.001)


def test_cosine_with_warmup() -> None:
    c = TrainConfig(lr=0.2, schedule="cosine", warmup_steps=10)
    assert lr_at(c, 0, 110) == pytest.approx(0.02)
    assert lr_at(c, 4, 110) == pytest.approx(0.1)
    assert lr_at(c, 9, 110) == pytest.approx(0.2)
    assert lr_at(c, 10, 110) == pytest.approx(0.2)  # cosine starts at the peak
    assert lr_at(c, 60, 110) == pytest.approx(0.1)  # half-way down
    assert lr_at(c, 110, 110) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_and_constant() -> None:
    c = TrainConfig(lr=0.4, schedule="onecycle")
    assert lr_at(c, 0, 100) == pytest.approx(0.4 / 25)
    assert lr_at(c, 24, 100) == pytest.approx(0.4)  # peak at 25 % of the run
    assert lr_at(c, 25, 100) == pytest.approx(0.4)
    assert lr_at(c, 62, 100) == pytest.approx(0.4 * 38 / 75)
    assert lr_at(c, 100, 100) == 0.0
    c = TrainConfig(lr=0.4, schedule="onecycle", warmup_steps=10)
    assert lr_at(c, 9, 100) == pytest.approx(0.4)
    assert lr_at(c, 55, 100) == pytest.approx(0.2)
    c = TrainConfig(lr=0.3, schedule="constant", warmup_steps=3)
    assert [lr_at(c, s, 50) for s in (0, 1, 2, 3, 49)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_warmup_until_error_switches_back(tmp_path: Path) -> None:
    config = small(
        tmp_path,
        epochs=4,
        schedule="constant",
        warmup_steps=0,
        lr=0.1,
        warmup_until_error=80.0,
        warmup_lr=0.01,
    )
    history = fit(config)
    end = history.final["warmup_end_step"]
    steps_per_epoch = 1437 // 64
    assert end is not None and end % train_mod.WARMUP_CHECK_EVERY == 0
    first = history.records[0]
    assert first["lr"] == (0.01 if end > steps_per_epoch else 0.1)
    assert history.records[-1]["lr"] == 0.1
    # A threshold no net reaches keeps the warm-up learning rate to the end.
    history = fit(dataclasses.replace(config, out=str(tmp_path / "never"), warmup_until_error=0.01))
    assert history.final["warmup_end_step"] is None
    assert {r["lr"] for r in history.records} == {0.01}


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluate_counts_every_image() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25, num_classes=10, in_channels=1)
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37) % 10
    result = evaluate(model, images, labels, mean=(0.5,), std=(0.25,), batch_size=8)
    assert result.n == 37 and int(result.confusion.sum()) == 37
    assert result.confusion.shape == (10, 10)
    correct = int(result.confusion.diagonal().sum())
    assert result.error == pytest.approx(100 * (37 - correct) / 37)
    assert math.isfinite(result.loss)
    per_class = result.per_class_error()
    assert len(per_class) == 10 and all(0 <= e <= 100 for e in per_class)
    assert model.training  # evaluate() restores the mode


# --- fit: history, files, resume ----------------------------------------------------------------


def test_fit_history_and_run_folder(tmp_path: Path) -> None:
    history = fit(small(tmp_path, ema=0.9, grad_clip=5.0, label_smoothing=0.1, val_split=200))
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
    assert len(list((run / "checkpoints").glob("step-*"))) == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["val_split"] == 200 and saved["out"] == str(run)


def test_resume_finished_run_returns_it(tmp_path: Path) -> None:
    config = small(tmp_path, epochs=1)
    first = fit(config)
    again = fit(config, resume=True)
    assert again.final == first.final and again.records == first.records
    with pytest.raises(ConfigError, match="different config"):
        fit(dataclasses.replace(config, lr=0.5), resume=True)
    with pytest.raises(ReslabError, match="already holds a run"):
        fit(config)


def test_resume_from_saved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after epoch 1 continues with its saved config to the same weights."""
    config = small(tmp_path, epochs=3, deterministic=True)
    whole = fit(dataclasses.replace(config, out=str(tmp_path / "whole")))

    calls = {"n": 0}
    real_eval = train_mod.evaluate

    def stop_in_epoch_2(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # 2 evaluations per epoch: this is epoch 2's first
            raise KeyboardInterrupt
        return real_eval(*args, **kw)

    monkeypatch.setattr(train_mod, "evaluate", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    monkeypatch.setattr(train_mod, "evaluate", real_eval)
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


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = small(tmp_path, epochs=1)
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


def test_crash_between_files_and_commit_keeps_previous_checkpoint(tmp_path: Path) -> None:
    """Step files written but last.json not: the committed checkpoint is used and linked."""
    config = small(tmp_path, epochs=1)
    fit(config)
    ckpt = config.run_dir() / "checkpoints"
    committed = json.loads((ckpt / "last.json").read_text())
    # A newer, uncommitted weights file and a stale link, as a crash after writing would leave.
    (ckpt / "step-000000999.safetensors").write_bytes(b"partial")
    (ckpt / "last.safetensors").unlink()
    (ckpt / ".step-000000999.safetensors.abc.tmp").write_bytes(b"x")
    folder = train_mod.RunFolder(config.run_dir())
    loaded = folder.load_checkpoint()
    assert loaded is not None
    state, weights, _ = loaded
    assert state["step"] == committed["step"] and weights.name == committed["weights"]
    assert (ckpt / "last.safetensors").samefile(weights)
    assert not list(ckpt.glob(".*.tmp"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small(tmp_path, epochs=3)
    steps_per_epoch = 1437 // 64
    real_lr_at = train_mod.lr_at

    def exploding(c: TrainConfig, step: int, total: int) -> float:
        return 1e30 if step >= steps_per_epoch + 3 else real_lr_at(c, step, total)

    monkeypatch.setattr(train_mod, "lr_at", exploding)
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


def test_nan_from_a_huge_learning_rate(tmp_path: Path) -> None:
    config = small(tmp_path, epochs=1, lr=1e30, warmup_steps=0, schedule="constant")
    with pytest.raises(ReslabError, match=r"NaN/inf at step \d+ \(lr 1e\+30\)") as exc:
        fit(config)
    assert "no checkpoint was written" in str(exc.value)
    assert not (config.run_dir() / "checkpoints" / "last.json").exists()


def test_fit_restores_process_settings(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    fit(small(tmp_path, epochs=1, deterministic=True, threads=1, steps=3))
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_steps_override_epochs_mid_epoch(tmp_path: Path) -> None:
    history = fit(small(tmp_path, steps=30, checkpoint_every_steps=7))
    assert history.final["steps"] == 30
    assert [r["step"] for r in history.records] == [22, 30]


def test_hot_path_reads_nothing_back_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
        config = small(tmp_path, f"s{steps}", steps=steps, augment="flip", ema=0.9, grad_clip=1.0)
        fit(config)
        return counts["n"]

    assert reads(4) == reads(20)  # both within the first epoch of 22 steps


def test_optional_tensorboard_and_anomaly_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = fit(small(tmp_path, steps=2, tensorboard=True, detect_anomaly=True, quiet=False))
    assert history.final["steps"] == 2
    assert not torch.is_anomaly_enabled()
    out = capsys.readouterr().out
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in out
    else:
        assert (history.run_dir / "tb").is_dir()


def test_restored_momentum_keeps_the_parameters_layout() -> None:
    from reslab.train import restore_momentum

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    saved = {"optim.0": torch.randn(8, 3, 3, 3), "optim.1": torch.randn(8)}
    restore_momentum(opt, saved)
    buf = opt.state[conv.weight]["momentum_buffer"]
    assert buf.stride() == conv.weight.stride() != saved["optim.0"].stride()
    assert torch.equal(buf, saved["optim.0"])
    assert torch.equal(opt.state[conv.bias]["momentum_buffer"], saved["optim.1"])
