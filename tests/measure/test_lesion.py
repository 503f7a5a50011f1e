"""Lesions against hand-built references: a deleted block is its zeroed branch and the net
without it, a swap is a hand-permuted Sequential, and the model comes back as it was."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conftest import random_bn
from reslab.blocks import (
    BasicBlock,
    Bottleneck,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    Residual,
    ResidualMLP,
    _Block,
)
from reslab.errors import ModelError
from reslab.measure.lesion import (
    block_sites,
    delete_blocks,
    deletion_curve,
    draw_deletions,
    draw_swaps,
    error_per_deleted_block,
    k_grid,
    swap_blocks,
    swap_curve,
    swappable_pairs,
)
from reslab.models import ResNet, cifar_resnet, create_model

# (name, options): every block type and every shortcut kind, CIFAR and ImageNet stems.
NETS: list[tuple[str, dict[str, Any]]] = [
    ("resnet20", {"shortcut": "A"}),
    ("resnet20", {"shortcut": "B"}),
    ("resnet20", {"shortcut": "C"}),
    ("resnet20", {"preact": True}),
    ("bottleneck11", {}),
    ("preact_bottleneck11", {}),
    ("resnet18", {"width": 0.125}),
    ("resnet50", {"width": 0.125}),
]


def _net(name: str, seed: int = 0, **options: Any) -> ResNet:
    """A float64 net in eval mode with random BN statistics, so no BN is an identity."""
    torch.manual_seed(seed)
    if name == "bottleneck11":
        model: nn.Module = cifar_resnet(11, block="bottleneck", in_channels=1, **options)
    elif name == "preact_bottleneck11":
        model = cifar_resnet(11, block="bottleneck", preact=True, in_channels=1, **options)
    else:
        model = create_model(name, in_channels=1, **options)
    assert isinstance(model, ResNet)
    random_bn(model)
    return model.double().eval()


def _x(size: int = 16, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, size, size, generator=gen, dtype=torch.float64)


def _zero_branch(block: nn.Module) -> None:
    """F ≡ 0 by its weights: the branch's last BN scale and shift (pre-activation: last conv)."""
    if isinstance(block, BasicBlock):
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    elif isinstance(block, Bottleneck):
        nn.init.zeros_(block.bn3.weight)
        nn.init.zeros_(block.bn3.bias)
    elif isinstance(block, PreActBasicBlock):
        nn.init.zeros_(block.conv2.weight)
    elif isinstance(block, PreActBottleneck):
        nn.init.zeros_(block.conv3.weight)
    else:
        raise AssertionError(type(block))


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# --- sites ---------------------------------------------------------------------------------------


def test_sites_of_resnet20_and_plain20() -> None:
    x = _x(32)
    for name, residual in (("resnet20", True), ("plain20", False)):
        sites = block_sites(_net(name), x)
        assert [s.name for s in sites] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
        assert [s.stage for s in sites] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert [s.position for s in sites] == [0, 1, 2] * 3
        assert all(s.residual is residual for s in sites)
        assert [s.shape_preserving for s in sites] == [True] * 3 + [False, True, True] * 2
        assert sites[3].in_shape == (16, 32, 32) and sites[3].out_shape == (32, 16, 16)
        assert [s.deletable for s in sites] == [residual or s.shape_preserving for s in sites]
        assert sites[3].to_json()["deletable"] is residual


def test_no_blocks_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="no residual or plain blocks"):
        block_sites(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3))


# --- deleting: the reference is the block whose branch is zeroed by its weights ----------------


@pytest.mark.parametrize(("name", "options"), NETS, ids=lambda v: str(v))
def test_deleting_a_block_equals_zeroing_its_branch(name: str, options: dict[str, Any]) -> None:
    model = _net(name, **options)
    x = _x(32)
    sites = block_sites(model, x)
    for site in sites:
        reference = copy.deepcopy(model)
        _zero_branch(reference.get_submodule(site.name))
        with delete_blocks(model, sites, [site.index]):
            lesioned = model(x)
        torch.testing.assert_close(lesioned, reference(x), rtol=1e-12, atol=1e-12)


