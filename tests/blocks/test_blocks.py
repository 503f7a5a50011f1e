"""Blocks: the residual formula, shortcut options A/B/C, plain twins, zero-init."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from reslab.blocks import (
    BasicBlock,
    Bottleneck,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    Projection,
    Residual,
    ResidualMLP,
    make_shortcut,
)
from reslab.errors import ModelError

BLOCK_TYPES = [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck]


def test_residual_adds_branch_to_identity() -> None:
    branch = nn.Linear(3, 3)
    x = torch.randn(4, 3)
    block = Residual(branch)
    torch.testing.assert_close(block(x), x + branch(x))


def test_residual_with_projection_and_plain() -> None:
    branch, proj = nn.Linear(3, 2), nn.Linear(3, 2, bias=False)
    x = torch.randn(4, 3)
    torch.testing.assert_close(Residual(branch, proj)(x), proj(x) + branch(x))
    plain = Residual(branch, proj, plain=True)
    assert plain.shortcut is None
    torch.testing.assert_close(plain(x), branch(x))


def test_residual_mlp_shapes_zero_init_and_plain() -> None:
    x = torch.randn(5, 16)
    assert ResidualMLP(16, 32)(x).shape == (5, 16)
    assert ResidualMLP(16, 32, 8)(x).shape == (5, 8)
    torch.testing.assert_close(ResidualMLP(16, zero_init=True)(x), x)
    plain = ResidualMLP(16, plain=True)
    torch.testing.assert_close(plain(x), plain.branch(x))


@pytest.mark.parametrize(
    ("option", "in_planes", "out_planes", "stride", "expected"),
    [
        ("A", 16, 16, 1, nn.Identity),
        ("A", 16, 32, 2, PadShortcut),
        ("B", 16, 16, 1, nn.Identity),
        ("B", 16, 32, 2, Projection),
        ("C", 16, 16, 1, Projection),
        ("c", 16, 32, 2, Projection),
    ],
)
def test_shortcut_options(
    option: str, in_planes: int, out_planes: int, stride: int, expected: type
) -> None:
    assert isinstance(make_shortcut(option, in_planes, out_planes, stride), expected)


def test_bad_shortcut_option() -> None:
    with pytest.raises(ModelError, match="not one of A, B, C"):
        make_shortcut("D", 16, 32, 2)


def test_pad_shortcut_subsamples_and_zero_pads_evenly() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert not list(PadShortcut(16, 32, 2).parameters())


@pytest.mark.parametrize("block_cls", BLOCK_TYPES)
@pytest.mark.parametrize("option", ["A", "B", "C"])
def test_plain_twin_differs_only_by_the_shortcut(block_cls: type, option: str) -> None:
    in_planes = 4 * block_cls.expansion
    torch.manual_seed(0)
    res = block_cls(in_planes, 8, 2, shortcut=option)
    torch.manual_seed(0)
    plain = block_cls(in_planes, 8, 2, shortcut=option, plain=True)
    assert plain.shortcut is None and res.shortcut is not None
    res_sd, plain_sd = res.state_dict(), plain.state_dict()
    branch_keys = [k for k in res_sd if not k.startswith("downsample.")]
    assert branch_keys == list(plain_sd)
    plain.load_state_dict(plain_sd | {k: res_sd[k] for k in plain_sd})
    x = torch.randn(2, in_planes, 8, 8)
    res.eval(), plain.eval()
    # Same branch weights: the plain output is the residual output without the shortcut term.
    torch.testing.assert_close(plain.branch(x), res.branch(x))


@pytest.mark.parametrize("block_cls", BLOCK_TYPES)
@pytest.mark.parametrize(("option", "stride"), [("A", 1), ("A", 2), ("B", 2), ("C", 1)])
def test_zero_init_block_outputs_its_shortcut(block_cls: type, option: str, stride: int) -> None:
    in_planes = 4 * block_cls.expansion
    block = block_cls(in_planes, 8, stride, shortcut=option)
    block.zero_init_last()
    x = torch.relu(torch.randn(3, in_planes, 8, 8))  # block inputs follow a ReLU or a sum
    with torch.no_grad():
        skip = block.shortcut(x if not isinstance(block.shortcut, Projection) else _pre(block, x))
        out = block(x)
    # Post-activation blocks apply their ReLU after the addition; F(x) adds exactly nothing.
    expected = skip if block_cls in (PreActBasicBlock, PreActBottleneck) else torch.relu(skip)
    assert torch.equal(out, expected)


def _pre(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block, PreActBasicBlock | PreActBottleneck):
        return block.relu(block.bn1(x))
    return x


def test_option_a_pickles_and_deepcopies(tmp_path: object) -> None:
    block = BasicBlock(16, 32, 2, shortcut="A").eval()
    x = torch.randn(2, 16, 8, 8)
    buf = io.BytesIO()
    torch.save(block, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # our own object, saved just above
    torch.testing.assert_close(loaded(x), block(x))
    torch.testing.assert_close(copy.deepcopy(block)(x), block(x))


@pytest.mark.parametrize("block_cls", BLOCK_TYPES)
def test_branch_convs_counts_the_convolutions_on_the_branch(block_cls: type) -> None:
    # The net's depth and the layout's MAC count read it; the modules are the truth.
    block = block_cls(4 * block_cls.expansion, 8, 2, shortcut="B")
    convs = [n for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    on_branch = [n for n in convs if not n.startswith("downsample.")]
    assert len(on_branch) == block_cls.branch_convs
    assert len(convs) == block_cls.branch_convs + 1  # and one projection on the shortcut
