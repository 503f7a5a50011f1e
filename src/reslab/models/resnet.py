"""The ResNets of He et al. 2015/2016 and their plain twins: one network class, two factories.

One :class:`ResNet` class covers both families; they differ only in the stem and the widths:

* CIFAR (arXiv:1512.03385 §4.2): 3×3 stem with 16 channels, three stages of 16/32/64 with
  ``n`` blocks each, depth ``6n+2`` for basic blocks (``9n+2`` for bottlenecks), option-A
  shortcuts by default; pre-activation nets (arXiv:1603.05027) default to option B.
* ImageNet (Table 1): 7×7 stride-2 stem with max-pool, four stages of 64/128/256/512; the
  ``state_dict`` matches torchvision's key for key, so its weights load with ``strict=True``.

A factory decides a :class:`ResNetLayout` (block, stage sizes, widths, stem, options: everything
that fixes the shapes) and :class:`ResNet` builds the modules from it. The layout alone is enough
to count parameters and MACs (:mod:`reslab.models.counting`), which is how ``reslab models``
lists ResNet-1202 without building it. The registry (:mod:`reslab.models.registry`) names them.
The wide ResNets and ResNeXt are layouts of the same class (:mod:`reslab.models.wide`).

Every net gives its stage outputs in timm's convention: :attr:`ResNet.feature_info` and
:meth:`ResNet.forward_intermediates` (:mod:`reslab.models.features`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from reslab.blocks import (
    BLOCKS,
    BasicBlock,
    FixupBasicBlock,
    ScalarBias,
    ShortcutVariant,
    _Block,
    _PreActBlock,
    activation_layer,
    block_class,
    check_shortcut_option,
    is_block,
    norm_layer,
)
from reslab.blocks.drop import linear_decay
from reslab.blocks.layers import zero_bias
from reslab.errors import ModelError
from reslab.models.features import feature_take_indices
from reslab.models.inits import check_trainability, init_variant
from reslab.models.options import FIELDS as OPTION_FIELDS
from reslab.models.options import ModelOptions
from reslab.models.timm_api import TimmApi, make_classifier, pretrained_cfg

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
PREACT_CIFAR_DEPTHS = (110, 164, 1001)
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


# --- the layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetLayout:
    """Everything that fixes a ResNet's layers and shapes, decided before any tensor exists."""

    block: type[_Block]
    layers: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # planes per stage; the stem has the first stage's width
    stem: str = "cifar"  # cifar: 3×3 conv; imagenet: 7×7 stride-2 conv and 3×3 max-pool
    num_classes: int = 10
    in_channels: int = 3
    shortcut: str = "A"  # upper-cased and checked on creation
    plain: bool = False
    zero_init_residual: bool = False
    # How shortcuts meet F (2016, Table 1); frozen, so one default instance is safe to share.
    variant: ShortcutVariant = ShortcutVariant()  # noqa: RUF009
    stem_width: int | None = None  # None: the first stage's width; a wide ResNet's stem is 16
    groups: int = 1  # bottlenecks: ResNeXt's cardinality C (Xie et al. 2017)
    base_width: int = 64  # bottlenecks: each group's width in the first stage, ResNeXt's d
    # A wide block's dropout between its convolutions (WRN, §2.3); every other net's before
    # the classifier (timm's drop_rate).
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, the last block's (reslab.blocks.drop)
    # The trainability options (reslab.models.inits): CIFAR basic blocks only.
    norm: str = "batch"  # batch, or none: no BN anywhere
    init: str = "kaiming"  # kaiming, dirac, looks_linear, delta_orthogonal, skipinit, fixup
    nonlinearity: str = "relu"  # relu or tanh

    def __post_init__(self) -> None:
        _check_positive_int("num_classes", self.num_classes, headless=True)
        if len(self.layers) not in (3, 4):  # ResNet.forward_features names its stages
            raise ModelError(f"a ResNet has 3 or 4 stages, got {len(self.layers)}")
        _check_positive_int("in_channels", self.in_channels)
        if self.zero_init_residual and self.plain:
            raise ModelError(
                "zero_init_residual=True with plain=True would zero every block's output: "
                "a plain net has no shortcut to pass its input on; drop one of the two"
            )
        # A frozen dataclass sets its one normalised field through object.__setattr__.
        object.__setattr__(self, "shortcut", check_shortcut_option(self.shortcut))
        if self.stem not in ("cifar", "imagenet"):
            raise ModelError(f"stem {self.stem!r} is not one of 'cifar', 'imagenet'")
        mode = self.variant.shortcut_mode
        if self.plain and mode != "identity":
            raise ModelError(
                f"shortcut_mode={mode!r} changes the shortcut, and a plain net has none: "
                "drop plain=True or the shortcut_mode"
            )
        if mode == "conv" and self.shortcut != "C":
            raise ModelError(f"shortcut_mode='conv' is option C, got shortcut {self.shortcut!r}")
        self._check_block_options()
        check_trainability(self)

    def _check_block_options(self) -> None:
        """The family options: valid values, and only on a block that takes them."""
        if self.stem_width is not None:
            _check_positive_int("stem_width", self.stem_width)
        _check_positive_int("groups", self.groups)
        _check_positive_int("base_width", self.base_width)
        for option in ("drop_rate", "drop_path_rate"):
            rate = getattr(self, option)
            number = isinstance(rate, int | float) and not isinstance(rate, bool)
            if not (number and math.isfinite(rate) and 0 <= rate < 1):
                raise ModelError(f"{option} must be a number in [0, 1), got {rate!r}")
        if self.drop_path_rate and self.plain:
            raise ModelError(
                "drop_path_rate drops residual branches and keeps the shortcut (stochastic "
                "depth, arXiv:1603.09382); a plain net has none, so a dropped block would zero "
                "the signal: drop plain=True or drop_path_rate"
            )
        defaults = {
            "groups": 1,
            "base_width": 64,
            "norm": "batch",
            "init": "kaiming",
            "nonlinearity": "relu",
        }
        for option, default in defaults.items():
            if getattr(self, option) != default and option not in self.block.options:
                raise ModelError(
                    f"{option}={getattr(self, option)!r} needs a block that has it: "
                    f"{self.block.__name__} takes {', '.join(self.block.options) or 'none'}"
                )

    @property
    def head_drop_rate(self) -> float:
        """The dropout before the classifier: ``drop_rate``, unless the block takes it."""
        return 0.0 if "drop_rate" in self.block.options else self.drop_rate

    @property
    def stem_planes(self) -> int:
        """Channels of the stem's convolution."""
        return self.widths[0] if self.stem_width is None else self.stem_width

    def block_options(self) -> dict[str, Any]:
        """The keyword options the block's constructor takes beyond the shared ones."""
        return {name: getattr(self, name) for name in self.block.options}

    @property
    def preact(self) -> bool:
        return issubclass(self.block, _PreActBlock)

    @property
    def activation(self) -> str:
        """Where the activations sit (He et al. 2016, Fig. 4): ``original`` … ``full_preact``."""
        return self.block.activation

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The native ``(C, H, W)``: 32×32 for CIFAR nets, 224×224 for ImageNet nets."""
        side = 32 if self.stem == "cifar" else 224
        return (self.in_channels, side, side)

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path, as :attr:`ResNet.depth` counts them."""
        return 2 + self.block.branch_convs * sum(self.layers)


