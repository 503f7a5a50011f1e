"""Stochastic depth: drop a residual block's branch, keep its shortcut (Huang et al. 2016).

Huang, Sun, Liu, Sedra & Weinberger, "Deep Networks with Stochastic Depth" (arXiv:1603.09382):
while training, each residual block's branch ``F`` is dropped at random and the block is its
shortcut alone, ``y = shortcut(x)``; a net of expected depth well below its real depth trains
faster and generalises better. It is a result about residual nets: the shortcut carries the
signal past a dropped block. A plain net has no shortcut, and dropping its block would zero the
signal, so reslab refuses ``drop_path_rate`` on a plain twin (:class:`~reslab.models.ResNet`).

Two choices, both timm's (``timm.layers.DropPath``): a branch is dropped per sample rather than
for the whole mini-batch as in the paper, and the kept branches are scaled by ``1/keep`` while
training, so evaluation is the plain forward (the paper scales ``F`` by its survival
probability at test time instead: the same expectation). The drop probability grows linearly
with depth, the paper's "linear decay" rule (§3, Eq. 4): block ``l`` of ``L`` drops with
``l/L · drop_path_rate``, so the last block drops with ``drop_path_rate`` (the paper's
``1 − p_L``; 0.5 there) and the first, whose output every later block reads, least.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """``x`` with each sample zeroed with probability ``p`` and the others scaled by ``1/(1-p)``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = [x.shape[0]] + [1] * (x.dim() - 1)  # one draw per sample
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """:func:`drop_path` as a module: the residual branch of one block, dropped with ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}"


def linear_decay(rate: float, n_blocks: int) -> list[float]:
    """Each block's drop probability, input to output: ``l/L · rate`` (arXiv:1603.09382 Eq. 4)."""
    return [rate * (i + 1) / n_blocks for i in range(n_blocks)]


__all__ = ["DropPath", "drop_path", "linear_decay"]
