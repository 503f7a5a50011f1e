"""Residual blocks and their plain twins.

A residual block computes ``y = shortcut(x) + F(x)``: the layers in the branch learn only the
correction ``F(x) = H(x) - x`` to the mapping ``H`` they are asked for (He et al. 2015,
arXiv:1512.03385, §3.1). Where the branch changes the shape, the shortcut is either a
parameter-free zero-padding subsample (option A) or a projection ``W_s x`` (options B and C,
§3.3). The *plain* twin of a block is the same block with the shortcut removed and nothing else,
so residual and plain networks differ by exactly one line of ``forward``.

He et al. 2016 (arXiv:1603.05027) vary both halves of that line, and every block takes their
variants as options, the original identity block being the default:

* how the shortcut meets ``F(x)`` (Table 1 / Fig. 2): constant scaling, exclusive and
  shortcut-only gating, a 1×1 convolution, dropout: a :class:`ShortcutVariant`, which builds the
  block's ``join``;
* where the activations sit (Table 2 / Fig. 4): BN after the addition, ReLU before it,
  ReLU-only and full pre-activation: one block class per placement (:func:`block_class`).

The wider families build on the same blocks: ResNeXt's grouped bottleneck is
:class:`Bottleneck` with ``groups`` (Xie et al. 2017, arXiv:1611.05431), and the wide ResNets'
block (Zagoruyko & Komodakis 2016, arXiv:1605.07146) is :class:`WideBasicBlock`, the
pre-activation basic block with dropout between its convolutions.

The rooms: :mod:`~reslab.blocks.shortcuts` (options A/B/C and the joins),
:mod:`~reslab.blocks.conv` (the convolutional blocks) and :mod:`~reslab.blocks.residual` (the
generic :class:`Residual` and :class:`ResidualMLP`); the nets that train without shortcuts or
BN take their layers from :mod:`~reslab.blocks.layers` and :mod:`~reslab.blocks.fixup`.
"""

from reslab.blocks.conv import (
    ACTIVATIONS,
    BLOCKS,
    BasicBlock,
    BNAfterAddBasicBlock,
    BNAfterAddBottleneck,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ReLUBeforeAddBasicBlock,
    ReLUBeforeAddBottleneck,
    ReLUPreActBasicBlock,
    ReLUPreActBottleneck,
    WideBasicBlock,
    block_class,
    bottleneck_width,
    conv3x3,
    is_block,
)

# The base classes every convolutional block (and its pre-activation kind) derives from, for
# reslab.models and the measurements of reslab.measure.
from reslab.blocks.conv import _Block as ConvBlock
from reslab.blocks.conv import _Block as _Block
from reslab.blocks.conv import _PreActBlock as PreActConvBlock
from reslab.blocks.conv import _PreActBlock as _PreActBlock
from reslab.blocks.fixup import FixupBasicBlock
from reslab.blocks.layers import DiracConv2d, ScalarBias, activation_layer, norm_layer
from reslab.blocks.residual import Residual, ResidualMLP
from reslab.blocks.shortcuts import (
    SHORTCUT_MODES,
    SHORTCUT_OPTIONS,
    Add,
    DropoutAdd,
    GatedAdd,
    PadShortcut,
    Projection,
    ScaledAdd,
    ShortcutOption,
    ShortcutVariant,
    SkipInitAdd,
    check_shortcut_option,
    conv1x1,
    make_shortcut,
)

__all__ = [
    "ACTIVATIONS",
    "BLOCKS",
    "SHORTCUT_MODES",
    "SHORTCUT_OPTIONS",
    "Add",
    "BNAfterAddBasicBlock",
    "BNAfterAddBottleneck",
    "BasicBlock",
    "Bottleneck",
    "ConvBlock",
    "DiracConv2d",
    "DropoutAdd",
    "FixupBasicBlock",
    "GatedAdd",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActConvBlock",
    "Projection",
    "ReLUBeforeAddBasicBlock",
    "ReLUBeforeAddBottleneck",
    "ReLUPreActBasicBlock",
    "ReLUPreActBottleneck",
    "Residual",
    "ResidualMLP",
    "ScalarBias",
    "ScaledAdd",
    "ShortcutOption",
    "ShortcutVariant",
    "SkipInitAdd",
    "WideBasicBlock",
    "activation_layer",
    "block_class",
    "bottleneck_width",
    "check_shortcut_option",
    "conv1x1",
    "conv3x3",
    "is_block",
    "make_shortcut",
    "norm_layer",
]
