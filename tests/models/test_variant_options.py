"""He et al. 2016's variants as create_model options: nets, counts, configs, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from reslab.blocks import ACTIVATIONS, GatedAdd, Projection
from reslab.errors import ModelError
from reslab.models import (
    count_macs,
    count_params,
    create_model,
    layout_macs,
    layout_params,
    list_models,
    model_layout,
)
from reslab.weights import load_model, save_weights

SHORTCUT_VARIANTS: list[dict[str, Any]] = [
    {"shortcut_mode": "scale"},
    {"shortcut_mode": "scale", "shortcut_scale": 0.5, "branch_scale": 0.5},
    {"shortcut_mode": "exclusive_gate"},
    {"shortcut_mode": "shortcut_gate", "gate_bias": 0.0},
    {"shortcut_mode": "conv"},
    {"shortcut_mode": "dropout", "shortcut_dropout": 0.3},
]
PLACEMENTS: list[dict[str, Any]] = [{"activation": a} for a in ACTIVATIONS]
ALL = SHORTCUT_VARIANTS + PLACEMENTS
# Basic and bottleneck blocks, post- and pre-activation, option A and B shortcuts.
NAMES = ["resnet20", "preact_resnet20", "resnet29"]


def _build(name: str, options: dict[str, Any]) -> nn.Module:
    extra = {"block": "bottleneck"} if name == "resnet29" else {}
    if name.startswith("preact_") and "activation" in options:
        name = name.removeprefix("preact_")
    return create_model(name, **extra, **options)


def _layout(name: str, options: dict[str, Any]) -> Any:
    extra = {"block": "bottleneck"} if name == "resnet29" else {}
    if name.startswith("preact_") and "activation" in options:
        name = name.removeprefix("preact_")
    return model_layout(name, **extra, **options)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("options", ALL, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_counts_from_the_layout_match_the_built_net(name: str, options: dict[str, Any]) -> None:
    model = _build(name, options)
    layout = _layout(name, options)
    assert count_params(model) == layout_params(layout)
    assert count_macs(model) == layout_macs(layout)
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()  # builds, runs, trains


def test_gates_add_their_1x1_convs_and_biases() -> None:
    base, gated = create_model("resnet20"), create_model("resnet20", shortcut_mode="exclusive_gate")
    # Every block: W_g (in × out) and b_g (out); stage widths 16, 32, 64, three blocks each.
    extra = sum(
        c_in * c_out + c_out
        for c_in, c_out in [(16, 16)] * 3
        + [(16, 32)]
        + [(32, 32)] * 2
        + [(32, 64)]
        + [(64, 64)] * 2
    )
    assert count_params(gated) - count_params(base) == extra == 13_904
    gates = [m for m in gated.modules() if isinstance(m, GatedAdd)]
    assert len(gates) == 9 and all(torch.all(g.gate.bias == -6.0) for g in gates)  # type: ignore[union-attr]


def test_conv_mode_is_option_c_exactly() -> None:
    torch.manual_seed(0)
    conv = create_model("resnet20", shortcut_mode="conv")
    torch.manual_seed(0)
    c = create_model("resnet20", shortcut="C")
    assert sum(isinstance(m, Projection) for m in conv.modules()) == 9
    for (k1, v1), (k2, v2) in zip(conv.state_dict().items(), c.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_full_preact_activation_is_the_preact_net() -> None:
    torch.manual_seed(0)
    a = create_model("resnet110", activation="full_preact")
    torch.manual_seed(0)
    b = create_model("preact_resnet110")
    assert type(a.layer1[0]) is type(b.layer1[0])
    for (k1, v1), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("options", [*SHORTCUT_VARIANTS[:2], SHORTCUT_VARIANTS[-1]])
def test_parameter_free_variants_keep_the_weights_and_eval_identity(
    options: dict[str, Any],
) -> None:
    torch.manual_seed(0)
    base = create_model("resnet20").eval()
    torch.manual_seed(0)
    variant = create_model("resnet20", **options).eval()
    for (k1, v1), (k2, v2) in zip(
        base.state_dict().items(), variant.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 3, 32, 32)
    same = torch.allclose(base(x), variant(x))
    # Dropout in eval mode is the identity block; constant scaling λ = 0.5 is not.
    assert same == (options["shortcut_mode"] == "dropout")


def test_placements_keep_the_keys_and_weights_and_differ_in_the_forward() -> None:
    torch.manual_seed(0)
    base = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    for activation in ("bn_after_add", "relu_before_add", "relu_preact"):
        torch.manual_seed(0)
        moved = create_model("resnet20", activation=activation).eval()
        assert moved.state_dict().keys() == base.state_dict().keys()
        assert all(torch.equal(moved.state_dict()[k], v) for k, v in base.state_dict().items())
        assert not torch.allclose(moved(x), base(x))
        assert moved.activation == activation
    assert isinstance(create_model("resnet20", activation="relu_preact").bn_final, nn.ReLU)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_placement_has_its_plain_twin(activation: str) -> None:
    res = create_model("resnet20", activation=activation)
    plain = create_model("resnet20", activation=activation, plain=True)
    assert all(b.shortcut is None for b in plain.blocks())
    assert count_params(plain) <= count_params(res)


@pytest.mark.parametrize("options", ALL[:4] + ALL[-3:], ids=str)
def test_options_round_trip_through_a_weights_file(options: dict[str, Any], tmp_path: Path) -> None:
    model = create_model("resnet20", in_channels=1, **options).eval()
    assert model.reslab_config == {"name": "resnet20", "in_channels": 1, **options}
    save_weights(model, tmp_path / "net.safetensors")
    again = load_model(tmp_path / "net.safetensors").eval()
    assert again.reslab_config == model.reslab_config
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(again(x), model(x))


def test_every_registered_name_defaults_to_the_original_identity_block() -> None:
    for name in list_models():
        layout = model_layout(name)
        assert layout.variant.shortcut_mode == "identity"
        # Wide ResNets are pre-activation nets by definition (Zagoruyko & Komodakis 2016).
        preact = name.startswith(("preact_", "wrn", "plain_wrn"))
        assert layout.activation == ("full_preact" if preact else "original")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shortcut_mode": "gate"}, "shortcut_mode 'gate' is not one of identity, scale"),
        ({"shortcut_scale": 0.5}, "shortcut_scale is read only by shortcut_mode='scale'"),
        ({"shortcut_mode": "dropout", "gate_bias": -6}, "gate_bias is read only by"),
        (
            {"shortcut_mode": "scale", "shortcut_scale": -1.0},
            r"shortcut_scale must be a number in \[0, 1000\]",
        ),
        (
            {"shortcut_mode": "scale", "branch_scale": 0},
            "branch_scale must be a positive number, at most 1000",
        ),
        ({"shortcut_mode": "scale", "shortcut_scale": "1"}, "shortcut_scale must be a number"),
        ({"shortcut_mode": "exclusive_gate", "gate_bias": float("nan")}, "gate_bias must be"),
        ({"shortcut_mode": "dropout", "shortcut_dropout": 1.0}, "in \\[0, 1\\)"),
        ({"shortcut_mode": "conv", "shortcut": "B"}, "which is option C: drop shortcut='B'"),
        ({"shortcut_mode": "scale", "plain": True}, "a plain net has none"),
        ({"activation": "post"}, "activation 'post' is not one of original, bn_after_add"),
        ({"activation": "original", "preact": True}, "contradicts preact=True"),
        ({"activation": "full_preact", "preact": False}, "contradicts preact=False"),
    ],
)
def test_bad_variant_options_are_one_line_model_errors(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        create_model("resnet20", **options)
    assert "\n" not in str(info.value)


def test_preact_names_refuse_another_placement_and_imagenet_nets_have_none() -> None:
    with pytest.raises(ModelError, match="a preact_ name sets it"):
        create_model("preact_resnet20", activation="relu_preact")
    with pytest.raises(ModelError, match="resnet18 has no option shortcut_mode"):
        create_model("resnet18", shortcut_mode="scale")
