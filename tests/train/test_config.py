"""TrainConfig, the recipes and resolve: defaults < recipe < file < flags, checked at the edge."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from reslab.errors import ConfigError
from reslab.train import (
    TrainConfig,
    flag_name,
    load_config_file,
    resolve,
)
from reslab.train.recipes import RECIPES


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
        # issue 10's knobs
        ({"mixup": -0.2}, ["mixup", "--mixup"]),
        ({"mixup": math.inf}, ["mixup"]),
        ({"cutmix": math.nan}, ["cutmix"]),
        ({"mix_prob": 1.5}, ["mix_prob", "--mix-prob"]),
        ({"mix_switch_prob": -0.1}, ["mix_switch_prob", "[0, 1]"]),
        ({"accum_steps": 0}, ["accum_steps", "--accum-steps"]),
        ({"accum_steps": 3, "batch_size": 128}, ["accum_steps", "divisor of --batch-size 128"]),
        ({"ema_warmup": 1}, ["ema_warmup", "bool"]),
        ({"accum_steps": 2, "cuda_graphs": True}, ["cuda_graphs", "169545"]),
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


def test_every_field_documents_itself_for_its_flag() -> None:
    """The CLI's flags come from these fields: each needs a one-line help and a dash name."""
    for f in dataclasses.fields(TrainConfig):
        help_text = f.metadata.get("help")
        assert help_text and "\n" not in help_text and len(help_text) < 120, f.name
        assert flag_name(f.name) == "--" + f.name.replace("_", "-")
    assert flag_name("weight_decay") == "--weight-decay"


def test_resolve_classmethod_is_the_command_lines_resolution() -> None:
    """TrainConfig.resolve(**flags) applies the recipe exactly as resolve({...}) does."""
    assert TrainConfig.resolve(model="resnet56", epochs=5) == resolve(
        {"model": "resnet56", "epochs": 5}
    )
    assert TrainConfig.resolve().warmup_steps == 20  # the digits recipe, not the field default
    assert TrainConfig().warmup_steps == 0
