"""Shortcuts, and how a block's shortcut meets its branch.

He et al. 2015 (arXiv:1512.03385) §3.3: where the branch changes the shape, the shortcut is a
parameter-free zero-padding subsample (option A) or a projection ``W_s x`` (options B, C).
He et al. 2016 (arXiv:1603.05027) §3.1, Table 1 / Fig. 2: the *join* ``y = shortcut(x) + F(x)``
becomes constant scaling, exclusive or shortcut-only gating, or dropout on the shortcut, and
the identity a 1×1 convolution; a :class:`ShortcutVariant` describes one of them and builds the
block's ``join`` module. Their finding: every multiplicative manipulation of the shortcut
(scaling, gating, 1×1 convolutions, dropout) hampers the propagation of information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.errors import ModelError

ShortcutOption = Literal["A", "B", "C"]
SHORTCUT_OPTIONS: tuple[str, ...] = ("A", "B", "C")
# He et al. 2016, Table 1 (Fig. 2), in the paper's order.
SHORTCUT_MODES: tuple[str, ...] = (
    "identity",
    "scale",
    "exclusive_gate",
    "shortcut_gate",
    "conv",
    "dropout",
)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def check_shortcut_option(option: str) -> ShortcutOption:
    """Return ``option`` upper-cased if it is A, B or C, else raise a ModelError."""
    upper = option.upper() if isinstance(option, str) else option
    if upper not in SHORTCUT_OPTIONS:
        raise ModelError(
            f"shortcut option {option!r} is not one of A, B, C: A pads with zeros, "
            "B projects where the shape changes, C projects on every block"
        )
    return upper  # type: ignore[return-value]


# --- shortcuts ---------------------------------------------------------------------------------


class PadShortcut(nn.Module):
    """Option A: identity, subsampled by ``stride`` and zero-padded to ``out_planes`` channels.

    Parameter-free (He et al. 2015, §4.2). A real module rather than a lambda, so models
    pickle, ``deepcopy`` and script. The new channels are split evenly before and after the old
    ones, which is the layout of the popular CIFAR checkpoints this library imports.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ModelError(f"option A cannot shrink channels ({in_planes} -> {out_planes})")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_planes - self.in_planes
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class Projection(nn.Sequential):
    """Options B/C: the projection ``W_s x`` as a strided 1×1 convolution, then BN.

    Registered as ``downsample.0`` / ``downsample.1`` inside blocks: torchvision's layout.
    Pre-activation blocks project without BN, as in He et al. 2016's code, because the next
    block's own BN follows the addition.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, norm: bool = True) -> None:
        layers: list[nn.Module] = [conv1x1(in_planes, out_planes, stride)]
        if norm:
            layers.append(nn.BatchNorm2d(out_planes))
        super().__init__(*layers)


def make_shortcut(
    option: str, in_planes: int, out_planes: int, stride: int, *, norm: bool = True
) -> nn.Module:
    """The shortcut of He et al. 2015 §3.3 for one block: A, B or C."""
    option = check_shortcut_option(option)
    same_shape = in_planes == out_planes and stride == 1
    if option == "C" or (option == "B" and not same_shape):
        return Projection(in_planes, out_planes, stride, norm=norm)
    if same_shape:
        return nn.Identity()
    return PadShortcut(in_planes, out_planes, stride)


# --- how the shortcut meets F(x): He et al. 2016, Table 1 / Fig. 2 -----------------------------
# Each join takes the block's input x, shortcut(x) and F(x); the block calls it where the
# original adds the two. x is there for the gates, which read the block's input.


class Add(nn.Module):
    """``y = shortcut(x) + F(x)``: the identity mapping, and the 1×1-conv shortcut's join."""

    def forward(self, x: Tensor, shortcut: Tensor, branch: Tensor) -> Tensor:
        return shortcut + branch


class ScaledAdd(nn.Module):
    """``y = λ·shortcut(x) + μ·F(x)``: constant scaling (Fig. 2b).

    λ = 0 is a plain net; λ = μ = 0.5 is the paper's "frozen gating". λ < 1 on every block
    shrinks the signal from block ``l`` to block ``L`` by λ^(L−l), forward and backward (§3.1).
    """

    def __init__(self, scale: float, branch_scale: float = 1.0) -> None:
        super().__init__()
        self.scale, self.branch_scale = scale, branch_scale

    def forward(self, x: Tensor, shortcut: Tensor, branch: Tensor) -> Tensor:
        return self.scale * shortcut + self.branch_scale * branch

    def extra_repr(self) -> str:
        return f"scale={self.scale}, branch_scale={self.branch_scale}"


