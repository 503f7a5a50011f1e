"""The probes agree with direct autograd and manual recomputation, and leave the model as found."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    Projection,
    _Block,
)
from reslab.errors import ModelError
from reslab.measure.probes import (
    GradientFlow,
    LayerResponses,
    ResidualMagnitude,
    block_inputs,
    gradient_flow,
    layer_responses,
    residual_magnitude,
)
from reslab.models import ResNet, cifar_resnet, create_model

RTOL = 1e-6


def _model(
    name: str, seed: int = 0, *, in_channels: int, zero_init_residual: bool = False
) -> ResNet:
    """A float64 model; ``bottleneck11`` / ``preact_bottleneck11`` are one-block-per-stage."""
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"in_channels": in_channels, "zero_init_residual": zero_init_residual}
    model: nn.Module
    if name == "bottleneck11":
        model = cifar_resnet(11, block="bottleneck", **kw)
    elif name == "preact_bottleneck11":
        model = cifar_resnet(11, block="bottleneck", preact=True, shortcut="B", **kw)
    else:
        model = create_model(name, **kw)
    assert isinstance(model, ResNet)
    return model.double()


def _batch(in_channels: int, size: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, in_channels, size, size, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)
    return x, y


# --- a manual forward, block by block, with no hooks ------------------------------------------


def _stem(model: ResNet, x: Tensor) -> Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def _head(model: ResNet, h: Tensor) -> Tensor:
    return model.fc(model.bn_final(h).mean((2, 3)))


def _manual_inputs(model: ResNet, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every block's input and the last block's output, without autograd."""
    with torch.no_grad():
        h = _stem(model, x)
        inputs = []
        for block in model.blocks():
            inputs.append(h.clone())
            h = block(h)
    return inputs, h


def _manual_branch(block: _Block, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """F(x) from the layers themselves, and the 3×3 layer responses along the way."""
    if isinstance(block, BasicBlock):
        r1 = block.bn1(block.conv1(x))
        r2 = block.bn2(block.conv2(F.relu(r1)))
        return r2, [r1, r2]
    if isinstance(block, Bottleneck):
        r = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        return block.bn3(block.conv3(F.relu(r))), [r]
    assert isinstance(block, PreActBasicBlock | PreActBottleneck)
    pre = F.relu(block.bn1(x))
    if isinstance(block, PreActBasicBlock):
        r1 = block.conv1(pre)
        r2 = block.conv2(F.relu(block.bn2(r1)))
        return r2, [r1, r2]
    r = block.conv2(F.relu(block.bn2(block.conv1(pre))))
    return block.conv3(F.relu(block.bn3(r))), [r]


def _manual_shortcut(block: _Block, x: Tensor) -> Tensor | None:
    if block.downsample is None:
        return None
    if isinstance(block, PreActBasicBlock | PreActBottleneck) and isinstance(
        block.downsample, Projection
    ):
        return block.downsample(F.relu(block.bn1(x)))
    return block.downsample(x)


def _grad_norm(p: Tensor) -> float:
    assert p.grad is not None
    return p.grad.norm().item()


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def _assert_unchanged(model: nn.Module, snap: tuple[dict[str, Tensor], list[bool]]) -> None:
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes


# --- gradient_flow -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "in_channels", "size"),
    [
        ("resnet20", 1, 8),
        ("plain20", 3, 16),
        ("preact_resnet20", 3, 8),
        ("bottleneck11", 1, 8),
        ("preact_bottleneck11", 3, 8),
    ],
)
def test_gradient_flow_matches_autograd(name: str, in_channels: int, size: int) -> None:
    model = _model(name, in_channels=in_channels)
    model.train()
    x, y = _batch(in_channels, size)
    snap = _snapshot(model)

    flow = gradient_flow(model, x, y)

    _assert_unchanged(model, snap)  # BN running statistics restored, mode kept
    assert all(p.grad is None for p in model.parameters())

    # ∂L/∂x_l: cut the graph at x_l and run the rest of the network from there.
    ref = copy.deepcopy(model)
    blocks = ref.blocks()
    inputs, out = _manual_inputs(ref, x)
    expected = []
    for start in range(len(blocks) + 1):
        leaf = (inputs[start] if start < len(blocks) else out).clone().requires_grad_(True)
        h = leaf
        for block in blocks[start:]:
            h = block(h)
        (g,) = torch.autograd.grad(F.cross_entropy(_head(ref, h), y), leaf)
        expected.append(g.norm().item())
    assert len(flow.input_grad_norms) == len(blocks)
    assert flow.input_grad_norms == pytest.approx(expected[:-1], rel=RTOL)
    assert flow.output_grad_norm == pytest.approx(expected[-1], rel=RTOL)
    assert flow.activation_grad_norms == pytest.approx(expected, rel=RTOL)
    assert flow.input_norms == pytest.approx([t.norm().item() for t in inputs], rel=RTOL)
    assert flow.output_norm == pytest.approx(out.norm().item(), rel=RTOL)

    # ∂L/∂W: one ordinary backward pass on a copy.
    ref = copy.deepcopy(model)
    loss = F.cross_entropy(ref(x), y)
    loss.backward()
    assert flow.loss == pytest.approx(loss.item(), rel=RTOL)
    weights = {
        f"{n}.weight": m.weight
        for n, m in ref.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }
    assert flow.weight_names == list(weights)
    assert flow.weight_grad_norms == pytest.approx(
        [_grad_norm(w) for w in weights.values()], rel=RTOL
    )

    assert flow.block_names == [n for n, m in model.named_modules() if m in model.blocks()]
    assert flow.block_names[0] == "layer1.0"
    stage_of = {"layer1": 0, "layer2": 1, "layer3": 2}
    assert flow.stages == [stage_of[n.split(".")[0]] for n in flow.block_names]