# --- the network -------------------------------------------------------------------------------


class ResNet(TimmApi):
    """Stem, stages of residual (or plain) blocks, global average pool, fully connected.

    Attribute names follow torchvision (``conv1, bn1, layer1..4, fc``). Pre-activation nets
    have no BN after the stem and a final BN-ReLU (``bn_final``) after the last block, since
    their blocks end on a convolution (He et al. 2016); ReLU-only pre-activation nets end on a
    ReLU there for the same reason. ``variant`` changes how every block's shortcut meets its
    branch (He et al. 2016, Table 1). ``stem_width``, ``groups``, ``base_width`` and
    ``drop_rate`` are the wide families' (:class:`ResNetLayout`).

    ``feature_info`` lists, as timm does, each feature map :meth:`forward_intermediates` can
    return: the stem's output, then each stage's (``num_chs``, ``reduction``, ``module``).
    timm's model API (``forward_head``, ``reset_classifier``, ``set_grad_checkpointing``,
    ``pretrained_cfg``, ...) is :class:`~reslab.models.timm_api.TimmApi`'s.
    """

    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations
        layer1: nn.Sequential
        layer2: nn.Sequential
        layer3: nn.Sequential
        layer4: nn.Sequential

    def __init__(
        self, block: type[_Block], layers: Sequence[int], widths: Sequence[int], **options: Any
    ) -> None:
        """``options``: :class:`ResNetLayout`'s fields after ``widths`` (``stem``, ``num_classes``,
        ``shortcut``, ``variant``, ...), with its defaults."""
        super().__init__()
        layout = ResNetLayout(block, tuple(layers), tuple(widths), **options)
        self.shortcut_option = shortcut = layout.shortcut
        self.plain = plain = layout.plain
        self.variant = layout.variant
        self.preact = layout.preact
        self.activation = layout.activation
        self.input_size = layout.input_size
        self.block_options = layout.block_options()

        stem_width, in_channels = layout.stem_planes, layout.in_channels
        fixup = layout.init == "fixup"
        # No BN after the stem: its conv gets a bias, or, in Fixup, the scalar bias after it.
        bias = layout.norm == "none" and not fixup
        if layout.stem == "cifar":
            self.conv1 = zero_bias(nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=bias))
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1: nn.Module = nn.Identity()
        if fixup:
            self.bn1 = ScalarBias()  # Fixup's bias before the activation, where BN was
        elif not self.preact:
            self.bn1 = norm_layer(layout.norm, stem_width)
        self.relu = nn.Identity() if self.preact else activation_layer(layout.nonlinearity)

        self.in_planes = stem_width
        # A list built first: TorchScript warns on an annotated empty list set in __init__.
        self.stage_names = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = self._make_stage(block, width, n_blocks, stride, shortcut, plain)
            setattr(self, self.stage_names[i], stage)
        self.feature_info = _feature_info(layout)

        self.num_features = out_planes = self.in_planes
        self.bn_final: nn.Module = nn.Identity()
        if self.preact:
            self.bn_final = nn.Sequential(nn.BatchNorm2d(out_planes), nn.ReLU(inplace=True))
        elif self.activation == "relu_preact":
            self.bn_final = nn.ReLU(inplace=True)  # its last addition, like (e)'s, is activated
        elif fixup:
            # Fixup's bias before the classifier, here before the pool: a mean keeps a constant.
            self.bn_final = ScalarBias()
        self.num_classes, self.drop_rate = layout.num_classes, layout.head_drop_rate
        self.fc = make_classifier(out_planes, layout.num_classes)
        self.grad_checkpointing = False
        self.pretrained_cfg = pretrained_cfg(layout)
        self._init_weights(layout)
        blocks = self.blocks()
        for b, p in zip(blocks, linear_decay(layout.drop_path_rate, len(blocks)), strict=True):
            b.set_drop_path(p)

    def _init_weights(self, layout: ResNetLayout) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation (arXiv:1502.01852), as the paper and torchvision use.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=layout.nonlinearity)  # type: ignore[arg-type]
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if layout.zero_init_residual:
            # Each block starts as its shortcut: arXiv:1706.02677 §5.1.
            for m in self.blocks():
                m.zero_init_last()
        init_variant(self, layout)

    def _make_stage(
        self,
        block: type[_Block],
        planes: int,
        n_blocks: int,
        stride: int,
        shortcut: str,
        plain: bool,
    ) -> nn.Sequential:
        stage = []
        for i in range(n_blocks):
            stage.append(
                block(
                    self.in_planes,
                    planes,
                    stride if i == 0 else 1,
                    shortcut=shortcut,
                    plain=plain,
                    variant=self.variant,
                    **self.block_options,
                )
            )
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    @classmethod
    def from_layout(cls, layout: ResNetLayout) -> ResNet:
        """Build the modules a layout describes."""
        return cls(**{f.name: getattr(layout, f.name) for f in fields(layout)})

    def blocks(self) -> list[_Block]:
        """Every residual (or plain) block, input to output."""
        return [m for m in self.modules() if is_block(m)]  # type: ignore[misc]

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before the pool: stem, stages, ``bn_final``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            stages = [getattr(self, name) for name in self.stage_names]
            x = self._checkpointed(stages, x)
        else:  # by name, for TorchScript: CIFAR nets have three stages, ImageNet nets four
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
            if hasattr(self, "layer4"):
                x = self.layer4(x)
        return self.bn_final(x)

    def features(self, x: Tensor) -> Tensor:
        """:meth:`forward_features`, under reslab's older name."""
        return self.forward_features(x)

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path: the stem, every conv of every branch, and fc."""
        blocks = self.blocks()
        return 2 + (blocks[0].branch_convs if blocks else 2) * len(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """``(features(x), [the chosen feature maps])``, as timm's models return them.

        ``indices`` count :attr:`feature_info`: 0 is the stem's output, ``i`` the ``i``-th
        stage's; ``None`` takes all, an int ``n`` the last ``n``, a sequence those named
        (negative ones from the end). ``norm=True`` gives the last stage's map after what the
        net applies to it before pooling (``bn_final``: a pre-activation net's BN-ReLU, the
        ReLU of ReLU-only pre-activation, nothing in the others). ``stop_early`` runs only
        as far as the deepest chosen map, and the first item is then that map.
        ``intermediates_only`` returns the list alone.
        """
        if output_fmt != "NCHW":
            raise ModelError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, deepest = feature_take_indices(len(self.feature_info), indices)
        maps: list[Tensor] = []
        x = self.relu(self.bn1(self.conv1(x)))
        if 0 in take:
            maps.append(x)
        x = self.maxpool(x)
        names = self.stage_names[:deepest] if stop_early else self.stage_names
        for i, name in enumerate(names, 1):
            x = getattr(self, name)(x)
            if i in take:
                maps.append(x)
        if len(names) < len(self.stage_names):
            return maps if intermediates_only else (x, maps)
        last_taken = len(self.stage_names) in take
        if norm and last_taken:
            x = maps[-1] = self.bn_final(x)
        elif not intermediates_only:
            # A ReLU-only final activation works in place; keep the stage's own map intact.
            inplace = isinstance(self.bn_final, nn.ReLU) and self.bn_final.inplace
            x = self.bn_final(x.clone() if last_taken and inplace else x)
        return maps if intermediates_only else (x, maps)


def _feature_info(layout: ResNetLayout) -> list[dict[str, Any]]:
    """timm's ``feature_info``: the stem's output (before the max-pool), then every stage's.

    ``reduction`` is the input's side over the map's: the ImageNet stem halves it, its
    max-pool again, every stage after the first again.
    """
    reduction = 1 if layout.stem == "cifar" else 2
    info = [{"num_chs": layout.stem_planes, "reduction": reduction, "module": "relu"}]
    reduction *= 1 if layout.stem == "cifar" else 2
    for i, width in enumerate(layout.widths):
        reduction *= 1 if i == 0 else 2
        channels = width * layout.block.expansion
        info.append({"num_chs": channels, "reduction": reduction, "module": f"layer{i + 1}"})
    return info


def _check_positive_int(name: str, value: object, headless: bool = False) -> None:
    """``headless``: 0 is allowed too, timm's ``num_classes=0`` (no classifier)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if headless else 1):
        what = "an integer ≥ 0 (0: no classifier)" if headless else "a positive integer"
        raise ModelError(f"{name} must be {what}, got {value!r}")


