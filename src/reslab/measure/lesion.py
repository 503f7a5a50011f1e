"""Lesions of a trained network at test time: their errors, and the curves of §4.

Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles of relatively shallow
networks" (arXiv:1605.06431), §4: deleting one block of a trained ResNet, keeping its shortcut,
barely changes its test error, except for the blocks that change the shape (their shortcut is
a subsample or a projection, not the identity); a VGG-style plain net falls to chance. Error
grows smoothly with the number of blocks deleted (their Fig. 4a) and with the number of pairs
of blocks swapped within a stage (Fig. 4b), as an ensemble's would.

Where a lesion goes and what a deletion or a swap computes: :mod:`reslab.measure.lesion_sites`
(its names are exported here too). How a net's many lesions are measured fast: shared prefixes
(:mod:`reslab.measure.prefix`) on a copy with every BN folded into its convolution
(:mod:`reslab.measure.inference`), in :class:`Top1Error`.

This module sits at the models layer: it imports only :mod:`reslab.blocks` and torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reslab.errors import ModelError
from reslab.measure import prefix
from reslab.measure.inference import PRECISIONS, autocast, fold_batchnorm
from reslab.measure.lesion_sites import (
    BlockSite,
    Lesion,
    block_sites,
    delete_blocks,
    draw_deletions,
    draw_swaps,
    named_blocks,
    swap_blocks,
    swappable_pairs,
)

__all__ = [
    "MAX_KS",
    "BlockSite",
    "ErrorFn",
    "Lesion",
    "Top1Error",
    "block_sites",
    "delete_blocks",
    "deletion_curve",
    "draw_deletions",
    "draw_swaps",
    "error_per_deleted_block",
    "k_grid",
    "lesion_net",
    "measure_lesions",
    "study_lesions",
    "swap_blocks",
    "swap_curve",
    "swappable_pairs",
    "top1_error",
]

MAX_KS = 12  # k values measured when there are more blocks than that: spread evenly

# --- the measurements of §4 ---------------------------------------------------------------------

ErrorFn = Callable[[nn.Module], float]  # the model as it stands (lesioned) -> test error, %


@dataclass(frozen=True)
class Top1Error:
    """Normalised test images and their labels: the top-1 error (%) of a net and its lesions.

    Called on a model, the error of the model as it stands, exactly. :meth:`errors` measures
    many lesions of one net together, batch by batch: one intact forward pass records the input
    of every block (:mod:`reslab.measure.prefix`), and each lesion runs from its first changed
    block on. ``cache_bytes`` bounds those recorded inputs, which with ``batch_size`` sets the
    batch. ``fast`` runs those passes on a copy of the net with every BN folded into its
    convolution, weights and inputs channels_last (:mod:`reslab.measure.inference`): the same
    function rounded differently, so a prediction can change only on a near-tie (the tests
    bound both). ``precision``: fp32, or bf16 autocast for every pass.
    """

    images: Tensor
    labels: Tensor
    batch_size: int = 1000  # at most this many images a forward pass
    cache_bytes: int = 256 * 2**20  # the recorded block inputs of one batch, at most
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    fast: bool = True  # errors(): BN folded and channels_last, on a copy

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    def __call__(self, model: nn.Module) -> float:
        wrong = 0
        with torch.inference_mode(), autocast(self.images.device, self.precision):
            for x, y in self._batches(self.batch_size):
                wrong += int((model(x).argmax(1) != y).sum())
        return 100.0 * wrong / max(1, len(self.labels))

    def errors(
        self, model: nn.Module, sites: Sequence[BlockSite], lesions: Sequence[Lesion]
    ) -> list[float]:
        """The error of each lesion of ``model``: applying it and calling this, up to
        near-ties where ``fast`` (exactly without)."""
        wrong = (self.predictions(model, sites, lesions) != self.labels.cpu()).sum(1)
        return [100.0 * int(w) / max(1, len(self.labels)) for w in wrong]

    def predictions(
        self, model: nn.Module, sites: Sequence[BlockSite], lesions: Sequence[Lesion]
    ) -> Tensor:
        """The top-1 class of every image under each lesion: (lesions, images), on the CPU."""
        net = _fast_copy(model) if self.fast else model
        blocks = [b for _, b in named_blocks(net)]
        per_image = sum(math.prod(s.in_shape) for s in sites) * self.images.element_size()
        batch = max(1, min(self.batch_size, self.cache_bytes // per_image))
        found = torch.empty(len(lesions), len(self.labels), dtype=torch.long)
        chain, start = True, 0
        with torch.inference_mode(), autocast(self.images.device, self.precision):
            for n, (x, _) in enumerate(self._batches(batch)):
                x = _channels_last(x) if self.fast else x
                inputs, intact = prefix.block_inputs(net, blocks, x)
                if n == 0:
                    chain = prefix.runs_from_the_middle(net, blocks, inputs, intact, x)
                for j, lesion in enumerate(lesions):
                    logits = _lesioned(net, sites, lesion, inputs, intact, x, chain)
                    found[j, start : start + len(x)] = logits.argmax(1).cpu()
                start += len(x)
        return found

    def _batches(self, size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(self.labels), size):
            yield self.images[i : i + size], self.labels[i : i + size]


def _fast_copy(model: nn.Module) -> nn.Module:
    """The net with its BNs folded, weights channels_last (measured faster: docs/PERFORMANCE.md)."""
    return fold_batchnorm(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _lesioned(
    net: nn.Module,
    sites: Sequence[BlockSite],
    lesion: Lesion,
    inputs: Sequence[Tensor],
    intact: Tensor,
    x: Tensor,
    chain: bool,
) -> Tensor:
    """The logits of ``net`` with ``lesion`` applied: from its first changed block on where the
    blocks form one chain, else a whole forward pass."""
    first = lesion.first_block
    if first is None:
        return intact
    with lesion.applied(net, sites):
        if not chain:
            return net(x)
        block = named_blocks(net)[first][1]  # a swap moved blocks
        return prefix.run_from(net, block, inputs[first], x)


def measure_lesions(
    model: nn.Module,
    sites: Sequence[BlockSite],
    lesions: Sequence[Lesion],
    error: ErrorFn | Top1Error,
) -> list[float]:
    """The error of each lesion: shared prefixes for :class:`Top1Error`, else one call each."""
    if isinstance(error, Top1Error):
        return error.errors(model, sites, lesions)
    measured = []
    for lesion in lesions:
        with lesion.applied(model, sites):
            measured.append(float(error(model)))
    return measured


def _rng(kind: str, seed: int, k: int, draw: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: the same draws on every machine
    # and in every process, and a draw at k does not depend on which other k were measured.
    return random.Random(f"lesion-{kind}-{seed}-{k}-{draw}")


def _single_deletions(sites: Sequence[BlockSite]) -> list[Lesion]:
    return [Lesion(deleted=(s.index,)) for s in sites if s.deletable]


def _drawn_deletions(
    sites: Sequence[BlockSite], ks: Sequence[int], draws: int, seed: int
) -> list[Lesion]:
    return [
        Lesion(deleted=draw_deletions(sites, k, _rng("delete", seed, k, d)))
        for k in ks
        for d in range(draws)
    ]


def _drawn_swaps(
    sites: Sequence[BlockSite], ks: Sequence[int], draws: int, seed: int
) -> list[Lesion]:
    return [
        Lesion(swapped=draw_swaps(sites, k, _rng("swap", seed, k, d)))
        for k in ks
        for d in range(draws)
    ]


def _per_block(sites: Sequence[BlockSite], errors: Sequence[float]) -> list[float | None]:
    measured = iter(errors)
    return [next(measured) if s.deletable else None for s in sites]


def _rows(
    ks: Sequence[int],
    lesions: Sequence[Lesion],
    errors: Sequence[float],
    name: str,
    drawn: Callable[[Lesion], Any],
) -> list[dict[str, Any]]:
    """One row per k, ``{"k", "errors", name}``, from lesions and errors in k-major order."""
    n = len(lesions) // max(1, len(ks))  # draws per k
    return [
        {
            "k": k,
            "errors": list(errors[i * n : (i + 1) * n]),
            name: [drawn(x) for x in lesions[i * n : (i + 1) * n]],
        }
        for i, k in enumerate(ks)
    ]


def _deletion_rows(
    ks: Sequence[int], lesions: Sequence[Lesion], errors: Sequence[float]
) -> list[dict[str, Any]]:
    return _rows(ks, lesions, errors, "blocks", lambda x: list(x.deleted))


def _swap_rows(
    ks: Sequence[int], lesions: Sequence[Lesion], errors: Sequence[float]
) -> list[dict[str, Any]]:
    return _rows(ks, lesions, errors, "pairs", lambda x: [list(p) for p in x.swapped])


def error_per_deleted_block(
    model: nn.Module, sites: Sequence[BlockSite], error: ErrorFn | Top1Error
) -> list[float | None]:
    """Error with each block deleted alone (Veit et al. Fig. 3); None where it cannot be."""
    return _per_block(sites, measure_lesions(model, sites, _single_deletions(sites), error))


def deletion_curve(
    model: nn.Module,
    sites: Sequence[BlockSite],
    error: ErrorFn | Top1Error,
    ks: Sequence[int],
    draws: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Error with ``k`` random shape-preserving blocks deleted, ``draws`` draws per ``k`` (Fig. 4a).

    One row per ``k``: ``{"k", "errors", "blocks"}``, the blocks being the drawn indices.
    """
    lesions = _drawn_deletions(sites, ks, draws, seed)
    return _deletion_rows(ks, lesions, measure_lesions(model, sites, lesions, error))


