"""The seed's worked example, computed by a real :class:`reslab.Residual` module.

A block is asked for ``H(x)``. Instead of learning ``H`` outright, its branch learns only the
correction ``F(x) = H(x) - x`` and the shortcut adds ``x`` back: ``y = x + F(x)``. The branch
here is a linear layer that starts at zero — so the block starts as the identity — and is
fitted by gradient descent; the numbers printed are whatever the module computes.
:func:`explain_figure` draws the same example as a block diagram (``reslab explain --figure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import nn

from reslab.blocks import Residual
from reslab.report.figures import OKABE_ITO, new_figure, save_figure, style

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


# --- the block diagram ---------------------------------------------------------------------------


def _fmt_number(value: float) -> str:
    text = f"{float(value):.3f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return text.replace("-", "\N{MINUS SIGN}")


def _fmt_vector(values: Sequence[float], limit: int = 6) -> str:
    shown = [_fmt_number(v) for v in list(values)[:limit]]
    more = ", …" if len(values) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def explain_figure(
    x: Sequence[float],
    h: Sequence[float] | None,
    f: Sequence[float],
    y: Sequence[float],
    path: str | Path,
) -> Path:
    """Draw a residual block's worked example, ``y = x + F(x)``, and save it as a PNG.

    ``x`` enters; the main path (weight layers) computes the correction ``f`` = F(x); the
    identity shortcut carries ``x`` around it to the addition ⊕; ``y`` leaves. ``h`` is the
    mapping the block is asked for, H(x) (drawn under the output; ``None`` leaves it out), so
    the figure shows that the layers only learn F(x) = H(x) − x. The numbers are drawn as
    given, never recomputed. Returns ``path``.
    """
    if not len(x) == len(f) == len(y):
        raise ValueError(f"x, F(x) and y must have one length, got {len(x)}, {len(f)}, {len(y)}")
    with style():
        fig = new_figure(11.5, 3.9)
        ax = fig.add_subplot()
        ax.set_xlim(0, 12)
        ax.set_ylim(0.4, 4.3)
        ax.axis("off")
        diagram = _Diagram(ax)
        diagram.main_path(x, f)
        diagram.output(y, h)
        diagram.skip_path(x)
        fig.suptitle(
            "A residual block, worked example: the layers learn only the correction F(x)",
            fontsize=11,
        )
    return save_figure(fig, path)


class _Diagram:
    """The block diagram's parts, drawn on one axes along the line ``y = cy``."""

    cy = 1.9
    blue, vermillion, green = OKABE_ITO[0], OKABE_ITO[1], OKABE_ITO[2]

    def __init__(self, ax: Axes) -> None:
        self.ax = ax

    def box(self, cx: float, w: float, text: str, colour: str, face: str) -> None:
        self.ax.add_patch(
            FancyBboxPatch(
                (cx - w / 2, self.cy - 0.45),
                w,
                0.9,
                boxstyle="round,pad=0.05,rounding_size=0.12",
                facecolor=face,
                edgecolor=colour,
                linewidth=1.6,
            )
        )
        self.ax.text(cx, self.cy, text, ha="center", va="center", fontsize=10)

    def arrow(self, x0: float, x1: float) -> None:
        self.ax.add_patch(
            FancyArrowPatch(
                (x0, self.cy),
                (x1, self.cy),
                arrowstyle="-|>",
                mutation_scale=14,
                color="0.15",
                lw=1.5,
            )
        )

    def main_path(self, x: Sequence[float], f: Sequence[float]) -> None:
        """The input, then the main path F (framed): weight layer, ReLU, weight layer."""
        ax, cy, vermillion = self.ax, self.cy, self.vermillion
        self.box(1.0, 1.6, f"input x\n{_fmt_vector(x)}", "0.2", "#F2F2F2")
        ax.add_patch(
            Rectangle(
                (2.2, cy - 0.8),
                4.5,
                1.6,
                fill=False,
                linestyle="--",
                edgecolor=vermillion,
                linewidth=1.2,
            )
        )
        ax.text(4.45, cy - 1.05, "main path F (weight layers)", ha="center", color=vermillion)
        self.box(3.1, 1.4, "weight layer\n+ ReLU", vermillion, "#FBE7DA")
        self.box(5.8, 1.4, "weight layer", vermillion, "#FBE7DA")
        self.arrow(1.85, 2.35)
        self.arrow(3.85, 5.05)
        self.arrow(6.55, 8.1)
        ax.text(
            7.45, cy - 0.12, f"F(x) =\n{_fmt_vector(f)}", ha="center", va="top", color=vermillion
        )

    def output(self, y: Sequence[float], h: Sequence[float] | None) -> None:
        """The addition and the output, with the asked-for mapping H(x) under it."""
        ax, cy = self.ax, self.cy
        ax.add_patch(Circle((8.4, cy), 0.28, facecolor="white", edgecolor="0.15", linewidth=1.6))
        ax.text(8.4, cy, "+", ha="center", va="center", fontsize=16, fontweight="bold")
        self.arrow(8.7, 9.35)
        self.box(10.6, 2.2, f"output y = x + F(x)\n{_fmt_vector(y)}", self.green, "#DDF2EC")
        if h is not None:
            ax.text(
                10.6,
                cy - 0.6,
                f"asked for H(x) = {_fmt_vector(h)}\nthe layers learn F(x) = H(x) \N{MINUS SIGN} x",
                ha="center",
                va="top",
                color="0.25",
                fontsize=9,
            )

    def skip_path(self, x: Sequence[float]) -> None:
        """The identity shortcut, curving over F into the addition."""
        self.ax.add_patch(
            FancyArrowPatch(
                (1.0, self.cy + 0.5),
                (8.4, self.cy + 0.3),
                connectionstyle="arc3,rad=-0.28",
                arrowstyle="-|>",
                mutation_scale=16,
                color=self.blue,
                lw=2.0,
            )
        )
        self.ax.text(
            4.7,
            3.95,
            f"skip path: identity, carries x = {_fmt_vector(x)} unchanged (no parameters)",
            ha="center",
            color=self.blue,
        )
