"""Lesions measured from shared prefixes against the plain way: apply the lesion, run the whole
net. Every lesion of every block type gives the same error, the layers before a lesion's first
changed block see one sample instead of the batch, and a net that is not one chain of blocks
falls back to whole forward passes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from conftest import random_bn
from reslab.blocks import ResidualMLP
from reslab.measure import prefix
from reslab.measure.lesion import (
    Lesion,
    Top1Error,
    block_sites,
    draw_deletions,
    draw_swaps,
    lesion_net,
    measure_lesions,
)
from reslab.models import ResNet, create_model

NETS: list[tuple[str, dict[str, Any]]] = [
    ("resnet14", {"shortcut": "A"}),
    ("resnet14", {"shortcut": "B"}),
    ("resnet14", {"preact": True}),
    ("plain14", {}),
    ("resnet18", {"width": 0.125}),
]


def _net(name: str, **options: Any) -> ResNet:
    """A net with random BN statistics and an output spread wide enough to have no near-ties."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, **options)
    random_bn(model)
    assert isinstance(model, ResNet)
    return model.eval()


def _data(model: ResNet, n: int = 48, side: int = 8) -> Top1Error:
    """Labels that put the intact error near 50 %, so a changed prediction changes the error."""
    gen = torch.Generator().manual_seed(1)
    side = 32 if model.input_size == 224 else side
    x = torch.randn(n, 1, side, side, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::2] = (y[::2] + 1) % 10
    # Small batches: several batches, the last one short. Unfolded: these tests hold the shared
    # prefixes equal to whole passes exactly (the folded copy: tests/measure/test_inference.py).
    return Top1Error(x, y, cache_bytes=(n // 5) * _per_image(model, x), fast=False)


def _per_image(model: nn.Module, x: Tensor) -> int:
    sites = block_sites(model, x[:1])
    return sum(int(torch.Size(s.in_shape).numel()) for s in sites) * x.element_size()


def _plainly(model: nn.Module, sites: Any, lesions: list[Lesion], data: Top1Error) -> list[float]:
    """The reference: each lesion applied, the whole net run (an ErrorFn, not Top1Error)."""
    return measure_lesions(model, sites, lesions, lambda m: data(m))


def _lesions(sites: Any, seed: int) -> list[Lesion]:
    rng = random.Random(seed)
    deletable = sum(s.deletable and s.shape_preserving for s in sites)
    found = [Lesion()]
    found += [Lesion(deleted=(s.index,)) for s in sites if s.deletable]
    found += [Lesion(deleted=draw_deletions(sites, k, rng)) for k in range(1, deletable + 1)]
    pairs = 0
    while True:
        try:
            found.append(Lesion(swapped=draw_swaps(sites, pairs + 1, rng)))
        except Exception:
            return found
        pairs += 1
        if pairs == 4:
            return found


@pytest.mark.parametrize(("name", "options"), NETS, ids=[f"{n}-{o}" for n, o in NETS])
def test_shared_prefixes_give_every_lesions_error(name: str, options: dict[str, Any]) -> None:
    model = _net(name, **options)
    data = _data(model)
    sites = block_sites(model, data.images[:1])
    lesions = _lesions(sites, seed=0)
    assert measure_lesions(model, sites, lesions, data) == _plainly(model, sites, lesions, data)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_any_lesions_on_any_number_of_images_match(seed: int, n: int) -> None:
    model = _net("resnet14", shortcut="B")
    data = _data(model, n=n)
    sites = block_sites(model, data.images[:1])
    lesions = random.Random(seed).sample(_lesions(sites, seed), 6)
    assert measure_lesions(model, sites, lesions, data) == _plainly(model, sites, lesions, data)


def test_the_layers_before_a_lesion_see_one_sample() -> None:
    """Proof the prefix is shared: the stem sees the batch once (the recording pass) plus one
    sample a lesion, and a block after the last one deleted sees the batch every time."""
    model = _net("resnet14")
    data = _data(model)
    sites = block_sites(model, data.images[:1])
    batch = data.cache_bytes // _per_image(model, data.images)  # a forward pass: before the hooks
    batches = [len(y) for _, y in data._batches(batch)]
    seen: dict[str, list[int]] = {"stem": [], "last": []}
    model.conv1.register_forward_hook(lambda m, a, o: seen["stem"].append(len(a[0])))
    model.blocks()[-1].register_forward_hook(lambda m, a, o: seen["last"].append(len(a[0])))
    lesions = [Lesion(deleted=(1,)), Lesion(deleted=(3,)), Lesion(swapped=((0, 1),))]
    data.errors(model, sites, lesions)
    # The first batch also checks the chain: three runs from the middle.
    ones = 3 + len(lesions) * len(batches)
    assert sorted(seen["stem"]) == sorted([1] * ones + batches)
    assert sorted(seen["last"]) == sorted(
        [b for b in batches for _ in range(1 + len(lesions))] + [batches[0]] * 3
    )


class _TwoPaths(nn.Module):
    """Not a chain: the head reads the stem as well as the last block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 6)
        self.blocks = nn.Sequential(ResidualMLP(6, 8), ResidualMLP(6, 8), ResidualMLP(6, 8))
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.fc(self.blocks(h) + h)


def test_a_net_that_is_not_a_chain_falls_back_to_whole_passes() -> None:
    torch.manual_seed(0)
    model = _TwoPaths().eval()
    x = torch.randn(30, 6)
    y = torch.randint(0, 3, (30,))
    data = Top1Error(x, y, cache_bytes=10 * 18 * 4, fast=False)
    sites = block_sites(model, x[:1])
    inputs, out = prefix.block_inputs(model, list(model.blocks), x)
    assert not prefix.runs_from_the_middle(model, list(model.blocks), inputs, out, x)
    lesions = [Lesion(), Lesion(deleted=(1,)), Lesion(deleted=(0, 2)), Lesion(swapped=((0, 2),))]
    assert measure_lesions(model, sites, lesions, data) == _plainly(model, sites, lesions, data)


def test_lesion_net_is_the_same_through_shared_prefixes() -> None:
    model = _net("resnet14", preact=True)
    data = _data(model, n=40)
    fast = lesion_net(model, data, data.images[:1], draws=2)
    slow = lesion_net(model, lambda m: data(m), data.images[:1], draws=2)
    assert fast == slow
    assert fast["deleted_error"] != [fast["intact_error"]] * len(fast["deleted_error"])
