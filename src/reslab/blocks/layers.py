"""The layers the trainability options put in a block: no BN, tanh, Dirac and Fixup parameters.

Each option of :class:`~reslab.models.options.ModelOptions` that changes a block's layers
(``norm``, ``nonlinearity``, ``init``) picks them here, so the blocks of
:mod:`~reslab.blocks.conv` name one factory per slot and keep their ``forward``:

* :func:`norm_layer`: BN, or nothing (``norm="none"``; the convolution before it then has a
  bias, zero at first as BN's shift is);
* :func:`activation_layer`: ReLU or tanh;
* :class:`DiracConv2d`: DiracNets' ``W = diag(a)·I + diag(b)·Ŵ`` (Zagoruyko & Komodakis 2017,
  arXiv:1706.00388);
* :class:`ScalarBias`: Fixup's scalar biases (Zhang, Dauphin & Ma 2019, arXiv:1901.09321).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# DiracNets' reference code (szagoruyko/diracnets, diracconv.py) starts b at 0.1 and a at 1.
DIRAC_BETA = 0.1


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BN over ``channels``, or the identity where ``norm="none"`` removes it."""
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


def activation_layer(nonlinearity: str, inplace: bool = True) -> nn.Module:
    """The block's activation: ReLU (He et al.), or tanh (Xiao et al. 2018's vanilla CNNs)."""
    return nn.ReLU(inplace=inplace) if nonlinearity == "relu" else nn.Tanh()


def zero_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with its bias, if any, at zero: it stands for a removed BN's shift (β = 0)."""
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class DiracConv2d(nn.Conv2d):
    """A convolution parametrised as ``W = diag(a)·I + diag(b)·Ŵ`` (arXiv:1706.00388, §3).

    ``I`` is the Dirac delta (:func:`torch.nn.init.dirac_`: output channel ``i`` copies input
    channel ``i`` at the centre tap; channels beyond the smaller count get none, and a stride
    subsamples, as option A's shortcut does), ``Ŵ`` the learned kernel normalised to unit L2
    norm over each output filter, as the paper's code does, and ``a``, ``b`` learned per output
    channel, starting at 1 and :data:`DIRAC_BETA`. With ``b = 0`` it is ``a·x``: the identity
    a plain net lacks, folded into its weights.
    """

    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations
        delta: Tensor

    def __init__(
        self, in_planes: int, out_planes: int, stride: int = 1, *, bias: bool = False
    ) -> None:
        super().__init__(in_planes, out_planes, 3, stride=stride, padding=1, bias=bias)
        self.alpha = nn.Parameter(torch.ones(out_planes))
        self.beta = nn.Parameter(torch.full((out_planes,), DIRAC_BETA))
        # Not persistent: it is a constant of the shape, and the state_dict stays a conv's.
        self.register_buffer(
            "delta", nn.init.dirac_(torch.empty_like(self.weight)), persistent=False
        )

    def dirac_weight(self) -> Tensor:
        """The kernel the convolution applies: ``diag(a)·I + diag(b)·Ŵ``."""
        unit = F.normalize(self.weight.flatten(1), dim=1).view_as(self.weight)
        a, b = self.alpha.view(-1, 1, 1, 1), self.beta.view(-1, 1, 1, 1)
        return a * self.delta + b * unit

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.dirac_weight(), self.bias)


class ScalarBias(nn.Module):
    """``x + b`` with one learned scalar ``b``, zero at first: Fixup's bias (arXiv:1901.09321).

    Fixup puts one before each convolution, linear layer and activation, where BN's shift was.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


__all__ = [
    "DIRAC_BETA",
    "DiracConv2d",
    "ScalarBias",
    "activation_layer",
    "norm_layer",
    "zero_bias",
]
