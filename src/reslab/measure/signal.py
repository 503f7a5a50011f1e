"""Signal propagation plots: the forward signal's statistics at the end of every block.

Brock, De & Smith 2021 (arXiv:2101.08692, §3) characterise the forward pass of a ResNet by
three numbers per residual block, measured on one batch at the output of the block (the
tensor the next block receives):

* the **average channel squared mean**: the mean over channels of (mean over N, H, W of x)²;
* the **average channel variance**: the mean over channels of the variance over N, H, W of x;
* the **residual average channel variance**: the same variance of the residual branch's
  output F(x), before it is merged with the skip path.

Their Fig. 1 shows what BN does to a pre-activation ResNet at initialisation: the variance
grows with every block of a stage (each adds a BN-normalised branch to the skip path) and
falls back at the first block of the next stage, whose shortcut reads a normalised input.

Conventions, as in :mod:`reslab.measure.probes`: blocks are the modules for which
:func:`reslab.blocks.is_block` holds, in ``model.named_modules()`` order, each run exactly once
per forward pass; hooks are always removed, the train/eval mode and every buffer (BN's running
statistics) restored, and the result is a dataclass of plain lists and floats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from reslab.blocks import ConvBlock
from reslab.errors import ModelError

Hook = Callable[..., None]


@dataclass(frozen=True)
class SignalPropagation:
    """One batch's signal propagation plot (Brock et al. 2021, §3); see :func:`signal_propagation`.

    Per block, input to output: ``block_names[l]`` (e.g. ``"layer2.0"``), ``stages[l]`` (0-based
    index of the container the block sits in), and, of the block's output,
    ``squared_means[l]`` (average channel squared mean) and ``variances[l]`` (average channel
    variance). ``residual_variances[l]`` is the average channel variance of the branch output
    F(x) as the block's ``branch`` returns it, before the join scales, gates or adds it; it is
    ``None`` for a plain block, which has no skip path for F(x) to be merged into (its output is
    the block's whole function, already in ``variances``).

    ``input_squared_mean`` and ``input_variance`` describe the stem's output, the tensor
    entering the first block (depth 0 of the plot). ``train_mode`` records whether BN used
    batch statistics (True) or its running statistics (False).
    """

    block_names: list[str]
    stages: list[int]
    squared_means: list[float]
    variances: list[float]
    residual_variances: list[float | None]
    input_squared_mean: float
    input_variance: float
    train_mode: bool

    @property
    def depth_squared_means(self) -> list[float]:
        """The stem output's squared mean, then every block's: depths 0..L of the plot."""
        return [self.input_squared_mean, *self.squared_means]

    @property
    def depth_variances(self) -> list[float]:
        """The stem output's variance, then every block's: depths 0..L of the plot."""
        return [self.input_variance, *self.variances]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of plain lists, floats, strings and bools (JSON-ready)."""
        return dataclasses.asdict(self)


def channel_statistics(x: Tensor) -> tuple[float, float]:
    """(average channel squared mean, average channel variance) of ``x`` (N, C, ...).

    Statistics of channel ``c`` are taken over every other axis (N, H, W); the variance is the
    population variance (divisor N·H·W), the one BN normalises by, so a BN output in train mode
    has variance 1 up to BN's ε. Computed in float64.
    """
    if x.ndim < 2:
        raise ValueError(f"need an (N, C, ...) tensor, got shape {tuple(x.shape)}")
    dims = [d for d in range(x.ndim) if d != 1]
    var, mean = torch.var_mean(x.detach().to(torch.float64), dim=dims, correction=0)
    return float(mean.square().mean()), float(var.mean())


def _named_blocks(model: nn.Module) -> list[tuple[str, ConvBlock]]:
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, ConvBlock)]
    if not blocks:
        raise ModelError(
            f"{type(model).__name__} has no residual or plain blocks to measure: signal "
            "propagation needs a network built from reslab.blocks (e.g. create_model('resnet20'))"
        )
    return blocks


def _stage_indices(names: list[str]) -> list[int]:
    """0-based stage of each block: blocks in the same container share a stage."""
    parents: dict[str, int] = {}
    return [parents.setdefault(n.rpartition(".")[0], len(parents)) for n in names]