def test_gradient_flow_eval_mode_and_existing_grads_untouched() -> None:
    model = _model("resnet20", in_channels=1)
    x, y = _batch(1, 8)
    model(x).sum().backward()  # leave some gradients behind
    before = [p.grad for p in model.parameters()]
    assert all(g is not None for g in before)
    grads = [g.clone() for g in before if g is not None]
    model.eval()
    snap = _snapshot(model)

    flow = gradient_flow(model, x, y)

    _assert_unchanged(model, snap)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert p.grad is not None and torch.equal(p.grad, g)
    # In eval mode BN uses running statistics: compare with a plain backward in eval mode.
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    F.cross_entropy(ref(x), y).backward()
    assert flow.weight_grad_norms[-1] == pytest.approx(_grad_norm(ref.fc.weight), rel=RTOL)


def test_gradient_flow_custom_loss_and_no_grad_context() -> None:
    model = _model("resnet20", in_channels=1)
    x, _ = _batch(1, 8)
    target = torch.randn(8, 10, dtype=torch.float64)
    with torch.no_grad():
        flow = gradient_flow(model, x, target, loss_fn=F.mse_loss)
    ref = copy.deepcopy(model)
    loss = F.mse_loss(ref(x), target)
    loss.backward()
    assert flow.loss == pytest.approx(loss.item(), rel=RTOL)
    assert flow.weight_grad_norms[0] == pytest.approx(_grad_norm(ref.conv1.weight), rel=RTOL)


def test_gradient_flow_frozen_stem_still_reports_every_block() -> None:
    model = _model("resnet20", in_channels=1)
    for p in [*model.conv1.parameters(), *model.bn1.parameters()]:
        p.requires_grad_(False)
    x, y = _batch(1, 8)
    flow = gradient_flow(model, x, y)
    full = gradient_flow(_model("resnet20", in_channels=1), x, y)
    assert flow.input_grad_norms == pytest.approx(full.input_grad_norms, rel=RTOL)
    assert "conv1.weight" not in flow.weight_names
    assert flow.weight_grad_norms == pytest.approx(full.weight_grad_norms[1:], rel=RTOL)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_flow_resnet_vs_plain_at_init(seed: int) -> None:
    """Qualitative, checked on 30 seeds with 8×8 and 16×16 inputs before being written down.

    With BN in train mode, He init, batch 8: ‖∂L/∂x_0‖ / ‖∂L/∂x_{L-1}‖ (first block's input over
    last block's input) was 18-30 for resnet56 and 2,800-8,700 for plain56: the plain net's
    gradient explodes toward the input, the residual net's stays within two orders of magnitude.
    In both, no block input gets a smaller gradient than the last block's output.
    """
    x, y = _batch(1, 8, seed=seed)
    ratios = {}
    for name in ("resnet56", "plain56"):
        model = _model(name, seed=seed, in_channels=1).float()
        flow = gradient_flow(model.train(), x.float(), y)
        g = flow.input_grad_norms
        assert all(math.isfinite(v) and v > 0 for v in g)
        assert min(g) > 0.5 * flow.output_grad_norm
        ratios[name] = g[0] / g[-1]
    assert ratios["resnet56"] < 100
    assert ratios["plain56"] > 1000


