"""The convolutional blocks of the CIFAR and ImageNet ResNets, and their plain twins.

A block computes ``y = shortcut(x) + F(x)`` (He et al. 2015, arXiv:1512.03385, §3.1); its plain
twin is the same block with the shortcut removed and nothing else, so residual and plain
networks differ by exactly one line of ``forward``. Where the activations sit is He et al.
2016's Table 2 / Fig. 4 (arXiv:1603.05027): one class per placement and block type, each
naming only what it moves.

File order follows torchvision's ``resnet.py``: helpers, then blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from reslab.blocks.drop import DropPath
from reslab.blocks.layers import DiracConv2d, activation_layer, norm_layer, zero_bias
from reslab.blocks.shortcuts import Projection, ShortcutVariant, SkipInitAdd, conv1x1, make_shortcut
from reslab.errors import ModelError

# He et al. 2016, Table 2 (Fig. 4), in the paper's order.
ACTIVATIONS: tuple[str, ...] = (
    "original",
    "bn_after_add",
    "relu_before_add",
    "relu_preact",
    "full_preact",
)


def conv3x3(
    in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, *, bias: bool = False
) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias (a BN follows, which has its own).

    ``groups`` splits it into that many parallel convolutions: ResNeXt's cardinality.
    ``bias=True`` where no BN follows (``norm="none"``): the bias is then BN's shift.
    """
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=bias)


def bottleneck_width(planes: int, groups: int = 1, base_width: int = 64) -> int:
    """Channels inside a bottleneck: ``int(planes * base_width / 64) * groups``.

    Torchvision's formula, which makes ResNeXt (Xie et al. 2017, arXiv:1611.05431) a
    bottleneck of ``groups`` paths (the cardinality C), each ``base_width`` wide in the first
    stage (the d of "32×4d") and twice as wide in each later stage; ``groups=1,
    base_width=64`` is the ResNet bottleneck, ``planes`` wide. Each path keeps at least one
    channel, where a narrow ``width`` multiplier would round it to none.
    """
    return max(1, int(planes * (base_width / 64.0))) * groups


# --- convolutional blocks ----------------------------------------------------------------------