@contextmanager
def _preserved(model: nn.Module, training: bool) -> Iterator[None]:
    """Run in ``training`` mode, then restore every module's mode and every buffer.

    A train-mode forward updates BN's running statistics (and ``num_batches_tracked``); a
    measurement must not, so the buffers are copied before and written back after, even when
    the forward raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.train(training)
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _recorder(records: list[tuple[float, float]], arg: int | None) -> Hook:
    """A hook appending the statistics of positional argument ``arg``, or of the output (None).

    The statistics are taken at once rather than the tensor kept: a later in-place op (the
    ReLU-only pre-activation net's final ``ReLU(inplace=True)`` on the last block's output)
    would otherwise change it before it is read, and a deep net's activations need not all be
    held in memory together.
    """

    def hook(module: nn.Module, args: tuple[Any, ...], *output: Any) -> None:
        if arg is None:
            tensor = output[0]
        elif len(args) > arg:
            tensor = args[arg]
        else:
            raise ModelError(
                f"{type(module).__name__} was called with {len(args)} positional arguments; "
                f"signal propagation reads argument {arg}"
            )
        records.append(channel_statistics(tensor))

    return hook


def _once(records: list[tuple[float, float]], what: str) -> tuple[float, float]:
    if len(records) != 1:
        raise ModelError(
            f"{what} ran {len(records)} times in one forward pass; signal propagation needs "
            "each block to run exactly once"
        )
    return records[0]


def signal_propagation(
    model: nn.Module, x: Tensor, *, train_mode: bool = True
) -> SignalPropagation:
    """The signal propagation plot of ``model`` on the batch ``x`` (Brock et al. 2021, §3).

    One forward pass under :func:`torch.no_grad`, with forward hooks on every block (its output),
    on the first block (its input, the stem's output) and on each residual block's ``join``,
    whose third argument is F(x) exactly as the forward computed it: after the pre-activation
    of a pre-activation block, before any scale, gate or dropout of the join.

    ``train_mode=True`` (the default) runs the net in training mode, so BN normalises with the
    batch's own statistics: Brock et al. study BN networks at initialisation this way, where
    eval mode would apply BN's initial running statistics (mean 0, variance 1), nearly the
    identity, and show an unnormalised net instead. ``train_mode=False`` measures the net as it
    is evaluated, e.g. a trained net with its running statistics. In training mode dropout
    (wide ResNets' ``drop_rate``, the shortcut-dropout join) is active, as training sees it.

    The model's mode, parameters and buffers are left as they were, and every hook is removed,
    also when the forward raises. Use a batch of a few dozen samples at least: with BN on batch
    statistics the measurement depends on the batch.

    At initialisation on 64 N(0, 1) 32×32 images: resnet56 (width 0.25) climbs 0.78 → 4.15
    through stage 1 and falls to 2.56 at the transition; plain56 stays within 0.31-0.39;
    preact_resnet110 (width 0.5) climbs ≈1 → 13 through each stage and is back at ≈1 after each
    projection, Fig. 1's saw-tooth.
    """
    named = _named_blocks(model)
    names = [n for n, _ in named]
    stem: list[tuple[float, float]] = []
    outputs: list[list[tuple[float, float]]] = [[] for _ in named]
    branches: list[list[tuple[float, float]] | None] = [
        None if block.shortcut is None else [] for _, block in named
    ]
    handles: list[RemovableHandle] = []
    try:
        handles.append(named[0][1].register_forward_pre_hook(_recorder(stem, 0)))
        for (_, block), out_rec, branch_rec in zip(named, outputs, branches, strict=True):
            handles.append(block.register_forward_hook(_recorder(out_rec, None)))
            if branch_rec is not None:
                # join(x, shortcut(x), F(x)): argument 2 is the branch before the merge.
                handles.append(block.join.register_forward_pre_hook(_recorder(branch_rec, 2)))
        with _preserved(model, train_mode), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()

    input_stats = _once(stem, f"block {names[0]!r}")
    output_stats = [_once(r, f"block {n!r}") for n, r in zip(names, outputs, strict=True)]
    residual = [
        None if r is None else _once(r, f"the join of block {n!r}")[1]
        for n, r in zip(names, branches, strict=True)
    ]
    return SignalPropagation(
        block_names=names,
        stages=_stage_indices(names),
        squared_means=[m for m, _ in output_stats],
        variances=[v for _, v in output_stats],
        residual_variances=residual,
        input_squared_mean=input_stats[0],
        input_variance=input_stats[1],
        train_mode=train_mode,
    )


__all__ = ["SignalPropagation", "channel_statistics", "signal_propagation"]
