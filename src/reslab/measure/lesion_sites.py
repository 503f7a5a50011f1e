"""Where a lesion goes and what it does: a net's blocks as sites, deleting and swapping them.

The sites and operations of Veit, Wilber & Belongie 2016's lesions (arXiv:1605.06431, §4);
what they measure is :mod:`reslab.measure.lesion`.

What a deletion computes. A deleted block is the block with its residual function ``F``
forced to zero: ``y = post(shortcut(x))``, where ``post`` is what the block's own forward does
after the addition (the ReLU of a post-activation block, nothing for a pre-activation one).
Inside a CIFAR or ImageNet net every block's input is the output of a ReLU, so for an identity
or option-A shortcut this is exactly ``y = shortcut(x)``; for a B/C projection it is the
projection the trained block would have passed on. A plain block has no shortcut: it can only
be replaced by the identity, which is possible where its input and output shapes match; its
shape-changing blocks cannot be deleted and are marked so (:attr:`BlockSite.deletable`).

How, without touching the weights. A deletion shadows the block's branch (``branch``, and the
``_branch`` a pre-activation block's forward calls) with a function that returns a scalar zero,
through the instance ``__dict__``; a plain block's ``forward`` is shadowed by the identity. The
modules and their parameters stay where they are, so ``state_dict`` is the same during and
after a lesion. A swap exchanges two entries of the stage container's ``_modules``. Both are
context managers that put everything back on exit, exceptions included. Sites are named by
their module names, so they apply to any copy of the net with the same modules (the folded
copy of :mod:`reslab.measure.inference`).

This module sits at the models layer: it imports only :mod:`reslab.blocks` and torch.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reslab.blocks import ConvBlock as _Block
from reslab.blocks import Residual
from reslab.errors import ModelError

__all__ = [
    "BlockSite",
    "Lesion",
    "block_sites",
    "delete_blocks",
    "draw_deletions",
    "draw_swaps",
    "named_blocks",
    "swap_blocks",
    "swappable_pairs",
]

# Names a block's forward calls for F(x): _Block.branch (post-activation), _PreActBlock._branch,
# Residual.branch (a submodule, which the instance __dict__ shadows the same way).
_BRANCH_NAMES = ("branch", "_branch")
_LESIONED = "_reslab_lesioned"  # instance flag: a block already deleted in an open lesion


@dataclass(frozen=True)
class BlockSite:
    """One block of a network as the lesions see it."""

    index: int  # position among all blocks, input to output
    name: str  # qualified module name, e.g. "layer2.0"
    stage: int  # 0-based stage: blocks in the same container share one
    position: int  # position inside its stage
    residual: bool  # the block has a shortcut
    in_shape: tuple[int, ...]  # one sample's input shape, e.g. (16, 32, 32)
    out_shape: tuple[int, ...]

    @property
    def shape_preserving(self) -> bool:
        return self.in_shape == self.out_shape

    @property
    def deletable(self) -> bool:
        """A residual block always (its shortcut stays); a plain one only where shapes match."""
        return self.residual or self.shape_preserving

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "stage": self.stage,
            "position": self.position,
            "residual": self.residual,
            "shape_preserving": self.shape_preserving,
            "deletable": self.deletable,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
        }


def _is_block(module: nn.Module) -> bool:
    return isinstance(module, _Block | Residual)


def named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost blocks, input to output (a block inside a block's branch is part of it)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if _is_block(module) and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    if not found:
        raise ModelError(
            f"{type(model).__name__} has no residual or plain blocks to lesion: the lesions "
            "need a network built from reslab.blocks (e.g. create_model('resnet20'))"
        )
    return found


def _has_shortcut(block: nn.Module) -> bool:
    return getattr(block, "shortcut", None) is not None


def block_sites(model: nn.Module, sample: Tensor) -> list[BlockSite]:
    """Every block of ``model`` with its stage and shapes, from one forward pass of ``sample``.

    The shapes are recorded, not derived from the layout, so any net built from
    :mod:`reslab.blocks` works; the pass runs in eval mode without gradients, and the model's
    modes are restored after it.
    """
    blocks = named_blocks(model)
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(idx: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            shapes.setdefault(idx, (tuple(args[0].shape[1:]), tuple(out.shape[1:])))

        return record

    handles = [b.register_forward_hook(hook(i)) for i, (_, b) in enumerate(blocks)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
        for m, was_training in modes:
            m.training = was_training
    missing = [name for i, (name, _) in enumerate(blocks) if i not in shapes]
    if missing:
        raise ModelError(f"blocks {', '.join(missing)} did not run in the model's forward pass")
    parents: dict[str, int] = {}
    positions: dict[int, int] = {}
    sites = []
    for i, (name, block) in enumerate(blocks):
        stage = parents.setdefault(name.rpartition(".")[0], len(parents))
        position = positions[stage] = positions.get(stage, -1) + 1
        sites.append(BlockSite(i, name, stage, position, _has_shortcut(block), *shapes[i]))
    return sites


# --- deleting -----------------------------------------------------------------------------------


def _zero(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """F(x) = 0, as a scalar: ``0 + shortcut(x)`` broadcasts to the shortcut's own shape."""
    return x.new_zeros(())


