"""Residual blocks and their plain twins.

A residual block computes ``y = shortcut(x) + F(x)``: the layers in the branch learn only the
correction ``F(x) = H(x) - x`` to the mapping ``H`` they are asked for (He et al. 2015,
arXiv:1512.03385, §3.1). Where the branch changes the shape, the shortcut is either a
parameter-free zero-padding subsample (option A) or a projection ``W_s x`` (options B and C,
§3.3). The *plain* twin of a block is the same block with the shortcut removed and nothing else,
so residual and plain networks differ by exactly one line of ``forward``.

File order follows torchvision's ``resnet.py``: helpers, shortcuts, blocks.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from reslab.errors import ModelError

ShortcutOption = Literal["A", "B", "C"]
SHORTCUT_OPTIONS: tuple[str, ...] = ("A", "B", "C")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias (a BN follows, which has its own)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


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


# --- the generic residual module ---------------------------------------------------------------


class Residual(nn.Module):
    """``y = shortcut(x) + branch(x)``: any branch, identity shortcut when none is given.

    With ``plain=True`` there is no shortcut and ``y = branch(x)``.
    """

    def __init__(
        self, branch: nn.Module, shortcut: nn.Module | None = None, *, plain: bool = False
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut: nn.Module | None = None if plain else (shortcut or nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


class ResidualMLP(Residual):
    """A residual block for feature vectors: ``x + W2 relu(W1 norm(x))``.

    Pre-norm, as in transformer MLP blocks, so the identity path stays clean (He et al. 2016).
    A linear projection replaces the identity when ``out_features`` differs from
    ``in_features``; ``zero_init=True`` zeroes ``W2`` so the block starts as its shortcut.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        dropout: float = 0.0,
        plain: bool = False,
        zero_init: bool = False,
    ) -> None:
        out_features = out_features or in_features
        hidden_features = hidden_features or 4 * in_features
        fc2 = nn.Linear(hidden_features, out_features)
        branch = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            fc2,
        )
        shortcut = None if out_features == in_features else nn.Linear(in_features, out_features)
        super().__init__(branch, shortcut, plain=plain)
        if zero_init:
            nn.init.zeros_(fc2.weight)
            nn.init.zeros_(fc2.bias)


# --- convolutional blocks ----------------------------------------------------------------------


class _Block(nn.Module):
    """What every convolutional block shares: the shortcut slot and the zero-init hook.

    The shortcut module is registered as ``downsample``, torchvision's name, so that ImageNet
    checkpoints load key for key; ``self.shortcut`` is the name the code reads. ``None`` makes
    the plain twin.
    """

    expansion = 1
    branch_convs = 2  # convolutions on the branch, the block's share of the net's depth
    downsample: nn.Module | None

    @property
    def shortcut(self) -> nn.Module | None:
        return self.downsample

    def branch(self, x: Tensor) -> Tensor:
        """The residual function F(x), before the addition."""
        raise NotImplementedError

    def zero_init_last(self) -> None:
        """Zero the last scale in the branch: the block then starts as its shortcut."""
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3×3 convolutions, post-activation (He et al. 2015, Fig. 2 left)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None if plain else make_shortcut(shortcut, in_planes, planes, stride)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(_Block):
    """1×1 reduce, 3×3, 1×1 expand ×4, post-activation (He et al. 2015, Fig. 5 right).

    The stride sits on the 3×3 convolution, as in torchvision's "ResNet v1.5".
    """

    expansion = 4
    branch_convs = 3

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if plain else make_shortcut(shortcut, in_planes, out_planes, stride)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class _PreActBlock(_Block):
    """Pre-activation: BN and ReLU come before each convolution, nothing after the addition.

    The shortcut is then a clean identity from block to block (He et al. 2016,
    arXiv:1603.05027, §3-4). A projection shortcut reads the pre-activated input, as the
    branch does (the paper's code shares that first BN-ReLU); identity and option A read ``x``.
    """

    bn1: nn.BatchNorm2d
    relu: nn.ReLU

    def _shortcut_input(self, x: Tensor, pre: Tensor) -> Tensor:
        return pre if isinstance(self.downsample, Projection) else x

    def branch(self, x: Tensor) -> Tensor:
        return self._branch(self.relu(self.bn1(x)))

    def _branch(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self._branch(pre)
        if self.shortcut is not None:
            out = out + self.shortcut(self._shortcut_input(x, pre))
        return out


class PreActBasicBlock(_PreActBlock):
    """BN-ReLU-3×3, BN-ReLU-3×3, then the addition (He et al. 2016, Fig. 1b)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=False)  # `pre` is read again by a projection shortcut
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = (
            None if plain else make_shortcut(shortcut, in_planes, planes, stride, norm=False)
        )

    def _branch(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        return self.conv2(self.relu(self.bn2(out)))

    def zero_init_last(self) -> None:
        # No BN ends a pre-activation branch, so the last convolution is zeroed instead.
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-1×1, BN-ReLU-3×3, BN-ReLU-1×1 ×4, then the addition (He et al. 2016)."""

    expansion = 4
    branch_convs = 3

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.downsample = (
            None if plain else make_shortcut(shortcut, in_planes, out_planes, stride, norm=False)
        )

    def _branch(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


def is_block(module: nn.Module) -> bool:
    """True for the convolutional blocks above (residual or plain)."""
    return isinstance(module, _Block)


__all__ = [
    "BLOCKS",
    "SHORTCUT_OPTIONS",
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "Projection",
    "Residual",
    "ResidualMLP",
    "conv1x1",
    "conv3x3",
    "is_block",
    "make_shortcut",
]
