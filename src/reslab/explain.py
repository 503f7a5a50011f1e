"""The seed's worked example, computed by a real :class:`reslab.Residual` module.

A block is asked for ``H(x)``. Instead of learning ``H`` outright, its branch learns only the
correction ``F(x) = H(x) - x`` and the shortcut adds ``x`` back: ``y = x + F(x)``. The branch
here is a linear layer that starts at zero — so the block starts as the identity — and is
fitted by gradient descent; the numbers printed are whatever the module computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reslab.blocks import Residual

SEED_X = (2.0, 1.5, 0.8)
SEED_H = (2.3, 1.4, 1.0)
# A fixed W_s for the shape-changing case: each output averages two neighbouring inputs.
SEED_WS = ((0.5, 0.5, 0.0), (0.0, 0.5, 0.5))
SEED_H2 = (1.9, 1.0)


@dataclass
class Example:
    """One pass through a residual block, with every intermediate value."""

    x: list[float]  # the input
    target: list[float]  # the desired mapping H(x)
    correction: list[float]  # F(x), computed by the fitted branch
    skip: list[float]  # shortcut(x): x itself, or W_s x
    y: list[float]  # shortcut(x) + F(x), computed by the module's forward
    projection: list[list[float]] | None  # W_s, when the shapes differ


def _fit(block: Residual, x: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    """Fit only the branch (the shortcut is fixed) to reach ``target`` by gradient descent."""
    opt = torch.optim.SGD(block.branch.parameters(), lr=0.1)
    for _ in range(steps):
        loss = (block(x) - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _as_list(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.flatten()]


def worked_example(
    x: Sequence[float] = SEED_X,
    target: Sequence[float] = SEED_H,
    projection: Sequence[Sequence[float]] | None = None,
    steps: int = 500,
) -> Example:
    """Run the example through a real :class:`Residual`; a ``projection`` W_s changes shape."""
    xt = torch.tensor([list(x)], dtype=torch.float64)
    ht = torch.tensor([list(target)], dtype=torch.float64)
    shortcut: nn.Module | None = None
    if projection is not None:
        w = torch.tensor([list(r) for r in projection], dtype=torch.float64)
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
        with torch.no_grad():
            linear.weight.copy_(w)
        linear.weight.requires_grad_(False)
        shortcut = linear
    branch = nn.Linear(xt.shape[1], ht.shape[1]).double()
    # Zero branch: the block starts as its shortcut and only has to learn the correction.
    nn.init.zeros_(branch.weight)
    nn.init.zeros_(branch.bias)
    block = Residual(branch, shortcut)
    _fit(block, xt, ht, steps)
    with torch.no_grad():
        assert block.shortcut is not None
        return Example(
            x=_as_list(xt),
            target=_as_list(ht),
            correction=_as_list(block.branch(xt)),
            skip=_as_list(block.shortcut(xt)),
            y=_as_list(block(xt)),
            projection=None if projection is None else [list(map(float, r)) for r in projection],
        )


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}".replace("-0.00", "0.00") for v in values) + "]"


def describe(same: Example, changed: Example) -> str:
    """The six workflow steps, as text, from two computed examples."""
    lines = [
        "A residual block: y = x + F(x). The layers learn only the correction F(x) = H(x) - x.",
        "",
        f"1. Input             x    = {_fmt(same.x)}",
        f"   Desired mapping   H(x) = {_fmt(same.target)}",
        f"2. Main path         F(x) = {_fmt(same.correction)}   (learned by the branch)",
        f"3. Skip path         x    = {_fmt(same.skip)}   (identity, no parameters)",
        f"4. Addition          x + F(x) = {_fmt(same.skip)} + {_fmt(same.correction)}",
        f"5. Output            y    = {_fmt(same.y)}   (= H(x))",
        "",
        "6. When shapes differ, the skip path is a projection W_s and y = W_s x + F(x):",
        "   W_s = [" + ", ".join(_fmt(r) for r in changed.projection or []) + "]",
        f"   W_s x = {_fmt(changed.skip)},  F(x) = {_fmt(changed.correction)},  "
        f"y = {_fmt(changed.y)}  (target {_fmt(changed.target)})",
        "",
        "If the identity were already right, F would only have to be zero, which is easier to",
        "learn than the identity through a stack of nonlinear layers (He et al. 2015, §3.1).",
    ]
    return "\n".join(lines)