def _scaled(widths: Sequence[int], width: float | None) -> tuple[int, ...]:
    """``widths`` times the ``width`` option (checked by :class:`ModelOptions`; None is 1)."""
    return tuple(max(1, round(w * (1.0 if width is None else width))) for w in widths)


# The options that are layout fields as they are; block is a name there and a class here.
_LAYOUT_OPTIONS = {f.name for f in fields(ResNetLayout)} & set(OPTION_FIELDS) - {"block"}


def _layout(
    options: ModelOptions,
    block: type[_Block],
    layers: Sequence[int],
    widths: Sequence[int],
    **defaults: Any,
) -> ResNetLayout:
    """A factory's layout: ``widths`` scaled by ``width``, the options given over ``defaults``."""
    given = {k: v for k, v in options.given().items() if k in _LAYOUT_OPTIONS}
    return ResNetLayout(block, tuple(layers), _scaled(widths, options.width), **defaults | given)


# --- factories ----------------------------------------------------------------------------------


def cifar_blocks_per_stage(depth: int, block: str = "basic") -> int:
    """``n`` of a CIFAR net of ``depth``: ``6n+2`` with basic blocks, ``9n+2`` with bottlenecks.

    Checks the depth without building anything, so a study can validate ResNet-1202 for free.
    """
    if block not in ("basic", "bottleneck"):
        raise ModelError(f"block {block!r} is not one of 'basic', 'bottleneck'")
    per_block, examples = (6, CIFAR_DEPTHS[:5]) if block == "basic" else (9, (164, 1001))
    if not isinstance(depth, int) or depth < per_block + 2 or (depth - 2) % per_block:
        raise ModelError(
            f"depth {depth} is not {per_block}n+2: try {', '.join(map(str, examples))}"
        )
    return (depth - 2) // per_block


