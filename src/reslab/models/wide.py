"""Wide ResNets and ResNeXt: two more families of the one :class:`~reslab.models.resnet.ResNet`.

Each factory here decides a :class:`~reslab.models.resnet.ResNetLayout`, as
:func:`~reslab.models.resnet.cifar_layout` does, so the nets are built, counted, named and
twinned exactly like the ResNets (``plain=True`` drops every shortcut and nothing else):

* WRN-d-k, Zagoruyko & Komodakis 2016 (arXiv:1605.07146, Table 1): a 3×3 stem of 16 channels,
  three stages of ``n = (d - 4) / 6`` pre-activation wide basic blocks
  (:class:`~reslab.blocks.WideBasicBlock`, dropout ``drop_rate`` between the convolutions)
  16k, 32k and 64k wide, a 1×1 projection where the shape changes, a final BN-ReLU. The ``d``
  of the name counts every convolution, the three 1×1 projections included; ``depth`` (the
  longest path, stem and fc included, as for every reslab net) is ``d - 2``.
* ResNeXt, Xie et al. 2017 (arXiv:1611.05431): bottlenecks whose 3×3 convolution is split into
  ``C`` groups, each ``d`` channels wide in the first stage (``C×dd``: "8×64d"), doubling with
  every stage as the stage widths do. The CIFAR nets (§5.1 / Table 7; the official code's
  layout: a 3×3 stem of 64, stages of 64/128/256 planes giving 256/512/1024 channels, option-B
  shortcuts) have depth ``9n + 2`` (ResNeXt-29: ``n = 3``); the ImageNet ones are
  torchvision's ``resnext50_32x4d`` layout, key for key its state_dict.
"""

from __future__ import annotations

from typing import Any

from reslab.blocks import Bottleneck, WideBasicBlock
from reslab.errors import ModelError
from reslab.models.options import ModelOptions
from reslab.models.resnet import (
    IMAGENET_DEPTHS,
    ResNet,
    ResNetLayout,
    _check_positive_int,
    _layout,
    _scaled,
    cifar_blocks_per_stage,
)


def wrn_blocks_per_stage(depth: int) -> int:
    """``n`` of a WRN-``depth``-k: ``depth = 6n + 4`` (Zagoruyko & Komodakis 2016, §2)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
        raise ModelError(f"wide ResNet depth {depth} is not 6n+4: try 16, 22, 28, 40")
    return (depth - 4) // 6


def wrn_layout(depth: int = 28, widen_factor: int = 10, **options: Any) -> ResNetLayout:
    """WRN-``depth``-``widen_factor`` for 32×32 inputs (Zagoruyko & Komodakis 2016, Table 1).

    ``options``: :class:`~reslab.models.options.ModelOptions`' shared ones and ``drop_rate``,
    the dropout between each block's convolutions (the paper uses 0.3); ``width`` multiplies
    every width, the stem's 16 included.
    """
    o = ModelOptions.of(options, "wrn_layout")
    n = wrn_blocks_per_stage(depth)
    _check_positive_int("widen_factor", widen_factor)
    k = widen_factor
    (stem,) = _scaled((16,), o.width)
    return _layout(
        o, WideBasicBlock, (n, n, n), (16 * k, 32 * k, 64 * k), stem_width=stem, shortcut="B"
    )


def cifar_resnext_layout(
    depth: int = 29, cardinality: int = 8, bottleneck_width: int = 64, **options: Any
) -> ResNetLayout:
    """ResNeXt-``depth`` (``cardinality``×``bottleneck_width``d) for CIFAR (Xie et al. §5.1).

    The official code's CIFAR layout: a 3×3 stem of 64 channels, three stages of ``n`` grouped
    bottlenecks (``depth = 9n + 2``) of 64, 128 and 256 planes (×4 out), option B.
    ``options``: :class:`~reslab.models.options.ModelOptions`' shared ones.
    """
    o = ModelOptions.of(options, "cifar_resnext_layout")
    n = cifar_blocks_per_stage(depth, "bottleneck")
    _check_cardinality(cardinality, bottleneck_width)
    grid = {"groups": cardinality, "base_width": bottleneck_width}
    return _layout(o, Bottleneck, (n, n, n), (64, 128, 256), shortcut="B", **grid)


def imagenet_resnext_layout(
    depth: int = 50, cardinality: int = 32, bottleneck_width: int = 4, **options: Any
) -> ResNetLayout:
    """ImageNet ResNeXt-``depth`` in torchvision's layout (``resnext50_32x4d``: the defaults).

    The ImageNet ResNet of that depth with ``groups=cardinality`` and
    ``width_per_group=bottleneck_width``: 50, 101 or 152 layers. ``options``: as
    :func:`cifar_resnext_layout`'s.
    """
    o = ModelOptions.of(options, "imagenet_resnext_layout")
    bottlenecks = [d for d, (block, _) in IMAGENET_DEPTHS.items() if block == "bottleneck"]
    if depth not in bottlenecks:
        raise ModelError(
            f"ImageNet ResNeXt depth {depth} is not one of {', '.join(map(str, bottlenecks))}"
        )
    _check_cardinality(cardinality, bottleneck_width)
    grid = {"groups": cardinality, "base_width": bottleneck_width}
    widths = (64, 128, 256, 512)
    return _layout(
        o,
        Bottleneck,
        IMAGENET_DEPTHS[depth][1],
        widths,
        stem="imagenet",
        num_classes=1000,
        shortcut="B",
        **grid,
    )


def _check_cardinality(cardinality: int, bottleneck_width: int) -> None:
    _check_positive_int("cardinality", cardinality)
    _check_positive_int("bottleneck_width", bottleneck_width)


def wide_resnet(depth: int = 28, widen_factor: int = 10, **options: Any) -> ResNet:
    """Build :func:`wrn_layout`'s net, e.g. ``wide_resnet(28, 10, drop_rate=0.3)``."""
    return ResNet.from_layout(wrn_layout(depth, widen_factor, **options))


__all__ = [
    "cifar_resnext_layout",
    "imagenet_resnext_layout",
    "wide_resnet",
    "wrn_blocks_per_stage",
    "wrn_layout",
]