def test_deleting_an_mlp_block_leaves_its_shortcut() -> None:
    """The generic Residual: a submodule branch, shadowed the same way; y = shortcut(x)."""
    torch.manual_seed(0)
    net = nn.Sequential(ResidualMLP(6, 12), ResidualMLP(6, 12, out_features=4)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    sites = block_sites(net, x)
    assert [s.shape_preserving for s in sites] == [True, False]
    with delete_blocks(net, sites, [0]):
        torch.testing.assert_close(net(x), net[1](x))
    with delete_blocks(net, sites, [1]):
        shortcut = net[1].shortcut
        assert shortcut is not None
        torch.testing.assert_close(net(x), shortcut(net[0](x)))


def test_deleting_blocks_equals_a_hand_built_net_without_them() -> None:
    """resnet20 (option A) without layer1.1 and layer3.2, and with layer2.0 as its shortcut."""
    model, x = _net("resnet20"), _x(32)
    sites = block_sites(model, x)
    hand = copy.deepcopy(model)
    hand.layer1 = nn.Sequential(hand.layer1[0], hand.layer1[2])
    hand.layer3 = nn.Sequential(hand.layer3[0], hand.layer3[1])
    pad = hand.layer2[0].shortcut
    assert isinstance(pad, PadShortcut)
    hand.layer2 = nn.Sequential(pad, hand.layer2[1], hand.layer2[2])
    with delete_blocks(model, sites, [1, 3, 8]):
        torch.testing.assert_close(model(x), hand(x), rtol=1e-12, atol=1e-12)


def test_deleting_plain_blocks_equals_a_hand_built_net_without_them() -> None:
    model, x = _net("plain20"), _x(32)
    sites = block_sites(model, x)
    hand = copy.deepcopy(model)
    hand.layer1 = nn.Sequential(hand.layer1[1])
    hand.layer2 = nn.Sequential(hand.layer2[0], hand.layer2[2])
    with delete_blocks(model, sites, [0, 2, 4]):
        torch.testing.assert_close(model(x), hand(x), rtol=1e-12, atol=1e-12)


def test_plain_shape_changing_blocks_are_refused() -> None:
    model, x = _net("plain20"), _x(32)
    sites = block_sites(model, x)
    assert [s.index for s in sites if not s.deletable] == [3, 6]
    before = model(x)
    for index in (3, 6):
        refused = pytest.raises(ModelError, match=r"layer[23]\.0 is plain and changes the shape")
        with refused, delete_blocks(model, sites, [1, index]):
            pass
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the refused lesion left no trace


def test_a_bad_index_and_a_nested_deletion_are_refused() -> None:
    model, x = _net("resnet20"), _x(32)
    sites = block_sites(model, x)
    with pytest.raises(ModelError, match=r"not one of 0\.\.8"), delete_blocks(model, sites, [9]):
        pass
    refused = pytest.raises(ModelError, match="already deleted")
    with delete_blocks(model, sites, [2]), refused, delete_blocks(model, sites, [2]):
        pass


# --- reversibility -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_lesions_leave_outputs_and_state_dict_unchanged(name: str) -> None:
    model, x = _net(name), _x(32)
    sites = block_sites(model, x)
    before, state = model(x), _snapshot(model)
    modules = list(model.modules())
    with delete_blocks(model, sites, [0, 4, 7]):
        _same_state(model, state)  # shadowing, not removing: even the keys stay
        assert not torch.allclose(model(x), before)
    with swap_blocks(model, sites, [(1, 2), (4, 5)]):
        assert not torch.allclose(model(x), before)
    raised = pytest.raises(RuntimeError, match="inside")
    with raised, delete_blocks(model, sites, [1]), swap_blocks(model, sites, [(7, 8)]):
        raise RuntimeError("inside")
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    _same_state(model, state)
    assert list(model.modules()) == modules
    assert all("forward" not in vars(b) and "branch" not in vars(b) for b in model.blocks())


def test_sites_restore_the_training_mode() -> None:
    model = _net("resnet20").train()
    block_sites(model, _x(32))
    assert all(m.training for m in model.modules())


# --- swapping ------------------------------------------------------------------------------------


def test_swapping_equals_a_hand_permuted_sequential() -> None:
    """Two transpositions in layer1 and one in layer3 (resnet20 option B: projections too)."""
    model, x = _net("resnet20", shortcut="B"), _x(32)
    sites = block_sites(model, x)
    hand = copy.deepcopy(model)
    a, b, c = hand.layer1
    # (0,1) then (1,2): positions 0,1,2 hold b, a, c, then b, c, a.
    hand.layer1 = nn.Sequential(b, c, a)
    d, e, f = hand.layer3
    hand.layer3 = nn.Sequential(d, f, e)
    with swap_blocks(model, sites, [(0, 1), (1, 2), (7, 8)]):
        torch.testing.assert_close(model(x), hand(x), rtol=1e-12, atol=1e-12)
        assert [type(m) for m in model.layer1] == [BasicBlock] * 3


def test_swaps_across_stages_or_with_shape_changing_blocks_are_refused() -> None:
    model, x = _net("resnet20"), _x(32)
    sites = block_sites(model, x)
    with pytest.raises(ModelError, match="different stages"), swap_blocks(model, sites, [(2, 4)]):
        pass
    refused = pytest.raises(ModelError, match=r"layer2\.0 changes the shape")
    with refused, swap_blocks(model, sites, [(3, 4)]):
        pass


def test_swappable_pairs_are_same_stage_shape_preserving() -> None:
    sites = block_sites(_net("plain20"), _x(32))
    assert swappable_pairs(sites) == [(0, 1), (0, 2), (1, 2), (4, 5), (7, 8)]


# --- random draws --------------------------------------------------------------------------------


def test_draws_are_seeded_distinct_and_eligible() -> None:
    sites = block_sites(_net("plain20"), _x(32))
    draws = [draw_deletions(sites, 4, random.Random(s)) for s in range(20)]
    assert draws[3] == draw_deletions(sites, 4, random.Random(3))
    assert len(set(draws)) > 1
    for drawn in draws:
        assert len(set(drawn)) == 4 and not {3, 6} & set(drawn)
    assert draw_deletions(sites, 7, random.Random(0)) == (0, 1, 2, 4, 5, 7, 8)
    with pytest.raises(ModelError, match="7 can be deleted"):
        draw_deletions(sites, 8, random.Random(0))
    residual = block_sites(_net("resnet20"), _x(32))
    assert len(draw_deletions(residual, 9, random.Random(0), shape_changing=True)) == 9
    swaps = draw_swaps(sites, 3, random.Random(5))
    assert swaps == draw_swaps(sites, 3, random.Random(5))
    assert len(set(swaps)) == 3 and set(swaps) <= set(swappable_pairs(sites))
    with pytest.raises(ModelError, match="there are 5 pairs"):
        draw_swaps(sites, 6, random.Random(0))


def test_every_block_of_every_net_is_found() -> None:
    for name, options in NETS:
        model = _net(name, **options)
        sites = block_sites(model, _x(32))
        assert [s.name for s in sites] == [
            n for n, m in model.named_modules() if isinstance(m, _Block)
        ]


# --- the measurements: an error function that reads back what was lesioned ----------------------


class _Add(nn.Module):
    """F(x) = c: the net's output at 0 is the sum of the c of the blocks still there."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c - x


def _binary_net(n: int) -> nn.Sequential:
    return nn.Sequential(*(Residual(_Add(2.0**i)) for i in range(n)))


def _deleted_set(model: nn.Module, n: int) -> float:
    """The deleted blocks, read from the output as a bit mask (block i adds 2**i)."""
    kept = int(model(torch.zeros(1, 1)).item())
    return float((2**n - 1) & ~kept)


def test_error_per_deleted_block_deletes_each_block_alone() -> None:
    net = _binary_net(5)
    sites = block_sites(net, torch.zeros(1, 1))
    masks = error_per_deleted_block(net, sites, lambda m: _deleted_set(m, 5))
    assert masks == [1.0, 2.0, 4.0, 8.0, 16.0]
    plain = _net("plain20")
    plain_sites = block_sites(plain, _x(32))
    errors = error_per_deleted_block(plain, plain_sites, lambda m: 0.0)
    assert [i for i, e in enumerate(errors) if e is None] == [3, 6]


def test_deletion_curve_deletes_the_drawn_blocks_k_at_a_time() -> None:
    net = _binary_net(6)
    sites = block_sites(net, torch.zeros(1, 1))
    rows = deletion_curve(net, sites, lambda m: _deleted_set(m, 6), [1, 3, 6], draws=4, seed=2)
    assert [r["k"] for r in rows] == [1, 3, 6]
    for row in rows:
        assert len(row["errors"]) == len(row["blocks"]) == 4
        for mask, blocks in zip(row["errors"], row["blocks"], strict=True):
            assert len(blocks) == row["k"]
            assert mask == sum(2**b for b in blocks)  # exactly the drawn blocks were deleted
    again = deletion_curve(net, sites, lambda m: 0.0, [3], draws=4, seed=2)
    assert again[0]["blocks"] == rows[1]["blocks"]  # seeded, and independent of the other k
    assert (
        deletion_curve(net, sites, lambda m: 0.0, [3], draws=4, seed=3)[0]["blocks"]
        != (rows[1]["blocks"])
    )


def test_swap_curve_applies_the_drawn_transpositions() -> None:
    model, x = _net("resnet20"), _x(32)
    sites = block_sites(model, x)
    original = [m for _, m in _stage_children(model)]
    orders: list[list[int]] = []

    def record(m: nn.Module) -> float:
        orders.append([original.index(b) for _, b in _stage_children(m)])
        return float(len(orders))

    rows = swap_curve(model, sites, record, [1, 2], draws=3, seed=0)
    assert [r["errors"] for r in rows] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    flat = [pairs for r in rows for pairs in r["pairs"]]
    for order, pairs in zip(orders, flat, strict=True):
        expected = list(range(9))
        for a, b in pairs:
            expected[a], expected[b] = expected[b], expected[a]
        assert order == expected
    assert [original.index(b) for _, b in _stage_children(model)] == list(range(9))


def _stage_children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Block)]


def test_the_k_grid_is_every_k_up_to_twelve_then_spread_evenly() -> None:
    assert k_grid(5) == [1, 2, 3, 4, 5]
    assert k_grid(12) == list(range(1, 13))
    grid = k_grid(25)
    assert len(grid) == 12 and grid[0] == 1 and grid[-1] == 25 and grid == sorted(set(grid))
    assert k_grid(25, [0, 3, 3, 30, 1]) == [1, 3]  # given: kept where 1 <= k <= n
    assert k_grid(0) == []