def cifar_layout(depth: int = 20, **options: Any) -> ResNetLayout:
    """The CIFAR ResNet of He et al. 2015 §4.2 (or its pre-activation form, 2016) of any depth.

    ``options`` are :class:`~reslab.models.options.ModelOptions`, all of them. Basic blocks
    need ``depth = 6n + 2``, bottlenecks ``depth = 9n + 2``. The defaults follow the paper of
    each form, so ``preact=True`` alone gives He et al. 2016's net: option-B shortcuts (their
    Table 3 nets project where shapes change) and, at depth 164 and deeper where ``9n+2`` fits,
    bottleneck blocks (their ResNet-164 and ResNet-1001). Otherwise basic blocks with option A
    (He et al. 2015 §4.2). ``activation`` ``"full_preact"`` is ``preact=True``, defaults and
    all, and ``shortcut_mode`` ``"conv"`` is ``shortcut="C"``.
    """
    o = ModelOptions.of(options, "cifar_layout")
    activation = _activation(o.activation, o.preact)
    preact = activation == "full_preact"
    variant = ShortcutVariant.of(**{f.name: getattr(o, f.name) for f in fields(ShortcutVariant)})
    shortcut, block = o.shortcut, o.block
    if variant.shortcut_mode == "conv":
        if shortcut is not None and shortcut != "C":
            raise ModelError(
                f"shortcut_mode='conv' puts a 1×1 conv on every shortcut, which is option C: "
                f"drop shortcut={shortcut!r}"
            )
        shortcut = "C"
    if block is None:
        # He et al. 2016 build their deep CIFAR nets (164 and 1001 layers) from bottlenecks.
        deep = isinstance(depth, int) and depth >= 164 and (depth - 2) % 9 == 0
        block = "bottleneck" if preact and deep else "basic"
    n = cifar_blocks_per_stage(depth, block)
    block_type = block_class(block, activation)
    if o.init == "fixup" and block_type is BasicBlock:
        block_type = FixupBasicBlock  # Fixup's own block: scalar biases, a multiplier, no BN
    return _layout(
        o,
        block_type,
        (n, n, n),
        (16, 32, 64),
        shortcut=("B" if preact else "A") if shortcut is None else shortcut,
        variant=variant,
    )


