"""Wide ResNets and ResNeXt: the papers' parameter counts, torchvision's layout, plain twins.

The big nets are built on the meta device, which allocates no memory and fills no weights:
counts and shapes come for free. Real forward and backward passes run at a small width.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from reslab.blocks import Bottleneck, PreActBasicBlock, Projection, WideBasicBlock
from reslab.errors import ModelError
from reslab.models import (
    count_params,
    create_model,
    layout_params,
    model_layout,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
RESNEXT50 = json.loads((FIXTURES / "torchvision_resnext50_32x4d_state_dict.json").read_text())
RESNET50 = json.loads((FIXTURES / "torchvision_resnet_state_dicts.json").read_text())

# (the paper's count in millions, reslab's exact count). Zagoruyko & Komodakis 2016 Table 4
# and Xie et al. 2017 Table 7 (both CIFAR-10). Torchvision documents resnext50_32x4d's count.
PAPER_PARAMS_M = {
    "wrn28_10": (36.5, 36_479_194),
    "wrn16_8": (11.0, 10_961_370),
    "wrn40_4": (8.9, 8_949_210),
    "resnext29_8x64d": (34.4, 34_426_698),
    "resnext29_16x64d": (68.1, 68_155_210),
}


def _meta(name: str, **options: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def _wrn_params(depth: int, k: int, classes: int = 10, plain: bool = False) -> int:
    """WRN-d-k counted from the paper's Table 1, independently of reslab's counter."""
    n = (depth - 4) // 6
    total, c_in = 3 * 16 * 9, 16  # the 3×3 stem, no BN after it (pre-activation)
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            # BN-ReLU-3×3, BN-ReLU-3×3; a 1×1 projection (no BN) where the width changes.
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
            total += c_in * width if c_in != width and not plain else 0
            c_in = width
    return total + 2 * c_in + c_in * classes + classes  # final BN, fc


def _resnext29_params(c: int, d: int, classes: int = 10, bn: bool = True) -> int:
    """ResNeXt-29 C×dd as the official code lays it out (3 grouped bottlenecks per stage)."""
    b = 2 if bn else 0
    total, c_in = 3 * 64 * 9 + b * 64, 64
    for planes in (64, 128, 256):
        inner, out = c * d * planes // 64, 4 * planes
        for _ in range(3):
            total += c_in * inner + inner * (inner // c) * 9 + inner * out + b * (2 * inner + out)
            total += c_in * out + b * out if c_in != out else 0
            c_in = out
    return total + c_in * classes + classes


def _without_bn(model: nn.Module) -> int:
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in bn)


@pytest.mark.parametrize(("name", "paper"), PAPER_PARAMS_M.items())
def test_parameter_counts_match_the_papers(name: str, paper: tuple[float, int]) -> None:
    rounded, exact = paper
    model = _meta(name)
    n = count_params(model)
    assert n == exact == layout_params(model_layout(name))
    if name.startswith("wrn"):
        depth, k = map(int, re.findall(r"\d+", name))
        assert n == _wrn_params(depth, k)
        assert round(n / 1e6, 1) == rounded
        assert count_params(_meta(f"plain_{name}")) == _wrn_params(depth, k, plain=True)
    else:
        c, d = map(int, re.findall(r"\d+", name)[1:])
        assert n == _resnext29_params(c, d)
        # Xie et al. count convolution and fc weights, as He et al. 2016 do: 16×64d is 68.2M
        # with BN's scales and shifts.
        assert _without_bn(model) == _resnext29_params(c, d, bn=False)
        assert round(_without_bn(model) / 1e6, 1) == rounded


def test_resnext50_matches_torchvision_key_for_key() -> None:
    model = _meta("resnext50_32x4d")
    expected = RESNEXT50["models"]["resnext50_32x4d"]
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == expected["state_dict"]
    assert count_params(model) == expected["params"] == 25_028_904
    # Loads strict: every key, every shape (meta tensors: nothing is copied).
    state = {k: torch.empty(s, device="meta") for k, s in expected["state_dict"]}
    model.load_state_dict(state, strict=True, assign=True)
    # Its plain twin loses only the four projections.
    assert layout_params(model_layout("plain_resnext50_32x4d")) == 25_028_904 - 2_776_576


def test_the_resnext50_fixture_follows_from_resnet50_by_torchvisions_formula() -> None:
    # The fixture's own derivation, repeated: torchvision's Bottleneck is
    # width = int(planes * (base_width / 64.)) * groups, and conv2 is grouped.
    planes = {"1": 64, "2": 128, "3": 256, "4": 512}
    derived = []
    for key, shape in RESNET50["models"]["resnet50"]["state_dict"]:
        m = re.match(r"layer(\d)\.\d+\.(conv1|bn1|conv2|bn2|conv3)\.", key)
        layer = m.group(2) if m else ""
        width = int(planes[m.group(1)] * (4 / 64.0)) * 32 if m else 0
        if layer == "conv1":
            shape = [width, *shape[1:]]
        elif layer == "conv2":
            shape = [width, width // 32, 3, 3]
        elif layer == "conv3":
            shape = [shape[0], width, *shape[2:]]
        elif layer and shape:  # bn1, bn2: their vectors, not num_batches_tracked
            shape = [width]
        derived.append([key, shape])
    assert derived == RESNEXT50["models"]["resnext50_32x4d"]["state_dict"]


@pytest.mark.parametrize(
    ("name", "params"),
    # torchvision's documented counts for its other ResNeXts, reached by the generic names.
    [("resnext101_32x8d", 88_791_336), ("resnext101_64x4d", 83_455_272)],
)
def test_generic_imagenet_resnext_names_are_torchvisions(name: str, params: int) -> None:
    layout = model_layout(name)
    assert layout.stem == "imagenet" and layout.layers == (3, 4, 23, 3)
    assert layout_params(layout) == params


def test_the_wide_block_is_preactivation_with_dropout_and_projections_without_bn() -> None:
    model = create_model("wrn16_8", width=0.25, drop_rate=0.3)
    first = model.layer1[0]
    assert type(first) is WideBasicBlock and model.preact and model.depth == 14
    assert isinstance(first.shortcut, Projection) and len(first.shortcut) == 1  # 1×1, no BN
    assert first.dropout.p == 0.3 and isinstance(model.bn1, nn.Identity)
    assert model.conv1.out_channels == 4 and first.conv1.out_channels == 32  # 16, 16·8, ×0.25
    assert isinstance(model.layer1[1].shortcut, nn.Identity)
    # drop_rate=0 computes exactly the pre-activation basic block, same weights.
    wide = WideBasicBlock(8, 16, 2).eval()
    preact = PreActBasicBlock(8, 16, 2).eval()
    preact.load_state_dict(wide.state_dict())
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(wide(x), preact(x), rtol=0, atol=0)
    # Dropout sits on the branch only: in train mode it draws, in eval mode it does not.
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), model(x))
    first.train()
    assert not torch.equal(first(model.conv1(x)), first(model.conv1(x)))


def test_resnext_blocks_are_grouped_bottlenecks() -> None:
    model = create_model("resnext29_8x64d", width=0.25)
    block = model.layer3[0]
    assert type(block) is Bottleneck and block.conv2.groups == 8
    # planes 256·0.25 = 64, each of the 8 groups 64·64/64 = 64 wide: 512 channels inside.
    assert block.conv2.in_channels == block.conv2.out_channels == 512
    assert block.conv3.out_channels == 256 and model.fc.in_features == 256
    assert isinstance(model.layer1[0].shortcut, Projection)  # 16 -> 64 channels: option B
    twin = create_model("plain_resnext29_8x64d", width=0.25)
    assert twin.plain and all(b.shortcut is None for b in twin.blocks())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wrn22_8", {"depth": 20, "layers": (3, 3, 3), "widths": (128, 256, 512)}),
        ("plain_wrn10_1", {"plain": True, "layers": (1, 1, 1), "widths": (16, 32, 64)}),
        ("resnext29_4x32d", {"groups": 4, "base_width": 32, "stem": "cifar"}),
        ("resnext38_2x16d", {"layers": (4, 4, 4), "groups": 2}),
        ("plain_resnext50_8x8d", {"plain": True, "stem": "imagenet", "groups": 8}),
    ],
)
def test_generic_names(name: str, expected: dict[str, Any]) -> None:
    layout = model_layout(name)
    assert {k: getattr(layout, k) for k in expected} == expected
    residual = name.removeprefix("plain_")
    assert model_layout(residual, plain=True) == model_layout(f"plain_{residual}")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("wrn27_10", {}, r"wide ResNet depth 27 is not 6n\+4: try 16, 22, 28, 40"),
        ("wrn28_0", {}, "widen_factor must be a positive integer, got 0"),
        ("resnext30_8x64d", {}, r"depth 30 is not 9n\+2"),
        ("resnext29_0x64d", {}, "cardinality must be a positive integer, got 0"),
        ("resnext29_8x0d", {}, "bottleneck_width must be a positive integer, got 0"),
        ("wrn28_10", {"drop_rate": 1.0}, r"drop_rate must be a number in \[0, 1\), got 1.0"),
        ("wrn28_10", {"drop_rate": "0.3"}, "drop_rate must be a number"),
        ("plain_wrn16_8", {"drop_path_rate": 0.2}, "a plain net has none"),
        ("wrn28_10", {"preact": True}, "wrn28_10 has no option preact"),
        ("wrn28_10", {"widen_factor": 4}, "wrn28_10 has no option widen_factor"),
        ("resnext29_8x64d", {"zero_init_residual": True, "plain": True}, "zero_init_residual"),
    ],
)
def test_bad_wide_names_and_options_are_one_line_model_errors(
    name: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        model_layout(name, **kwargs)
    assert "\n" not in str(info.value)


def test_a_block_refuses_options_it_does_not_have() -> None:
    from reslab.models import ResNetLayout

    with pytest.raises(ModelError, match="groups=4 needs a block that has it"):
        ResNetLayout(PreActBasicBlock, (1, 1, 1), (16, 32, 64), groups=4)
    with pytest.raises(ModelError, match="norm='none' needs a block that has it"):
        ResNetLayout(Bottleneck, (1, 1, 1), (16, 32, 64), norm="none")


@pytest.mark.parametrize("name", ["wrn16_8", "plain_wrn16_8", "resnext29_8x64d"])
def test_the_probes_and_zero_init_see_every_wide_block(name: str) -> None:
    from reslab.measure.probes import gradient_flow, layer_responses, residual_magnitude

    model = create_model(name, width=0.25)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    n_blocks = len(model.blocks())
    assert len(gradient_flow(model.train(), x, y).input_grad_norms) == n_blocks
    assert len(residual_magnitude(model, x).ratios) == n_blocks
    assert len(layer_responses(model, x).stds) == n_blocks * (2 if "wrn" in name else 1)
    if not model.plain:
        zeroed = create_model(name, width=0.25, zero_init_residual=True).eval()
        for block in zeroed.blocks():
            assert block.branch(torch.randn(2, block.conv1.in_channels, 4, 4)).abs().max() == 0


def test_reslab_train_trains_a_wide_resnet_by_name(tmp_path: Path) -> None:
    from reslab.cli import main
    from reslab.weights import load_model

    out = tmp_path / "wrn"
    argv = ["train", "--model", "wrn16_8", "--width", "0.125", "--dataset", "digits"]
    # Contiguous tensors: torch 2.13's CPU backward of a narrow strided 1×1 conv in
    # channels_last can corrupt memory, and this net has two such projections (16→32, 32→64).
    argv += ["--steps", "2", "--batch-size", "32", "--no-channels-last", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["model"] == "wrn16_8" and result["steps"] == 2
    net = load_model(out / "checkpoints" / "last.safetensors")
    assert isinstance(net.layer1[0], WideBasicBlock) and net.conv1.in_channels == 1
    assert (
        result["params"]
        == count_params(net)
        == layout_params(model_layout("wrn16_8", width=0.125, in_channels=1))
    )
    assert math.isfinite(result["train_loss"])