class GatedAdd(nn.Module):
    """``y = (1 − g)·shortcut(x) + g·F(x)``, ``g = σ(W_g x + b_g)``: exclusive gating (Fig. 2c).

    ``exclusive=False`` gates the shortcut only: ``y = (1 − g)·shortcut(x) + F(x)`` (Fig. 2d).
    ``W_g x + b_g`` is a 1×1 convolution of the block's input with the block's stride and output
    channels, so the gate is element-wise (§3.1). ``b_g`` starts at ``bias``: the paper's best
    is −6 for both gates (g ≈ 0.0025: the block starts close to its shortcut); ``W_g`` gets the
    net's He initialisation like every convolution.
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, *, bias: float, exclusive: bool
    ) -> None:
        super().__init__()
        self.exclusive = exclusive
        self.gate = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=True)
        assert self.gate.bias is not None
        nn.init.constant_(self.gate.bias, bias)

    def forward(self, x: Tensor, shortcut: Tensor, branch: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(x))
        return (1 - g) * shortcut + (g * branch if self.exclusive else branch)

    def extra_repr(self) -> str:
        return "exclusive" if self.exclusive else "shortcut only"


class DropoutAdd(nn.Module):
    """``y = dropout(shortcut(x)) + F(x)``: dropout on the shortcut's output (Fig. 2f).

    PyTorch's dropout scales the kept units by 1/(1−p) while training (as Torch7's did), so in
    eval mode this is the identity block; while training each shortcut unit is multiplied by
    0 or 1/(1−p), the random scale the paper finds impedes propagation.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p)

    def forward(self, x: Tensor, shortcut: Tensor, branch: Tensor) -> Tensor:
        return self.dropout(shortcut) + branch


class SkipInitAdd(nn.Module):
    """``y = shortcut(x) + α·F(x)``, α a learned scalar starting at 0: SkipInit (De & Smith
    2020, arXiv:2002.10444) and ReZero (Bachlechner et al. 2020, arXiv:2003.04887).

    At initialisation every block is its shortcut, exactly, whatever F computes; that is what
    BN does to a deep residual net early in training, by shrinking F (De & Smith, §2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, shortcut: Tensor, branch: Tensor) -> Tensor:
        return shortcut + self.alpha * branch


# Which options each mode reads; the others must be left at None.
_MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "scale": ("shortcut_scale", "branch_scale"),
    "exclusive_gate": ("gate_bias",),
    "shortcut_gate": ("gate_bias",),
    "dropout": ("shortcut_dropout",),
}


@dataclass(frozen=True)
class ShortcutVariant:
    """How a block's shortcut meets ``F(x)``: one row of He et al. 2016's Table 1.

    ``shortcut_mode``: ``identity`` (the original), ``scale`` (λ on the shortcut, μ on F),
    ``exclusive_gate``, ``shortcut_gate``, ``conv`` (a 1×1 conv and BN on every shortcut: He
    et al. 2015's option C) or ``dropout``. Each mode reads only its own fields. Where a block
    changes the shape, ``shortcut(x)`` is the net's option A or B (the variant still applies).
    """

    shortcut_mode: str = "identity"
    shortcut_scale: float = 0.5  # λ (scale); the paper's value
    branch_scale: float = 1.0  # μ on F (scale); 0.5 with λ = 0.5 is "frozen gating"
    gate_bias: float = -6.0  # b_g's initial value (gates); the paper's best for both
    shortcut_dropout: float = 0.5  # drop probability on the shortcut (dropout)

    def __post_init__(self) -> None:
        mode = self.shortcut_mode
        if not isinstance(mode, str) or mode not in SHORTCUT_MODES:
            raise ModelError(f"shortcut_mode {mode!r} is not one of {', '.join(SHORTCUT_MODES)}")
        _check_number("shortcut_scale", self.shortcut_scale, "a number ≥ 0", lambda v: v >= 0)
        _check_number("branch_scale", self.branch_scale, "a number > 0", lambda v: v > 0)
        _check_number("gate_bias", self.gate_bias, "a finite number", lambda v: True)
        in_range = "a number in [0, 1)"
        _check_number("shortcut_dropout", self.shortcut_dropout, in_range, lambda v: 0 <= v < 1)

    @classmethod
    def of(cls, shortcut_mode: str | None = None, **options: Any) -> ShortcutVariant:
        """The variant for ``create_model``'s options; an option its mode ignores is an error."""
        mode = "identity" if shortcut_mode is None else shortcut_mode
        given = {k: v for k, v in options.items() if v is not None}
        stray = sorted(set(given) - set(_MODE_OPTIONS.get(mode, ())))
        if stray and isinstance(mode, str) and mode in SHORTCUT_MODES:
            modes = [m for m, names in _MODE_OPTIONS.items() if stray[0] in names]
            raise ModelError(
                f"{stray[0]} is read only by shortcut_mode={' or '.join(map(repr, modes))}, "
                f"not {mode!r}"
            )
        return cls(mode, **given)

    def join(self, in_planes: int, out_planes: int, stride: int) -> nn.Module:
        """The module a block calls as ``join(x, shortcut(x), F(x))``."""
        mode = self.shortcut_mode
        if mode == "scale":
            return ScaledAdd(self.shortcut_scale, self.branch_scale)
        if mode in ("exclusive_gate", "shortcut_gate"):
            exclusive = mode == "exclusive_gate"
            return GatedAdd(in_planes, out_planes, stride, bias=self.gate_bias, exclusive=exclusive)
        if mode == "dropout":
            return DropoutAdd(self.shortcut_dropout)
        return Add()  # identity, and conv: there the 1×1 convolution is the shortcut itself


def _check_number(name: str, value: object, what: str, ok: Any) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and ok(value)):  # type: ignore[arg-type]
        raise ModelError(f"{name} must be {what}, got {value!r}")


__all__ = [
    "SHORTCUT_MODES",
    "SHORTCUT_OPTIONS",
    "Add",
    "DropoutAdd",
    "GatedAdd",
    "PadShortcut",
    "Projection",
    "ScaledAdd",
    "ShortcutOption",
    "ShortcutVariant",
    "SkipInitAdd",
    "check_shortcut_option",
    "conv1x1",
    "make_shortcut",
]