# --- residual_magnitude ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["resnet20", "plain20", "preact_resnet20", "bottleneck11", "preact_bottleneck11"]
)
def test_residual_magnitude_matches_manual(name: str) -> None:
    model = _model(name, in_channels=3).train()
    x, _ = _batch(3, 8)
    snap = _snapshot(model)

    mag = residual_magnitude(model, x)

    _assert_unchanged(model, snap)  # still in train mode, running statistics untouched
    ref = copy.deepcopy(model).eval()
    inputs, _ = _manual_inputs(ref, x)
    with torch.no_grad():
        for i, (block, xl) in enumerate(zip(ref.blocks(), inputs, strict=True)):
            fx, _ = _manual_branch(block, xl)
            sx = _manual_shortcut(block, xl)
            out = block(xl)
            if sx is None:
                assert mag.shortcut_norms[i] is None
            else:
                assert mag.shortcut_norms[i] == pytest.approx(sx.norm().item(), rel=RTOL)
                # F and the shortcut add up to what the block computes.
                summed = fx + sx
                if isinstance(block, BasicBlock | Bottleneck):
                    summed = F.relu(summed)
                torch.testing.assert_close(summed, out)
            assert mag.input_norms[i] == pytest.approx(xl.norm().item(), rel=RTOL)
            assert mag.branch_norms[i] == pytest.approx(fx.norm().item(), rel=RTOL)
            assert mag.ratios[i] == pytest.approx(fx.norm().item() / xl.norm().item(), rel=RTOL)
            per_sample = (fx.flatten(1).norm(dim=1) / xl.flatten(1).norm(dim=1)).mean()
            assert mag.per_sample_ratios[i] == pytest.approx(per_sample.item(), rel=RTOL)
    assert len(mag.ratios) == len(model.blocks())


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "bottleneck11"])
def test_residual_magnitude_zero_init_is_exactly_zero(name: str) -> None:
    model = _model(name, in_channels=1, zero_init_residual=True)
    mag = residual_magnitude(model, _batch(1, 8)[0])
    assert mag.ratios == [0.0] * len(model.blocks())
    assert mag.branch_norms == [0.0] * len(model.blocks())
    assert mag.per_sample_ratios == [0.0] * len(model.blocks())
    assert all(s is not None and s > 0 for s in mag.shortcut_norms)


def test_block_inputs_matches_manual_forward() -> None:
    model = _model("resnet20", in_channels=1).train()
    x, _ = _batch(1, 16)
    got = block_inputs(model, x)
    assert model.training
    inputs, _ = _manual_inputs(copy.deepcopy(model).eval(), x)
    assert len(got) == 9
    for a, b in zip(got, inputs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not a.requires_grad


# --- layer_responses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "per_block"),
    [
        ("resnet20", 2),
        ("plain20", 2),
        ("preact_resnet20", 2),
        ("bottleneck11", 1),
        ("preact_bottleneck11", 1),
    ],
)
def test_layer_responses_match_manual(name: str, per_block: int) -> None:
    model = _model(name, in_channels=3).train()
    x, _ = _batch(3, 8)
    snap = _snapshot(model)

    resp = layer_responses(model, x)

    _assert_unchanged(model, snap)
    n_blocks = len(model.blocks())
    assert len(resp.stds) == per_block * n_blocks
    ref = copy.deepcopy(model).eval()
    inputs, _ = _manual_inputs(ref, x)
    expected = []
    with torch.no_grad():
        for block, xl in zip(ref.blocks(), inputs, strict=True):
            expected += [r.std(correction=0).item() for r in _manual_branch(block, xl)[1]]
    assert resp.stds == pytest.approx(expected, rel=RTOL)
    assert resp.sorted_stds == sorted(resp.stds, reverse=True)
    assert resp.block_indices == [i for i in range(n_blocks) for _ in range(per_block)]
    preact = name.startswith("preact")
    if per_block == 2:
        assert resp.conv_names[:2] == ["layer1.0.conv1", "layer1.0.conv2"]
        resp_names = (
            ["layer1.0.conv1", "layer1.0.conv2"] if preact else ["layer1.0.bn1", "layer1.0.bn2"]
        )
        assert resp.layer_names[:2] == resp_names
    else:
        assert resp.conv_names[0] == "layer1.0.conv2"
        assert resp.layer_names[0] == ("layer1.0.conv2" if preact else "layer1.0.bn2")


def test_resnet20_has_18_three_by_three_layers() -> None:
    resp = layer_responses(_model("resnet20", in_channels=1), _batch(1, 8)[0])
    assert len(resp.stds) == 18
    assert all(math.isfinite(s) and s > 0 for s in resp.stds)


# --- results and errors ------------------------------------------------------------------------


def test_results_are_json_ready() -> None:
    model = _model("plain20", in_channels=1)
    x, y = _batch(1, 8)
    results = [
        gradient_flow(model, x, y),
        residual_magnitude(model, x),
        layer_responses(model, x),
    ]
    for result, cls in zip(results, (GradientFlow, ResidualMagnitude, LayerResponses), strict=True):
        assert isinstance(result, cls)
        data = result.to_dict()
        assert json.loads(json.dumps(data)) == data
    assert results[1].to_dict()["shortcut_norms"] == [None] * 9


def test_model_without_blocks_is_rejected() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    with pytest.raises(ModelError, match="no residual or plain blocks"):
        gradient_flow(model, x, torch.tensor([0, 1]))
    with pytest.raises(ModelError):
        residual_magnitude(model, x)
    with pytest.raises(ModelError):
        layer_responses(model, x)


def test_block_run_twice_is_rejected_and_hooks_removed() -> None:
    block = BasicBlock(4, 4)
    model = nn.Sequential(block, block).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    with pytest.raises(ModelError, match="ran 2 times"):
        block_inputs(model, x)
    assert not block._forward_pre_hooks
    assert not block._forward_hooks
    assert model.training
