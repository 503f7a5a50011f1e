"""He et al. 2016's variants (arXiv:1603.05027), each against its formula on a tiny input.

Table 1 / Fig. 2 (how the shortcut meets F) and Table 2 / Fig. 4 (where the activations sit),
micrograd-style: every block is compared with the formula written out by hand from the same
modules, in eval mode with random BN statistics so that no BN is an identity by accident.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.blocks import (
    BasicBlock,
    Bottleneck,
    DropoutAdd,
    GatedAdd,
    Projection,
    ShortcutVariant,
    block_class,
)


def _randomise(module: nn.Module) -> nn.Module:
    """Random BN statistics, scales and shifts (a BN that is an identity would hide a bug), in
    float64 so that the formulas match to rounding, in eval mode."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return module.double().eval()


def _basic(variant: ShortcutVariant | None = None, **kw: object) -> BasicBlock:
    return _randomise(BasicBlock(4, 4, variant=variant, **kw))  # type: ignore[return-value,arg-type]


def _f(b: BasicBlock, x: Tensor) -> Tensor:
    """F(x) of the original basic block, composed by hand from its modules."""
    return b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))


X = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# --- Table 1 / Fig. 2: the shortcut variants --------------------------------------------------


def test_identity_is_the_original_formula() -> None:
    b = _basic()
    torch.testing.assert_close(b(X), torch.relu(X + _f(b, X)))


@pytest.mark.parametrize(("lam", "mu"), [(1.0, 1.0), (0.5, 1.0), (0.5, 0.5), (0.0, 1.0)])
def test_constant_scaling(lam: float, mu: float) -> None:
    variant = ShortcutVariant("scale", shortcut_scale=lam, branch_scale=mu)
    b = _basic(variant)
    torch.testing.assert_close(b(X), torch.relu(lam * X + mu * _f(b, X)))


def test_scaling_with_lambda_one_equals_identity() -> None:
    torch.manual_seed(0)
    identity = _basic()
    torch.manual_seed(0)
    scaled = _basic(ShortcutVariant("scale", shortcut_scale=1.0, branch_scale=1.0))
    scaled.load_state_dict(identity.state_dict())
    torch.testing.assert_close(scaled(X), identity(X))


def _gated(mode: str, bias: float, stride: int = 1, out: int = 4) -> BasicBlock:
    b = BasicBlock(4, out, stride, shortcut="A", variant=ShortcutVariant(mode, gate_bias=bias))
    return _randomise(b)  # type: ignore[return-value]


def _gate(b: BasicBlock, x: Tensor, stride: int = 1) -> Tensor:
    """g(x) = σ(W_g x + b_g), the 1×1 convolution written as a matrix product per pixel."""
    assert isinstance(b.join, GatedAdd)
    w, bias = b.join.gate.weight[:, :, 0, 0], b.join.gate.bias
    assert bias is not None
    xs = x[:, :, ::stride, ::stride]
    return torch.sigmoid(torch.einsum("oc,nchw->nohw", w, xs) + bias[None, :, None, None])


@pytest.mark.parametrize("bias", [-6.0, 0.0, 2.0])
def test_exclusive_gating_formula(bias: float) -> None:
    b = _gated("exclusive_gate", bias)
    g = _gate(b, X)
    torch.testing.assert_close(b(X), torch.relu((1 - g) * X + g * _f(b, X)))


@pytest.mark.parametrize("bias", [-6.0, 0.0])
def test_shortcut_only_gating_formula(bias: float) -> None:
    b = _gated("shortcut_gate", bias)
    g = _gate(b, X)
    torch.testing.assert_close(b(X), torch.relu((1 - g) * X + _f(b, X)))


def test_gates_forced_shut_or_open() -> None:
    # b_g = +60: g = 1, the shortcut is gone; b_g = -60: g = 0, the gate is not there.
    for mode, open_, shut in [
        ("exclusive_gate", lambda b: torch.relu(_f(b, X)), lambda b: torch.relu(X)),
        ("shortcut_gate", lambda b: torch.relu(_f(b, X)), lambda b: torch.relu(X + _f(b, X))),
    ]:
        b = _gated(mode, 60.0)
        nn.init.zeros_(b.join.gate.weight)  # type: ignore[union-attr,arg-type]
        torch.testing.assert_close(b(X), open_(b))
        b = _gated(mode, -60.0)
        nn.init.zeros_(b.join.gate.weight)  # type: ignore[union-attr,arg-type]
        torch.testing.assert_close(b(X), shut(b))


def test_gate_on_a_shape_changing_block_reads_the_input_with_the_stride() -> None:
    b = _gated("exclusive_gate", -1.0, stride=2, out=8)
    g = _gate(b, X, stride=2)
    padded = F.pad(X[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))  # option A: 4 -> 8 channels
    f = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(X)))))
    torch.testing.assert_close(b(X), torch.relu((1 - g) * padded + g * f))


def test_gate_bias_starts_at_the_papers_value_and_w_g_is_learnt() -> None:
    b = BasicBlock(4, 4, variant=ShortcutVariant("shortcut_gate"))
    assert isinstance(b.join, GatedAdd)
    assert b.join.gate.bias is not None
    assert torch.all(b.join.gate.bias == -6.0)
    assert b.join.gate.weight.requires_grad and b.join.gate.bias.requires_grad