class _Block(nn.Module):
    """What every convolutional block shares: the shortcut slot, its join, the zero-init hook.

    The shortcut module is registered as ``downsample``, torchvision's name, so that ImageNet
    checkpoints load key for key; ``self.shortcut`` is the name the code reads. ``None`` makes
    the plain twin. ``join(x, shortcut(x), F(x))`` is ``shortcut(x) + F(x)`` unless a
    :class:`~reslab.blocks.shortcuts.ShortcutVariant` says otherwise.
    """

    expansion = 1
    branch_convs = 2  # convolutions on the branch, the block's share of the net's depth
    activation = "original"  # where the activations sit: one of ACTIVATIONS (Fig. 4)
    # Keyword options of the constructor beyond the shared ones, as ResNetLayout fields.
    options: ClassVar[tuple[str, ...]] = ()
    # TorchScript compiles properties, and cannot call a module a property returns: forward
    # reads the shortcut as `downsample`, its registered name.
    __jit_unused_properties__: ClassVar[list[str]] = ["shortcut"]

    @property
    def shortcut(self) -> nn.Module | None:
        return self.downsample

    def _attach_shortcut(
        self,
        option: str,
        in_planes: int,
        out_planes: int,
        stride: int,
        *,
        plain: bool,
        variant: ShortcutVariant | None,
        norm: bool = True,
        skipinit: bool = False,
    ) -> None:
        """Register the shortcut as ``downsample`` (None for the plain twin) and the ``join``.

        ``norm=False``: a projection has no BN, nor a bias (the branch's last layer has one);
        ``skipinit``: the join is ``shortcut(x) + α·F(x)``, α = 0 at first. ``drop_path`` is
        stochastic depth on the branch (:mod:`reslab.blocks.drop`), the identity until the
        net sets a rate.
        """
        variant = variant or ShortcutVariant()
        mode = variant.shortcut_mode
        if plain and mode != "identity":
            raise ModelError(f"shortcut_mode={mode!r} needs a shortcut, and a plain block has none")
        if mode == "conv":
            option = "C"  # Fig. 2e: a 1×1 convolution on every shortcut is option C
        # Not annotated: TorchScript reads annotations, on the class and on a None in
        # __init__, and cannot resolve `nn.Module | None`; type checkers infer it.
        self.downsample = (
            None if plain else make_shortcut(option, in_planes, out_planes, stride, norm=norm)
        )
        self.join = SkipInitAdd() if skipinit else variant.join(in_planes, out_planes, stride)
        self.drop_path: nn.Module = nn.Identity()
        # A pre-activation block's projection reads the pre-activated input (_PreActBlock).
        self.shortcut_reads_pre = isinstance(self.downsample, Projection)

    def set_drop_path(self, p: float) -> None:
        """Drop the branch with probability ``p`` while training (stochastic depth)."""
        self.drop_path = DropPath(p) if p > 0 else nn.Identity()

    def branch(self, x: Tensor) -> Tensor:
        """The residual function F(x), before the addition."""
        raise NotImplementedError

    def original_branch(self, x: Tensor) -> Tensor:
        """The original block's F (Fig. 4a), for the placements that wrap it."""
        raise NotImplementedError

    def after_addition(self, out: Tensor) -> Tensor:
        """What follows the addition: the original block's ReLU."""
        raise NotImplementedError

    def zero_init_last(self) -> None:
        """Zero the last scale in the branch: the block then starts as its shortcut."""
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3×3 convolutions, post-activation (He et al. 2015, Fig. 2 left; 2016, Fig. 4a).

    The trainability options (:mod:`reslab.blocks.layers`) choose its layers: ``norm="none"``
    drops both BNs (the convolutions get biases), ``nonlinearity="tanh"`` puts tanh where the
    ReLUs are (the module keeps torchvision's name, ``relu``), ``init="dirac"`` makes both
    convolutions :class:`~reslab.blocks.layers.DiracConv2d` and ``init="skipinit"`` joins the
    branch as ``shortcut(x) + α·F(x)``. The other inits only set weights (``reslab.models``).
    """

    options = ("norm", "nonlinearity", "init")

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
        variant: ShortcutVariant | None = None,
        norm: str = "batch",
        nonlinearity: str = "relu",
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        conv = DiracConv2d if init == "dirac" else conv3x3
        bias = norm == "none"
        self.conv1 = zero_bias(conv(in_planes, planes, stride, bias=bias))
        self.bn1 = norm_layer(norm, planes)
        self.relu = activation_layer(nonlinearity)
        self.conv2 = zero_bias(conv(planes, planes, bias=bias))
        self.bn2 = norm_layer(norm, planes)
        self._attach_shortcut(
            shortcut,
            in_planes,
            planes,
            stride,
            plain=plain,
            variant=variant,
            norm=norm == "batch",
            skipinit=init == "skipinit",
        )

    def branch(self, x: Tensor) -> Tensor:
        return self.original_branch(x)

    def original_branch(self, x: Tensor) -> Tensor:
        """F of Fig. 4a, which placements (c) and (d) wrap (TorchScript has no ``super()``)."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.branch(x))
        shortcut = self.downsample  # the shortcut, under torchvision's name
        if shortcut is not None:
            out = self.join(x, shortcut(x), out)  # shortcut(x) + F(x)
        return self.after_addition(out)

    def after_addition(self, out: Tensor) -> Tensor:
        return self.relu(out)

    def zero_init_last(self) -> None:
        assert isinstance(self.bn2, nn.BatchNorm2d)  # the layout refuses it with norm="none"
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(_Block):
    """1×1 reduce, 3×3, 1×1 expand ×4, post-activation (He et al. 2015, Fig. 5 right).

    The stride sits on the 3×3 convolution, as in torchvision's "ResNet v1.5". ``groups`` and
    ``base_width`` make it ResNeXt's block (Xie et al. 2017, Fig. 3c): the 3×3 convolution
    grouped into ``groups`` paths, :func:`bottleneck_width` channels in all.
    """

    expansion = 4
    branch_convs = 3
    options = ("groups", "base_width")

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
        variant: ShortcutVariant | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        width = bottleneck_width(planes, groups, base_width)
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self._attach_shortcut(shortcut, in_planes, out_planes, stride, plain=plain, variant=variant)

    def branch(self, x: Tensor) -> Tensor:
        return self.original_branch(x)

    def original_branch(self, x: Tensor) -> Tensor:
        """F of Fig. 4a, which placements (c) and (d) wrap (TorchScript has no ``super()``)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.branch(x))
        shortcut = self.downsample  # the shortcut, under torchvision's name
        if shortcut is not None:
            out = self.join(x, shortcut(x), out)  # shortcut(x) + F(x)
        return self.after_addition(out)

    def after_addition(self, out: Tensor) -> Tensor:
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


# --- where the activations sit: He et al. 2016, Table 2 / Fig. 4 (b)-(d) -----------------------
# Each placement overrides only what it moves: the branch F and what follows the addition. The
# modules (and their state_dict keys) are the original block's. (e) is _PreActBlock below.


class BNAfterAddBasicBlock(BasicBlock):
    """(b) BN after addition: conv-BN-ReLU-conv, add, then BN-ReLU (Fig. 4b).

    ``bn2`` moves from the end of F to after the addition, where it normalises the shortcut's
    signal too: the path from block to block is no longer an identity.
    """

    activation = "bn_after_add"

    def branch(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))

    def after_addition(self, out: Tensor) -> Tensor:
        return self.relu(self.bn2(out))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)  # no BN ends F any more


class BNAfterAddBottleneck(Bottleneck):
    """(b) for bottlenecks: ``bn3`` moves after the addition."""

    activation = "bn_after_add"

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.conv3(out)

    def after_addition(self, out: Tensor) -> Tensor:
        return self.relu(self.bn3(out))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


class _ReLUBeforeAdd(_Block):
    """(c) ReLU before addition: F ends on the ReLU, nothing follows the addition (Fig. 4c).

    F(x) ≥ 0 then, so the signal can only grow from block to block.
    """

    activation = "relu_before_add"

    def branch(self, x: Tensor) -> Tensor:
        return F.relu(self.original_branch(x))

    def after_addition(self, out: Tensor) -> Tensor:
        return out


class _ReLUPreAct(_Block):
    """(d) ReLU-only pre-activation: ReLU, then the original F; nothing after the addition.

    The shortcut reads ``x`` itself, so that first ReLU is not in place. The net adds a ReLU
    after its last block, as full pre-activation adds a final BN-ReLU (§4.1).
    """

    activation = "relu_preact"

    def branch(self, x: Tensor) -> Tensor:
        return self.original_branch(F.relu(x))

    def after_addition(self, out: Tensor) -> Tensor:
        return out


class ReLUBeforeAddBasicBlock(_ReLUBeforeAdd, BasicBlock):
    """(c) with two 3×3 convolutions: conv-BN-ReLU-conv-BN-ReLU, then the addition."""


class ReLUBeforeAddBottleneck(_ReLUBeforeAdd, Bottleneck):
    """(c) with a bottleneck: its F, then a ReLU, then the addition."""


class ReLUPreActBasicBlock(_ReLUPreAct, BasicBlock):
    """(d) with two 3×3 convolutions: ReLU-conv-BN-ReLU-conv-BN, then the addition."""


class ReLUPreActBottleneck(_ReLUPreAct, Bottleneck):
    """(d) with a bottleneck: a ReLU, then its F, then the addition."""


# --- (e) full pre-activation -------------------------------------------------------------------


class _PreActBlock(_Block):
    """Pre-activation: BN and ReLU come before each convolution, nothing after the addition.

    The shortcut is then a clean identity from block to block (He et al. 2016,
    arXiv:1603.05027, §3-4, Fig. 4e). A projection shortcut reads the pre-activated input, as
    the branch does (the paper's code shares that first BN-ReLU); identity and option A read
    ``x``, and so does a gate.
    """

    activation = "full_preact"
    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations
        bn1: nn.BatchNorm2d
        relu: nn.ReLU

    def _shortcut_input(self, x: Tensor, pre: Tensor) -> Tensor:
        return pre if self.shortcut_reads_pre else x

    def branch(self, x: Tensor) -> Tensor:
        return self._branch(self.relu(self.bn1(x)))

    def _branch(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.drop_path(self._branch(pre))
        shortcut = self.downsample  # the shortcut, under torchvision's name
        if shortcut is not None:
            out = self.join(x, shortcut(self._shortcut_input(x, pre)), out)
        return out

    def after_addition(self, out: Tensor) -> Tensor:
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
        variant: ShortcutVariant | None = None,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=False)  # `pre` is read again by a projection shortcut
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self._attach_shortcut(
            shortcut, in_planes, planes, stride, plain=plain, variant=variant, norm=False
        )

    def _branch(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        return self.conv2(self.relu(self.bn2(out)))

    def zero_init_last(self) -> None:
        # No BN ends a pre-activation branch, so the last convolution is zeroed instead.
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-1×1, BN-ReLU-3×3, BN-ReLU-1×1 ×4, then the addition (He et al. 2016).

    ``groups`` and ``base_width`` as in :class:`Bottleneck`.
    """

    expansion = 4
    branch_convs = 3
    options = ("groups", "base_width")

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
        variant: ShortcutVariant | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        width = bottleneck_width(planes, groups, base_width)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv1x1(in_planes, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_planes)
        self._attach_shortcut(
            shortcut, in_planes, out_planes, stride, plain=plain, variant=variant, norm=False
        )

    def _branch(self, pre: Tensor) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out)))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


