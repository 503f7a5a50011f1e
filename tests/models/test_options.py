"""The model options are one record (reslab.models.options); everything else reads it."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

import pytest

from reslab.cli.train import register
from reslab.errors import ModelError
from reslab.models import create_model, model_layout
from reslab.models.options import FIELDS, ModelOptions, names, train_options
from reslab.train.config import TrainConfig, flag_name

# One valid use of every option, with the options it needs beside it.
EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("resnet20", {"num_classes": 5, "in_channels": 1, "width": 0.5, "shortcut": "b"}),
    ("resnet20", {"plain": True, "preact": True, "block": "bottleneck"}),
    ("resnet20", {"zero_init_residual": True, "activation": "relu_preact"}),
    ("resnet20", {"shortcut_mode": "scale", "shortcut_scale": 0.5, "branch_scale": 1}),
    ("resnet20", {"shortcut_mode": "exclusive_gate", "gate_bias": -6.0}),
    ("resnet20", {"shortcut_mode": "dropout", "shortcut_dropout": 0.5}),
    ("wrn16_8", {"drop_rate": 0.3, "drop_path_rate": 0.1}),
    ("plain20", {"norm": "none", "init": "delta_orthogonal", "nonlinearity": "tanh"}),
]
# The options `reslab train` has no flag for: the dataset sets the first two, and the rest
# were never trainer flags (a run folder's config.json has no such field).
NOT_FLAGS = {"num_classes", "in_channels", "preact", "block"}


def test_every_option_is_accepted_by_create_model() -> None:
    assert set().union(*(options for _, options in EXAMPLES)) == set(FIELDS)
    for name, options in EXAMPLES:
        model_layout(name, **options)
        config = create_model(name, **dict(reversed(options.items()))).reslab_config
        assert list(config) == ["name", *(k for k in FIELDS if k in options)]  # the record's order


def test_every_factory_takes_the_shared_options_and_its_own() -> None:
    shared = [k for k, f in FIELDS.items() if not f.metadata["only"]]
    assert names("cifar_resnext_layout") == shared == names("my_layout")
    assert set(names("cifar_layout")) == set(FIELDS)
    assert set(names("wrn_layout")) == set(shared)
    assert set(names("imagenet_layout")) == {*shared, "preact"}


def test_the_trainer_reads_its_model_fields_and_flags_from_the_record() -> None:
    flags = train_options()
    assert set(FIELDS) - set(flags) == NOT_FLAGS
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    kinds = typing.get_type_hints(ModelOptions)
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    train = sub.choices["train"]
    for name, (default, help_text, bounds) in flags.items():
        field = fields[name]
        assert field.default == default and getattr(TrainConfig(), name) == default
        assert field.metadata["help"] == help_text and field.metadata["bounds"] is bounds
        assert hints[name] in (kinds[name], typing.get_args(kinds[name])[0])
        assert train._option_string_actions[flag_name(name)].dest == name
    # The trainer's fields keep their order (config.json's and --help's).
    order = [f for f in fields if f in flags]
    assert order == list(flags)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet20", {"colour": "red"}, "resnet20 has no option colour: valid options are "),
        ("wrn16_8", {"preact": True}, "wrn16_8 has no option preact"),
        ("resnet18", {"block": "basic"}, "resnet18 has no option block"),
        ("resnet20", {"gate_bias": "-6"}, "gate_bias must be a number in"),
        ("resnet20", {"plain": "yes"}, "plain must be True or False, got 'yes'"),
        ("resnet20", {"activation": 1}, "activation must be a string, got 1"),
        ("resnet20", {"init": "xavier"}, "init 'xavier' is not one of kaiming, dirac, "),
        ("resnet20", {"norm": "layer"}, "norm 'layer' is not one of batch, none"),
        ("resnet18", {"norm": "none"}, "resnet18 has no option norm"),
    ],
)
def test_an_unknown_option_or_a_wrong_type_is_one_line(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        create_model(name, **options)
    assert "\n" not in str(info.value)


def test_a_factory_called_directly_checks_its_options_too() -> None:
    from reslab.models import cifar_layout, wrn_layout

    with pytest.raises(ModelError, match="wrn_layout has no option preact"):
        wrn_layout(16, 8, preact=True)
    with pytest.raises(ModelError, match="width must be a positive number"):
        wrn_layout(16, 8, width=0)
    assert cifar_layout(20, shortcut=None) == cifar_layout(20)
