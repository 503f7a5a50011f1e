"""Fixup's basic block: a residual block that trains without BN (Zhang, Dauphin & Ma 2019,
arXiv:1901.09321). Its initialisation is :func:`reslab.models.inits.fixup_`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reslab.blocks.conv import _Block, conv3x3
from reslab.blocks.layers import activation_layer
from reslab.blocks.shortcuts import ShortcutVariant
from reslab.errors import ModelError


class FixupBasicBlock(_Block):
    """The basic block without BN, as Fixup builds it (Zhang, Dauphin & Ma 2019,
    arXiv:1901.09321, §3 and Fig. 1).

    A scalar bias before each convolution and activation (``bias1a`` … ``bias2b``, the names of
    the paper's code, all 0 at first) and a scalar multiplier ``scale`` (1) on the branch.
    ``init="fixup"`` (:mod:`reslab.models.inits`) zeroes ``conv2`` and rescales ``conv1``, so
    the block starts as its shortcut. Fixup's rule puts a bias before convolutions, linear
    layers and activations; a shortcut is none of those, so it reads ``x`` itself.
    """

    options = ("norm", "nonlinearity", "init")

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "A",
        plain: bool = False,
        variant: ShortcutVariant | None = None,
        norm: str = "none",
        nonlinearity: str = "relu",
        init: str = "fixup",
    ) -> None:
        super().__init__()
        if norm != "none" or init != "fixup":
            raise ModelError(f"a Fixup block has no BN and Fixup's init, not {norm=}, {init=}")
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.relu = activation_layer(nonlinearity)
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = conv3x3(planes, planes)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self._attach_shortcut(
            shortcut, in_planes, planes, stride, plain=plain, variant=variant, norm=False
        )

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(out + self.bias2a) * self.scale + self.bias2b

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.branch(x))
        shortcut = self.downsample  # the shortcut, under torchvision's name
        if shortcut is not None:
            out = self.join(x, shortcut(x), out)  # shortcut(x) + F(x)
        return self.after_addition(out)

    def after_addition(self, out: Tensor) -> Tensor:
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


__all__ = ["FixupBasicBlock"]