def test_dropout_shortcut_in_eval_mode_is_the_identity_block() -> None:
    torch.manual_seed(0)
    identity = _basic()
    torch.manual_seed(0)
    dropped = _basic(ShortcutVariant("dropout"))
    dropped.load_state_dict(identity.state_dict())
    torch.testing.assert_close(dropped.eval()(X), identity(X))


def test_dropout_shortcut_while_training_drops_or_doubles_each_unit() -> None:
    s, f = torch.randn(64, 8), torch.randn(64, 8)
    kept = DropoutAdd(0.5).train()(s, s, f) - f
    assert torch.all(torch.isclose(kept, 2 * s) | (kept == 0))
    assert 0.3 < (kept == 0).double().mean() < 0.7


@pytest.mark.parametrize(("in_planes", "out_planes", "stride"), [(4, 4, 1), (4, 8, 2)])
def test_conv_shortcut_equals_a_hand_1x1_conv(in_planes: int, out_planes: int, stride: int) -> None:
    b = BasicBlock(in_planes, out_planes, stride, shortcut="A", variant=ShortcutVariant("conv"))
    _randomise(b)
    proj = b.downsample
    assert isinstance(proj, Projection)  # even where A would pad: Fig. 2e is on every block
    conv, bn = proj[0], proj[1]
    ws = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], X[:, :, ::stride, ::stride])
    shortcut = (ws - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps
    ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    f = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(X)))))
    torch.testing.assert_close(b(X), torch.relu(shortcut + f))


# --- Table 2 / Fig. 4: where the activations sit -----------------------------------------------


def _basic_placements() -> dict[str, Callable[[nn.Module, Tensor], Tensor]]:
    r = torch.relu
    return {
        "original": lambda b, x: r(x + b.bn2(b.conv2(r(b.bn1(b.conv1(x)))))),
        "bn_after_add": lambda b, x: r(b.bn2(x + b.conv2(r(b.bn1(b.conv1(x)))))),
        "relu_before_add": lambda b, x: x + r(b.bn2(b.conv2(r(b.bn1(b.conv1(x)))))),
        "relu_preact": lambda b, x: x + b.bn2(b.conv2(r(b.bn1(b.conv1(r(x)))))),
        "full_preact": lambda b, x: x + b.conv2(r(b.bn2(b.conv1(r(b.bn1(x)))))),
    }


def _bottleneck_f(b: nn.Module, x: Tensor, last_bn: bool = True) -> Tensor:
    r = torch.relu
    out = b.conv3(r(b.bn2(b.conv2(r(b.bn1(b.conv1(x)))))))
    return b.bn3(out) if last_bn else out


def _bottleneck_placements() -> dict[str, Callable[[nn.Module, Tensor], Tensor]]:
    r = torch.relu
    return {
        "original": lambda b, x: r(x + _bottleneck_f(b, x)),
        "bn_after_add": lambda b, x: r(b.bn3(x + _bottleneck_f(b, x, last_bn=False))),
        "relu_before_add": lambda b, x: x + r(_bottleneck_f(b, x)),
        "relu_preact": lambda b, x: x + _bottleneck_f(b, r(x)),
        "full_preact": lambda b, x: x + b.conv3(r(b.bn3(b.conv2(r(b.bn2(b.conv1(r(b.bn1(x))))))))),
    }


@pytest.mark.parametrize("activation", list(_basic_placements()))
def test_basic_placement_is_its_composition(activation: str) -> None:
    b = _randomise(block_class("basic", activation)(4, 4))
    torch.testing.assert_close(b(X), _basic_placements()[activation](b, X))
    if activation not in ("original", "full_preact"):  # (e) has other modules
        assert not torch.allclose(b(X), _basic_placements()["original"](b, X))


@pytest.mark.parametrize("activation", list(_bottleneck_placements()))
def test_bottleneck_placement_is_its_composition(activation: str) -> None:
    b = _randomise(block_class("bottleneck", activation)(8, 2))  # 8 -> 2 -> 8 channels
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(b(x), _bottleneck_placements()[activation](b, x))
    # The placements really differ: (d)'s F of x is not its F of relu(x), and so on.
    if activation not in ("original", "full_preact"):  # (e) has other modules
        assert not torch.allclose(b(x), _bottleneck_placements()["original"](b, x))


@pytest.mark.parametrize("activation", ["bn_after_add", "relu_before_add", "relu_preact"])
def test_placements_keep_the_original_modules(activation: str) -> None:
    for kind, original in [("basic", BasicBlock), ("bottleneck", Bottleneck)]:
        torch.manual_seed(0)
        moved = block_class(kind, activation)(4, 1 if kind == "bottleneck" else 4)
        torch.manual_seed(0)
        same = original(4, 1 if kind == "bottleneck" else 4)
        assert moved.state_dict().keys() == same.state_dict().keys()
        for key, value in same.state_dict().items():
            assert torch.equal(moved.state_dict()[key], value), key


def test_relu_preact_first_relu_leaves_the_shortcut_input_alone() -> None:
    b = _randomise(block_class("basic", "relu_preact")(4, 4))
    x = X.clone()
    b(x)
    assert torch.equal(x, X)


@pytest.mark.parametrize("activation", ["bn_after_add", "relu_before_add", "relu_preact"])
def test_zero_init_makes_each_placement_start_as_its_shortcut(activation: str) -> None:
    b = block_class("basic", activation)(4, 4).double().eval()  # fresh BNs: zero shifts
    b.zero_init_last()
    after = {"bn_after_add": lambda y: torch.relu(b.bn2(y))}.get(activation, lambda y: y)
    torch.testing.assert_close(b(X), after(X))