class WideBasicBlock(PreActBasicBlock):
    """The wide basic block of Zagoruyko & Komodakis 2016 (arXiv:1605.07146, Fig. 1d).

    BN-ReLU-3×3, BN-ReLU, dropout, 3×3, then the addition: the pre-activation basic block with
    dropout between its convolutions (§2.3, where it regularises a wide block better than on
    the shortcut). ``drop_rate=0`` computes exactly :class:`PreActBasicBlock`. The widening
    factor k is the net's, not the block's: it only sets ``planes``.
    """

    options = ("drop_rate",)

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        plain: bool = False,
        variant: ShortcutVariant | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(in_planes, planes, stride, shortcut=shortcut, plain=plain, variant=variant)
        self.dropout = nn.Dropout(drop_rate)

    def _branch(self, pre: Tensor) -> Tensor:
        out = self.relu(self.bn2(self.conv1(pre)))
        return self.conv2(self.dropout(out))


# "basic" / "bottleneck" with the placement's prefix: "" (a), "bn_after_add_" (b), ...,
# "preact_" (e), as block_class() spells it.
BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "bn_after_add_basic": BNAfterAddBasicBlock,
    "bn_after_add_bottleneck": BNAfterAddBottleneck,
    "relu_before_add_basic": ReLUBeforeAddBasicBlock,
    "relu_before_add_bottleneck": ReLUBeforeAddBottleneck,
    "relu_preact_basic": ReLUPreActBasicBlock,
    "relu_preact_bottleneck": ReLUPreActBottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


def block_class(block: str, activation: str = "original") -> type[_Block]:
    """The block class of ``block`` ("basic" or "bottleneck") with ``activation``'s placement."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ModelError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    prefix = {"original": "", "full_preact": "preact_"}.get(activation, activation + "_")
    return BLOCKS[prefix + block]


def is_block(module: nn.Module) -> bool:
    """True for the convolutional blocks above (residual or plain)."""
    return isinstance(module, _Block)


__all__ = [
    "ACTIVATIONS",
    "BLOCKS",
    "BNAfterAddBasicBlock",
    "BNAfterAddBottleneck",
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ReLUBeforeAddBasicBlock",
    "ReLUBeforeAddBottleneck",
    "ReLUPreActBasicBlock",
    "ReLUPreActBottleneck",
    "WideBasicBlock",
    "block_class",
    "bottleneck_width",
    "conv3x3",
    "is_block",
]
