"""The registry: every name builds and trains, every residual name has its plain twin, and
``create_model`` refuses what it cannot build in one line."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reslab.blocks import Bottleneck, PreActBasicBlock, PreActBottleneck
from reslab.errors import ModelError
from reslab.models import (
    CIFAR_DEPTHS,
    ResNet,
    cifar_model_name,
    count_params,
    create_model,
    layout_params,
    list_models,
    model_layout,
)

NAMES = list_models()
RESIDUAL_NAMES = [n for n in NAMES if not model_layout(n).plain]
# Nets this big get their gradients checked at an eighth of the width (the same modules, 64
# times cheaper) and their full-width count on the meta device, where no memory is filled.
BIG = 12_000_000


def _twin(name: str) -> str:
    """The module docstring's rule: replace ``resnet`` by ``plain``, else prefix ``plain_``.

    A plain name is its own twin.
    """
    if "resnet" in name or "plain" in name:
        return name.replace("resnet", "plain")
    return f"plain_{name}"


def _shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", NAMES)
def test_every_model_builds_and_trains(name: str) -> None:
    full = layout_params(model_layout(name))
    if full > BIG:
        with torch.device("meta"):
            assert count_params(create_model(name)) == full
    width = 0.125 if full > BIG else 1.0
    model = create_model(name, width=width)
    assert isinstance(model, ResNet)
    assert count_params(model) == layout_params(model_layout(name, width=width)) > 0
    # Small inputs keep this cheap: 8×8 for CIFAR nets, 32×32 (1×1 after the last stage) for
    # ImageNet nets. Every parameter must get a finite gradient, ResNet-1202 and plain152 too.
    size = 8 if model.input_size[1] == 32 else 32
    # The gradient reaching the stem of plain1202 and preact_plain1001 at initialisation is
    # about 1e90, the gradient explosion of deep nets with BN and no shortcuts (Yang et al.
    # 2019, arXiv:1902.08129): float32 overflows, so those two are checked in float64.
    dtype = torch.float64 if model.plain and model.depth > 1000 else torch.float32
    model.to(dtype)
    out = model(torch.randn(2, 3, size, size, dtype=dtype))
    assert out.shape == (2, model.fc.out_features)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_plain_true_builds_exactly_the_plain_twin(name: str) -> None:
    twin = _twin(name)
    assert twin in NAMES, f"{name} has no plain twin {twin}"
    assert model_layout(name, plain=True) == model_layout(twin)
    if model_layout(twin).depth > 200:
        return  # equal layouts make equal nets (ResNet.from_layout); spare the 1000-layer builds
    # At an eighth of the width: the same keys, every shape scaled alike, 64 times cheaper.
    built = create_model(name, plain=True, width=0.125)
    assert built.plain and _shapes(built) == _shapes(create_model(twin, width=0.125))


@pytest.mark.parametrize("name", ["plain50", "plain101", "plain152"])
def test_deep_plain_names_are_the_imagenet_bottleneck_twins(name: str) -> None:
    layout = model_layout(name)
    assert layout.plain and layout.stem == "imagenet" and layout.block is Bottleneck
    assert layout == model_layout(name.replace("plain", "resnet"), plain=True)
    assert layout.depth == int(name[len("plain") :])


def test_imagenet_plain_twins_lose_only_the_projections() -> None:
    # Four projections, one per stage, whatever the depth: 2,776,576 parameters.
    for depth, residual in [(50, 25_557_032), (101, 44_549_160), (152, 60_192_808)]:
        assert layout_params(model_layout(f"plain{depth}")) == residual - 2_776_576


@pytest.mark.parametrize("name", ["resnet110", "plain110", "resnet164", "plain1001", "resnet56"])
def test_preact_option_builds_the_preact_name(name: str) -> None:
    preact_name = f"preact_{name}"
    layout = model_layout(name, preact=True)
    assert layout == model_layout(preact_name)
    assert layout.shortcut == "B"
    if layout.depth > 200:
        return
    torch.manual_seed(0)
    a = create_model(name, preact=True)
    torch.manual_seed(0)
    b = create_model(preact_name)
    assert a.shortcut_option == b.shortcut_option == "B"
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(v, state_b[k]) for k, v in state_a.items())


def test_preact_blocks_by_depth() -> None:
    assert model_layout("preact_resnet110").block is PreActBasicBlock
    assert model_layout("preact_resnet164").block is PreActBottleneck
    assert model_layout("preact_plain1001").block is PreActBottleneck


def test_cifar_names_never_mean_an_imagenet_net() -> None:
    # Today's studies build these names (20, 32, 56: the demo's degradation study).
    for depth in (20, 32, 44, 56, 110, 1202):
        assert cifar_model_name(depth, plain=False) == f"resnet{depth}"
        assert cifar_model_name(depth, plain=True) == f"plain{depth}"
    assert cifar_model_name(50, plain=False) == "cifar_resnet50"
    assert cifar_model_name(152, plain=True) == "cifar_plain152"
    for depth in range(8, 1203, 6):
        for plain in (False, True):
            layout = model_layout(cifar_model_name(depth, plain))
            assert layout.stem == "cifar" and layout.depth == depth and layout.plain is plain
    res, plain_net = (create_model(cifar_model_name(50, p)) for p in (False, True))
    assert res.input_size == plain_net.input_size == (3, 32, 32)
    assert count_params(res) == count_params(plain_net)
    with pytest.raises(ModelError, match=r"not 6n\+2"):
        cifar_model_name(18, plain=False)


def test_overrides() -> None:
    model = create_model("resnet20", num_classes=100, in_channels=1, width=2)
    assert model.fc.out_features == 100
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 32
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 100)
    assert create_model("resnet20", shortcut="B", plain=True).plain
    assert not create_model("plain20", plain=False).plain
    assert create_model("resnet20").reslab_config == {"name": "resnet20"}
    assert create_model("plain74", width=0.5).reslab_config == {"name": "plain74", "width": 0.5}
    # The header of a weights file keeps the trainer's key order.
    config = create_model("resnet8", zero_init_residual=False, in_channels=1).reslab_config
    assert list(config) == ["name", "in_channels", "zero_init_residual"]


def test_any_valid_cifar_depth_by_name() -> None:
    assert len(create_model("resnet74").blocks()) == 36
    assert create_model("plain74").plain
    assert len(create_model("preact_resnet56").blocks()) == 27
    assert create_model("preact_plain56").plain and create_model("preact_plain56").preact


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet21", {}, r"depth 21 is not 6n\+2: try 20, 32, 44, 56, 110"),
        ("resnet20x", {}, "unknown model 'resnet20x'.*did you mean"),
        ("preact_resnet165", {"block": "bottleneck"}, r"not 9n\+2"),
        ("resnet20", {"shortcut": "Z"}, "not one of A, B, C"),
        ("resnet20", {"colour": "red"}, "no option colour"),
        ("resnet50", {"block": "basic"}, "resnet50 has no option block: valid options are"),
        ("resnet20", {"num_classes": -1}, "num_classes must be an integer, zero or positive"),
        ("resnet20", {"width": -1}, "width must be a positive number"),
    ],
)
def test_bad_names_and_options_raise_value_errors(
    name: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (None, {}, "model name must be a string such as 'resnet20', got None"),
        (20, {}, "model name must be a string such as 'resnet20', got 20"),
        ("resnet20", {"plain": "no"}, "plain must be True or False, got 'no'"),
        ("resnet20", {"plain": 1}, "plain must be True or False, got 1"),
        ("resnet20", {"preact": 0}, "preact must be True or False, got 0"),
        ("resnet20", {"zero_init_residual": "yes"}, "zero_init_residual must be True or False"),
        ("resnet20", {"width": "2"}, "width must be a positive number, at most 64, got '2'"),
        (
            "resnet20",
            {"num_classes": 2.0},
            "num_classes must be an integer, zero or positive, at most 100,000, got 2.0",
        ),
        ("resnet20", {"shortcut": 5}, "shortcut must be a string, got 5"),
        ("resnet20", {"block": 3}, "block must be a string, got 3"),
        ("resnet20", {"shortcut_mode": {}}, "shortcut_mode must be a string, got {}"),
        ("resnet20", {"shortcut_dropout": 10**400}, "shortcut_dropout must be a number in"),
    ],
)
def test_wrong_types_raise_one_line_model_errors(
    name: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        create_model(name, **kwargs)
    assert "\n" not in str(info.value)


def test_list_models_covers_the_papers() -> None:
    for depth in CIFAR_DEPTHS:
        assert f"resnet{depth}" in NAMES and f"plain{depth}" in NAMES
    for name in ["preact_resnet164", "preact_resnet1001", "resnet18", "resnet152", "plain101"]:
        assert name in NAMES
    for name in ["wrn28_10", "wrn16_8", "wrn40_4", "resnext29_8x64d", "resnext29_16x64d"]:
        assert name in NAMES and f"plain_{name}" in NAMES
    assert "resnext50_32x4d" in NAMES and "plain_resnext50_32x4d" in NAMES
    assert list_models("^plain") == [n for n in NAMES if n.startswith("plain")]
    assert len(NAMES) == 2 * len(RESIDUAL_NAMES)
    assert sorted(map(_twin, RESIDUAL_NAMES)) == sorted(set(NAMES) - set(RESIDUAL_NAMES))
    with pytest.raises(ModelError, match=r"filter '\(' is not a regular expression"):
        list_models("(")