def _identity(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x


def _shadowed_names(block: nn.Module, residual: bool) -> tuple[str, ...]:
    if not residual:
        return ("forward",)
    return tuple(n for n in _BRANCH_NAMES if hasattr(type(block), n) or n in block._modules)


@contextmanager
def delete_blocks(
    model: nn.Module, sites: Sequence[BlockSite], indices: Iterable[int]
) -> Iterator[nn.Module]:
    """Within the ``with``, the blocks at ``indices`` (of ``sites``) are deleted.

    A residual block then computes its shortcut path alone (F = 0, see the module docstring),
    a plain block the identity. A plain block that changes the shape cannot be deleted: a
    ModelError names it. The same model comes back, restored on exit.
    """
    chosen = sorted(set(indices))
    blocks = dict(named_blocks(model))
    patches: list[tuple[nn.Module, tuple[str, ...]]] = []
    for i in chosen:
        site = _site(sites, i)
        if not site.deletable:
            raise ModelError(
                f"block {site.name} is plain and changes the shape {site.in_shape} -> "
                f"{site.out_shape}: without a shortcut nothing can stand in for it"
            )
        block = blocks[site.name]
        if vars(block).get(_LESIONED):
            raise ModelError(f"block {site.name} is already deleted by an open lesion")
        patches.append((block, _shadowed_names(block, site.residual)))
    try:
        for block, shadowed in patches:
            for name in shadowed:
                vars(block)[name] = _identity if name == "forward" else _zero
            vars(block)[_LESIONED] = True
        yield model
    finally:
        for block, shadowed in patches:
            for name in (*shadowed, _LESIONED):
                vars(block).pop(name, None)


def _site(sites: Sequence[BlockSite], index: int) -> BlockSite:
    if not isinstance(index, int) or not 0 <= index < len(sites):
        raise ModelError(f"block index {index!r} is not one of 0..{len(sites) - 1}")
    return sites[index]


def draw_deletions(
    sites: Sequence[BlockSite], k: int, rng: random.Random, *, shape_changing: bool = False
) -> tuple[int, ...]:
    """``k`` distinct deletable blocks drawn at random (shape-preserving ones only by default).

    The default keeps residual and plain nets comparable: both can lose exactly these blocks.
    """
    pool = [s.index for s in sites if s.deletable and (shape_changing or s.shape_preserving)]
    if not 0 <= k <= len(pool):
        raise ModelError(f"cannot delete {k} blocks at random: {len(pool)} can be deleted")
    return tuple(sorted(rng.sample(pool, k)))


# --- swapping -----------------------------------------------------------------------------------


def swappable_pairs(sites: Sequence[BlockSite]) -> list[tuple[int, int]]:
    """Every pair of shape-preserving blocks of the same stage, as (index, index)."""
    pairs: list[tuple[int, int]] = []
    for _, group in itertools.groupby(sites, key=lambda s: s.stage):
        same = [s.index for s in group if s.shape_preserving]
        pairs.extend(itertools.combinations(same, 2))
    return pairs


def draw_swaps(
    sites: Sequence[BlockSite], k: int, rng: random.Random
) -> tuple[tuple[int, int], ...]:
    """``k`` distinct swappable pairs drawn at random, applied in the order drawn."""
    pool = swappable_pairs(sites)
    if not 0 <= k <= len(pool):
        raise ModelError(f"cannot swap {k} pairs of blocks: there are {len(pool)} pairs")
    return tuple(rng.sample(pool, k))


@contextmanager
def swap_blocks(
    model: nn.Module, sites: Sequence[BlockSite], pairs: Iterable[tuple[int, int]]
) -> Iterator[nn.Module]:
    """Within the ``with``, each pair of blocks trades places, one transposition after another.

    Only shape-preserving blocks of the same stage can swap (Veit et al. swap blocks of the
    same dimensionality); anything else is a ModelError. Restored on exit.
    """
    slots: dict[int, tuple[nn.Module, str]] = {}  # site index -> (stage container, its key)
    current: dict[int, nn.Module] = {}  # site index -> the block sitting there now
    for a, b in pairs:
        sa, sb = _site(sites, a), _site(sites, b)
        for s in (sa, sb):
            if not s.shape_preserving:
                raise ModelError(
                    f"block {s.name} changes the shape {s.in_shape} -> {s.out_shape}: "
                    "only shape-preserving blocks can swap places"
                )
        if sa.stage != sb.stage:
            raise ModelError(f"blocks {sa.name} and {sb.name} are in different stages")
        for s in (sa, sb):
            if s.index not in slots:
                parent, _, key = s.name.rpartition(".")
                container = model.get_submodule(parent)
                slots[s.index] = (container, key)
                current[s.index] = container._modules[key]  # type: ignore[assignment]
        current[a], current[b] = current[b], current[a]
    originals = {i: container._modules[key] for i, (container, key) in slots.items()}
    try:
        for i, (container, key) in slots.items():
            container._modules[key] = current[i]
        yield model
    finally:
        for i, (container, key) in slots.items():
            container._modules[key] = originals[i]


@dataclass(frozen=True)
class Lesion:
    """One lesion: blocks deleted (by site index), or pairs swapped in turn; neither: intact."""

    deleted: tuple[int, ...] = ()
    swapped: tuple[tuple[int, int], ...] = ()

    @property
    def first_block(self) -> int | None:
        """The first block it changes: everything before computes what the intact net does."""
        changed = [*self.deleted, *(i for pair in self.swapped for i in pair)]
        return min(changed) if changed else None

    @contextmanager
    def applied(self, model: nn.Module, sites: Sequence[BlockSite]) -> Iterator[nn.Module]:
        with delete_blocks(model, sites, self.deleted), swap_blocks(model, sites, self.swapped):
            yield model