def swap_curve(
    model: nn.Module,
    sites: Sequence[BlockSite],
    error: ErrorFn | Top1Error,
    ks: Sequence[int],
    draws: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Error with ``k`` random pairs of same-stage blocks swapped, ``draws`` per ``k`` (Fig. 4b).

    One row per ``k``: ``{"k", "errors", "pairs"}``.
    """
    lesions = _drawn_swaps(sites, ks, draws, seed)
    return _swap_rows(ks, lesions, measure_lesions(model, sites, lesions, error))


def k_grid(n: int, ks: Sequence[int] = ()) -> list[int]:
    """The k to measure, 1 ≤ k ≤ n: ``ks`` if given, else every k up to :data:`MAX_KS` of them."""
    if ks:
        return sorted({k for k in ks if 1 <= k <= n})
    if n <= MAX_KS:
        return list(range(1, n + 1))
    return sorted({round(1 + i * (n - 1) / (MAX_KS - 1)) for i in range(MAX_KS)})


def top1_error(
    images: Tensor, labels: Tensor, batch_size: int = 1000, precision: str = "fp32"
) -> Top1Error:
    """Top-1 error (%) on normalised ``images``: the model as it stands, in eval mode; its
    lesions measured fast (:class:`Top1Error`) in ``precision`` (fp32 or bf16)."""
    return Top1Error(images, labels, batch_size, precision=precision)


def _k_grids(sites: Sequence[BlockSite], ks: Sequence[int]) -> tuple[list[int], list[int]]:
    """The k of the deletion curve and of the swap curve."""
    return k_grid(sum(s.shape_preserving for s in sites), ks), k_grid(
        len(swappable_pairs(sites)), ks
    )


def study_lesions(sites: Sequence[BlockSite], draws: int, ks: Sequence[int] = ()) -> list[Lesion]:
    """Every lesion :func:`lesion_net` measures, in its order: intact, each block deleted
    alone, then ``draws`` random deletions and ``draws`` random swaps for each k."""
    k_delete, k_swap = _k_grids(sites, ks)
    return [
        Lesion(),
        *_single_deletions(sites),
        *_drawn_deletions(sites, k_delete, draws, 0),
        *_drawn_swaps(sites, k_swap, draws, 0),
    ]


def lesion_net(
    model: nn.Module,
    error: ErrorFn,
    sample: Tensor,
    *,
    draws: int,
    ks: Sequence[int] = (),
) -> dict[str, Any]:
    """Every lesion of §4 on one net: a results.json ``lesion.nets`` entry without its labels.

    ``intact_error``; per block ``block``, ``stage``, ``shape_preserving`` and
    ``deleted_error`` (``None`` for a plain block that changes the shape); ``deleted`` and
    ``swapped``: rows ``{"k", "errors", ...}`` over ``draws`` random draws per k.
    """
    model.eval()
    sites = block_sites(model, sample)
    k_delete, k_swap = _k_grids(sites, ks)
    lesions = study_lesions(sites, draws, ks)
    # Every lesion of the net in one pass over the test images: their prefixes are shared.
    errors = measure_lesions(model, sites, lesions, error)
    singles = sum(s.deletable for s in sites)
    cut = [1, 1 + singles, 1 + singles + len(k_delete) * draws]
    return {
        "intact_error": errors[0],
        "block": [s.name for s in sites],
        "stage": [s.stage for s in sites],
        "shape_preserving": [s.shape_preserving for s in sites],
        "deleted_error": _per_block(sites, errors[cut[0] : cut[1]]),
        "deleted": _deletion_rows(k_delete, lesions[cut[1] : cut[2]], errors[cut[1] : cut[2]]),
        "swapped": _swap_rows(k_swap, lesions[cut[2] :], errors[cut[2] :]),
    }