def _activation(activation: str | None, preact: bool | None) -> str:
    """``activation`` checked against ``preact`` (its older spelling of ``"full_preact"``)."""
    if activation is None:
        return "full_preact" if preact else "original"
    if preact is not None and preact != (activation == "full_preact"):
        raise ModelError(
            f"activation={activation!r} contradicts preact={preact} (a preact_ name sets it): "
            "preact=True is activation='full_preact'; give one of the two"
        )
    block_class("basic", activation)  # a clear error for an unknown placement
    return activation


def imagenet_layout(depth: int = 50, **options: Any) -> ResNetLayout:
    """The ImageNet ResNet of He et al. 2015 Table 1; depth 18, 34, 50, 101 or 152.

    ``options``: :class:`~reslab.models.options.ModelOptions`, the CIFAR ablations excepted.
    """
    o = ModelOptions.of(options, "imagenet_layout")
    if depth not in IMAGENET_DEPTHS:
        raise ModelError(
            f"ImageNet ResNet depth {depth} is not one of {', '.join(map(str, IMAGENET_DEPTHS))}"
        )
    block, layers = IMAGENET_DEPTHS[depth]
    return _layout(
        o,
        BLOCKS[("preact_" if o.preact else "") + block],
        layers,
        (64, 128, 256, 512),
        stem="imagenet",
        num_classes=1000,
        shortcut="B",
    )


def cifar_resnet(depth: int = 20, **options: Any) -> ResNet:
    """Build :func:`cifar_layout`'s net, e.g. ``cifar_resnet(56, shortcut="B")``."""
    return ResNet.from_layout(cifar_layout(depth, **options))


def imagenet_resnet(depth: int = 50, **options: Any) -> ResNet:
    """Build :func:`imagenet_layout`'s net, e.g. ``imagenet_resnet(50)``."""
    return ResNet.from_layout(imagenet_layout(depth, **options))


__all__ = [
    "CIFAR_DEPTHS",
    "IMAGENET_DEPTHS",
    "PREACT_CIFAR_DEPTHS",
    "ResNet",
    "ResNetLayout",
    "cifar_blocks_per_stage",
    "cifar_layout",
    "cifar_resnet",
    "imagenet_layout",
    "imagenet_resnet",
]
