"""Parameter and MAC counts: of built models, and of layouts alone (what ``reslab models`` uses)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from reslab.models import (
    count_macs,
    count_params,
    create_model,
    layout_macs,
    layout_params,
    list_models,
    model_layout,
)


def _forward_macs(model: nn.Module, size: tuple[int, ...]) -> int:
    """The count as reslab first made it: hooks on a real forward pass, written out again."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += out[0].numel() * k
        else:
            total += m.in_features * m.out_features

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    device = next(model.parameters()).device  # the meta device counts shapes, no arithmetic
    with torch.no_grad():
        model.eval()(torch.zeros(1, *size, device=device))
    for h in handles:
        h.remove()
    return total


def test_macs_match_known_figures() -> None:
    # ResNet-50 is 4.09 GMACs at 224x224; ResNet-18 1.81; CIFAR ResNet-20 about 41M.
    for name, scale, known in [("resnet50", 1e9, 4.09), ("resnet18", 1e9, 1.81)]:
        assert round(count_macs(create_model(name)) / scale, 2) == known
        assert round(layout_macs(model_layout(name)) / scale, 2) == known
    assert round(count_macs(create_model("resnet20")) / 1e6) == 41
    assert round(layout_macs(model_layout("resnet20")) / 1e6) == 41


# Today's numbers, as `reslab models` printed them before it stopped building the nets.
KNOWN_MACS = {
    "resnet20": 40_551_040,
    "resnet1202": 2_829_238_912,
    "preact_resnet164": 247_646_720,
    "preact_resnet1001": 1_490_995_712,
    "resnet50": 4_089_184_256,
    "resnet152": 11_513_626_624,
    "plain34": 3_644_493_824,
}


@pytest.mark.parametrize(("name", "macs"), KNOWN_MACS.items())
def test_layout_macs_are_todays_numbers(name: str, macs: int) -> None:
    assert layout_macs(model_layout(name)) == macs


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet20", {}),
        ("plain56", {"shortcut": "B"}),
        ("resnet20", {"shortcut": "C", "width": 0.3, "in_channels": 1, "num_classes": 7}),
        ("preact_resnet164", {}),
        ("preact_plain56", {}),
        ("resnet29", {"block": "bottleneck", "shortcut": "A"}),
        ("cifar_resnet50", {}),
        ("resnet18", {"shortcut": "C", "preact": True, "width": 0.5}),
        ("resnet50", {}),
        ("plain50", {"width": 0.25}),
        ("resnet50", {"shortcut": "A", "width": 0.125, "num_classes": 3}),
        ("wrn16_8", {"width": 0.25, "drop_rate": 0.3, "in_channels": 1}),
        ("plain_wrn40_4", {"width": 0.25, "shortcut": "C"}),
        ("resnext29_8x64d", {"width": 0.125, "num_classes": 100}),
        ("resnext29_2x3d", {"width": 0.25, "shortcut": "A"}),
        ("resnext50_32x4d", {"width": 0.125}),
        ("plain_resnext50_32x4d", {"width": 0.25}),
    ],
)
def test_layout_counts_equal_the_built_models(name: str, options: dict[str, Any]) -> None:
    layout = model_layout(name, **options)
    model = create_model(name, **options)
    assert layout_params(layout) == count_params(model)
    c = layout.in_channels
    # The native size for CIFAR nets; a full 224×224 ResNet-50 pass would be slow on CPU.
    native = layout.input_size if layout.stem == "cifar" else (c, 96, 96)
    for size in [native, (c, 8, 8), (c, 37, 23)]:
        expected = _forward_macs(model, size)
        assert layout_macs(layout, size) == expected
        assert count_macs(model, size) == expected


def test_every_registered_layout_is_counted_like_its_built_model() -> None:
    # Parameters of the built nets are checked by the registry loop; MACs of the small ones
    # here against a real forward pass (the deep ones and the ImageNet ResNets are covered by
    # KNOWN_MACS above), of the wide ones against a forward pass on the meta device (shapes
    # only, no arithmetic).
    for name in list_models():
        layout = model_layout(name)
        if layout.depth > 200 or (layout.stem == "imagenet" and layout.groups == 1):
            continue
        if layout.stem == "imagenet" or layout_params(layout) > 2_000_000:
            with torch.device("meta"):
                model = create_model(name)
        else:
            model = create_model(name)
        assert layout_macs(layout) == _forward_macs(model, layout.input_size), name


def test_count_macs_leaves_the_model_as_it_was() -> None:
    model = create_model("resnet20").train()
    count_macs(model)
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
