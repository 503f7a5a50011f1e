"""signal_propagation agrees with a hand-written forward pass and leaves the model as found."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.blocks import ACTIVATIONS, BasicBlock, PreActBasicBlock, Projection
from reslab.errors import ModelError
from reslab.measure.signal import SignalPropagation, channel_statistics, signal_propagation
from reslab.models import ResNet, cifar_resnet, create_model


def _gaussian(n: int, size: int, channels: int = 3, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=gen, dtype=torch.float64)


def _stats(t: Tensor) -> tuple[Tensor, Tensor]:
    """(average channel squared mean, average channel variance), written out longhand."""
    per_channel = t.transpose(0, 1).reshape(t.shape[1], -1)
    mean = per_channel.mean(1)
    var = ((per_channel - mean[:, None]) ** 2).mean(1)
    return (mean**2).mean(), var.mean()


def _bn(t: Tensor, bn: nn.Module) -> Tensor:
    """BN on the batch's own statistics, as in training mode, without touching its buffers."""
    assert isinstance(bn, nn.BatchNorm2d)
    return F.batch_norm(t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def _close(value: float | None, expected: Tensor) -> None:
    assert value is not None
    assert torch.allclose(torch.tensor(value, dtype=torch.float64), expected, rtol=1e-9, atol=0)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- (1) against a direct computation ----------------------------------------------------------


def test_matches_a_functional_forward_of_a_tiny_resnet() -> None:
    """resnet8 (one BasicBlock per stage, option A) with every layer written out in F.*."""
    torch.manual_seed(0)
    model = cifar_resnet(8, width=0.5).double()
    x = _gaussian(16, 8)
    result = signal_propagation(model, x)

    with torch.no_grad():
        h = F.relu(_bn(F.conv2d(x, model.conv1.weight, padding=1), model.bn1))
        stem = _stats(h)
        outs, branches = [], []
        for block in model.blocks():
            assert isinstance(block, BasicBlock)
            c1, c2 = block.conv1, block.conv2
            f = F.relu(_bn(F.conv2d(h, c1.weight, stride=c1.stride, padding=1), block.bn1))
            f = _bn(F.conv2d(f, c2.weight, padding=1), block.bn2)
            s = h[:, :, :: c1.stride[0], :: c1.stride[0]]
            extra = f.shape[1] - s.shape[1]
            s = F.pad(s, (0, 0, 0, 0, extra // 2, extra - extra // 2))
            h = F.relu(s + f)
            outs.append(_stats(h))
            branches.append(_stats(f)[1])

    assert result.block_names == ["layer1.0", "layer2.0", "layer3.0"]
    assert result.stages == [0, 1, 2]
    assert result.train_mode is True
    _close(result.input_squared_mean, stem[0])
    _close(result.input_variance, stem[1])
    for k, (sq, var) in enumerate(outs):
        _close(result.squared_means[k], sq)
        _close(result.variances[k], var)
        _close(result.residual_variances[k], branches[k])
    assert result.depth_variances == [result.input_variance, *result.variances]
    assert result.depth_squared_means == [result.input_squared_mean, *result.squared_means]


def test_eval_mode_uses_running_statistics() -> None:
    """train_mode=False: the same forward with BN on its running statistics (model.eval())."""
    torch.manual_seed(0)
    model = cifar_resnet(8, width=0.5).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics unlike a fresh BN's (0, 1)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = _gaussian(8, 8)
    result = signal_propagation(model, x, train_mode=False)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        h = reference.relu(reference.bn1(reference.conv1(x)))
        _close(result.input_variance, _stats(h)[1])
        for k, block in enumerate(reference.blocks()):
            _close(result.residual_variances[k], _stats(block.branch(h))[1])
            h = block(h)
            _close(result.squared_means[k], _stats(h)[0])
            _close(result.variances[k], _stats(h)[1])
    assert result.train_mode is False


def test_channel_statistics() -> None:
    x = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])  # N=2, C=1, L=2: mean 4, variance 5
    assert channel_statistics(x) == (16.0, 5.0)
    two = torch.stack([torch.zeros(4), torch.arange(4.0)], dim=1)  # C=2: means 0, 1.5
    assert channel_statistics(two) == pytest.approx(((0 + 2.25) / 2, (0 + 1.25) / 2))
    with pytest.raises(ValueError):
        channel_statistics(torch.ones(3))


# --- (2) the residual branch is F(x) before the merge ------------------------------------------


@pytest.mark.parametrize("options", [{}, {"shortcut_mode": "scale", "branch_scale": 3.0}])
def test_residual_variance_is_output_minus_shortcut(options: dict[str, Any]) -> None:
    """Pre-activation blocks end on the addition: y = λ·shortcut + μ·F, so F = (y − λ·s)/μ.

    With a scaled join (λ = 0.5, μ = 3) the measurement is F's variance, before μ scales it.
    """
    torch.manual_seed(0)
    model = create_model("resnet20", activation="full_preact", shortcut="B", width=0.25, **options)
    model = model.double()
    lam, mu = (0.5, 3.0) if options else (1.0, 1.0)
    x = _gaussian(16, 8)
    result = signal_propagation(model, x)
    reference = copy.deepcopy(model).train()  # its BN buffers may change; model's may not
    with torch.no_grad():
        h = reference.relu(reference.bn1(reference.conv1(x)))
        for k, block in enumerate(reference.blocks()):
            assert isinstance(block, PreActBasicBlock) and block.downsample is not None
            pre = F.relu(_bn(h, block.bn1))
            s = block.downsample(pre if isinstance(block.downsample, Projection) else h)
            y = block(h)
            _close(result.residual_variances[k], _stats((y - lam * s) / mu)[1])
            _close(result.variances[k], _stats(y)[1])
            h = y


def test_bn_ending_branches_have_unit_variance_in_train_mode() -> None:
    """A post-activation branch ends on a fresh BN (γ=1, β=0): batch variance 1 up to ε."""
    torch.manual_seed(0)
    result = signal_propagation(create_model("resnet20", width=0.25), _gaussian(8, 8).float())
    assert result.residual_variances == pytest.approx([1.0] * 9, abs=1e-3)


# --- (3) the model is left as found ------------------------------------------------------------


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def _assert_unchanged(model: nn.Module, snap: tuple[dict[str, Tensor], list[bool]]) -> None:
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert _no_hooks(model)


@pytest.mark.parametrize("train_mode", [True, False])
def test_leaves_parameters_buffers_mode_and_hooks_as_found(train_mode: bool) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25)
    model.eval()
    model.layer2[0].bn1.train()  # a mixed mode must come back module by module
    snap = _snapshot(model)
    signal_propagation(model, _gaussian(8, 8).float(), train_mode=train_mode)
    _assert_unchanged(model, snap)
    model.train()
    snap = _snapshot(model)
    signal_propagation(model, _gaussian(8, 8).float(), train_mode=train_mode)
    _assert_unchanged(model, snap)


