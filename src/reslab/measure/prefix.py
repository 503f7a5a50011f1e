"""A network run from the middle: the activations entering each block, computed once.

A lesion changes a network from some block on; everything before that block computes what the
intact network computes. So the input of every block can be recorded once, in one intact
forward pass of a batch, and each lesioned network run from its first changed block onwards.
Deleting one block of a ResNet-56 then costs on average half a forward pass, and the deleted
block itself nothing (Veit et al. 2016's lesions: :mod:`reslab.measure.lesion`).

How a network runs from block ``f`` without knowing its forward: the model is called on
*one* sample, and a forward pre-hook on block ``f`` replaces that block's input with the
recorded batch. The layers before ``f`` run on the one sample (a small fraction of a batch's
cost) and everything from ``f`` on sees the whole batch; any head (pooling, norms, dropout,
the classifier) runs as the model's own forward defines it. This holds for a network whose
blocks form one chain, each block's output feeding only the next (every ResNet here);
:func:`runs_from_the_middle` checks it on a batch, and a caller falls back to whole forward
passes where it does not hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["block_inputs", "run_from", "runs_from_the_middle"]


def block_inputs(
    model: nn.Module, blocks: Sequence[nn.Module], x: Tensor
) -> tuple[list[Tensor], Tensor]:
    """The tensor entering each of ``blocks`` in one forward pass of ``x``, and the output.

    The inputs are copies: a later layer working in place cannot change what was recorded.
    """
    inputs: list[Tensor | None] = [None] * len(blocks)

    def recorder(i: int) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if inputs[i] is None:
                inputs[i] = args[0].clone()

        return record

    handles = [b.register_forward_pre_hook(recorder(i)) for i, b in enumerate(blocks)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, t in enumerate(inputs) if t is None]
    if missing:
        raise RuntimeError(f"blocks {missing} did not run in the model's forward pass")
    return [t for t in inputs if t is not None], out


def run_from(model: nn.Module, block: nn.Module, entering: Tensor, x: Tensor) -> Tensor:
    """The model's output when ``block`` receives ``entering`` (a batch recorded for it).

    ``x`` is the batch itself; only its first sample runs through the layers before ``block``.
    """

    def replace(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (entering, *args[1:])

    handle = block.register_forward_pre_hook(replace)
    try:
        return model(x[:1])
    finally:
        handle.remove()


def runs_from_the_middle(
    model: nn.Module, blocks: Sequence[nn.Module], inputs: Sequence[Tensor], out: Tensor, x: Tensor
) -> bool:
    """Whether running the intact model from its first, middle and last block gives ``out``.

    False for a network whose blocks do not form one chain (a block's output feeding more than
    the next one, a head that reads an earlier layer): its shapes clash, or its output differs.
    """
    for i in sorted({0, len(blocks) // 2, len(blocks) - 1}):
        try:
            again = run_from(model, blocks[i], inputs[i], x)
        except RuntimeError:  # torch's shape errors: the one sample met the batch somewhere
            return False
        if again.shape != out.shape or not torch.allclose(again, out, rtol=1e-4, atol=1e-5):
            return False
    return True