def test_leaves_the_model_as_found_when_the_forward_raises() -> None:
    """A failure in stage 2 comes after stage 1's train-mode BNs updated their buffers."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()

    def boom(module: nn.Module, args: tuple[Any, ...]) -> None:
        raise RuntimeError("boom")

    handle = model.layer2[1].register_forward_pre_hook(boom)
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        signal_propagation(model, _gaussian(8, 8).float())
    handle.remove()
    _assert_unchanged(model, snap)


def test_rejects_nets_without_blocks_or_with_a_block_run_twice() -> None:
    with pytest.raises(ModelError, match="no residual or plain blocks"):
        signal_propagation(nn.Sequential(nn.Conv2d(3, 4, 3)), _gaussian(2, 8).float())
    block = BasicBlock(4, 4)
    twice = nn.Sequential(block, block)
    with pytest.raises(ModelError, match="ran 2 times"):
        signal_propagation(twice, _gaussian(4, 8, channels=4).float())
    assert _no_hooks(twice)


# --- (4) the science: Brock et al. 2021, Fig. 1, on He et al.'s CIFAR nets ---------------------


def _by_stage(values: list[float], stages: list[int]) -> list[list[float]]:
    return [[v for v, s in zip(values, stages, strict=True) if s == k] for k in sorted(set(stages))]


def test_resnet56_variance_grows_within_a_stage_and_plain56_stays_flat() -> None:
    """BN-ReLU nets at initialisation, batch 64 of N(0, 1) 32×32 images, BN on batch statistics.

    ResNet-56: each block adds a unit-variance branch (BN ends it) to the skip path, so the
    variance climbs through a stage; at a transition, option A's shortcut subsamples and pads
    half the channels with zeros, so the variance falls (Fig. 1's rise-and-reset, seen in
    post-activation blocks). Plain-56: every block ends on ReLU(BN(·)) of a channel BN makes
    mean 0, variance 1, so each channel's variance is at most E[ReLU(z)²] ≤ E[z²] = 1 and the
    signal is reset block after block (≈ 1/2 − 1/(2π) ≈ 0.34 were z Gaussian).
    """
    x = _gaussian(64, 32).float()
    torch.manual_seed(0)
    res = signal_propagation(create_model("resnet56", width=0.25), x)
    torch.manual_seed(0)
    plain = signal_propagation(create_model("plain56", width=0.25), x)

    stages = _by_stage(res.variances, res.stages)
    assert [len(s) for s in stages] == [9, 9, 9]
    for stage in stages:
        assert stage[-1] > stage[0] + 1.0  # seen: +3.37, +2.91, +3.41 over 8 blocks
    for before, after in itertools.pairwise(stages):
        assert after[0] < before[-1]  # seen: 4.15 -> 2.56, 5.47 -> 2.90
    assert res.residual_variances == pytest.approx([1.0] * 27, abs=1e-3)

    assert plain.residual_variances == [None] * 27
    assert max(plain.variances) <= 1.0
    assert max(plain.variances) < 2 * min(plain.variances)  # seen: 0.31 .. 0.39
    assert max(plain.variances) < min(max(s) for s in stages) / 5


# --- (5) every family, plain twins and pre-activation nets -------------------------------------

FAMILIES = [
    ("resnet20", {}),
    ("plain20", {}),
    ("preact_resnet110", {"width": 0.125}),
    ("preact_plain110", {"width": 0.125}),
    ("resnet18", {"width": 0.125}),
    ("plain18", {"width": 0.125}),
    ("resnet50", {"width": 0.0625}),
    ("wrn16_8", {"width": 0.0625}),
    ("plain_wrn16_8", {"width": 0.0625}),
    ("resnext29_8x64d", {"width": 0.0625}),
    ("plain_resnext29_8x64d", {"width": 0.0625}),
]


@pytest.mark.parametrize(("name", "options"), FAMILIES, ids=[n for n, _ in FAMILIES])
def test_every_family(name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = create_model(name, **options)
    assert isinstance(model, ResNet)
    snap = _snapshot(model)
    result = signal_propagation(model, _gaussian(4, 32).float())
    _assert_unchanged(model, snap)
    blocks = model.blocks()
    assert len(result.block_names) == len(blocks) == len(result.variances)
    assert result.stages[0] == 0 and result.stages[-1] == len(model.stage_names) - 1
    plain = [b.shortcut is None for b in blocks]
    assert [r is None for r in result.residual_variances] == plain
    assert all(plain) == name.startswith(("plain", "preact_plain"))
    values = [*result.depth_squared_means, *result.depth_variances]
    assert all(v >= 0 and v == v and v < float("inf") for v in values)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("plain", [False, True])
def test_every_activation_placement(activation: str, plain: bool) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", activation=activation, plain=plain, width=0.25)
    result = signal_propagation(model, _gaussian(4, 8).float())
    assert isinstance(result, SignalPropagation)
    assert (result.residual_variances[0] is None) == plain
    assert len(result.variances) == 9
