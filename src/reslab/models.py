"""The ResNets of He et al. 2015/2016, their plain twins, and a registry to build them by name.

One :class:`ResNet` class covers both families; they differ only in the stem and the widths:

* CIFAR (arXiv:1512.03385 §4.2): 3×3 stem with 16 channels, three stages of 16/32/64 with
  ``n`` blocks each, depth ``6n+2`` for basic blocks (``9n+2`` for bottlenecks), option-A
  shortcuts by default.
* ImageNet (Table 1): 7×7 stride-2 stem with max-pool, four stages of 64/128/256/512; the
  ``state_dict`` matches torchvision's key for key, so its weights load with ``strict=True``.

``create_model("resnet56", shortcut="B", plain=True)`` builds any of them by name, in the
manner of timm; ``list_models()`` lists the names.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reslab.blocks import (
    BLOCKS,
    _Block,
    _PreActBlock,
    check_shortcut_option,
    is_block,
)
from reslab.errors import ModelError

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
PREACT_CIFAR_DEPTHS = (110, 164, 1001)
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


# --- the network -------------------------------------------------------------------------------


class ResNet(nn.Module):
    """Stem, stages of residual (or plain) blocks, global average pool, fully connected.

    Attribute names follow torchvision (``conv1, bn1, layer1..4, fc``). Pre-activation nets
    have no BN after the stem and a final BN-ReLU (``bn_final``) after the last block, since
    their blocks end on a convolution (He et al. 2016).
    """

    def __init__(
        self,
        block: type[_Block],
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        stem: str = "cifar",
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        plain: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        if zero_init_residual and plain:
            raise ModelError(
                "zero_init_residual=True with plain=True would zero every block's output: "
                "a plain net has no shortcut to pass its input on; drop one of the two"
            )
        self.shortcut_option = check_shortcut_option(shortcut)
        self.plain = plain
        self.preact = issubclass(block, _PreActBlock)
        self.input_size = (in_channels, 32, 32) if stem == "cifar" else (in_channels, 224, 224)

        stem_width = widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ModelError(f"stem {stem!r} is not one of 'cifar', 'imagenet'")
        self.bn1: nn.Module = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
        self.relu: nn.Module = nn.Identity() if self.preact else nn.ReLU(inplace=True)

        self.in_planes = stem_width
        self.stage_names: list[str] = []
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            name = f"layer{i + 1}"
            stage = self._make_stage(block, width, n_blocks, 1 if i == 0 else 2, shortcut, plain)
            setattr(self, name, stage)
            self.stage_names.append(name)

        out_planes = self.in_planes
        self.bn_final: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(out_planes), nn.ReLU(inplace=True))
            if self.preact
            else nn.Identity()
        )
        self.fc = nn.Linear(out_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation (arXiv:1502.01852), as the paper and torchvision use.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as its shortcut: arXiv:1706.02677 §5.1.
            for m in self.blocks():
                m.zero_init_last()

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
                )
            )
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def blocks(self) -> list[_Block]:
        """Every residual (or plain) block, input to output."""
        return [m for m in self.modules() if is_block(m)]  # type: ignore[misc]

    def features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.bn_final(x)

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path: the stem, every conv of every branch, and fc."""
        blocks = self.blocks()
        return 2 + (3 if blocks and hasattr(blocks[0], "conv3") else 2) * len(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # Global average pool as a mean: CUDA's adaptive-pool backward is not deterministic.
        return self.fc(x.mean((2, 3)))


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}")


def _scaled(widths: Sequence[int], width: float) -> list[int]:
    if not isinstance(width, int | float) or isinstance(width, bool) or width <= 0:
        raise ModelError(f"width must be a positive number, got {width!r}")
    return [max(1, round(w * width)) for w in widths]


# --- private factories -------------------------------------------------------------------------


def cifar_resnet(
    depth: int = 20,
    *,
    block: str = "basic",
    preact: bool = False,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    shortcut: str = "A",
    plain: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """The CIFAR ResNet of He et al. 2015 §4.2 (or its pre-activation form, 2016) of any depth.

    Basic blocks need ``depth = 6n + 2``, bottlenecks ``depth = 9n + 2``.
    """
    if block not in ("basic", "bottleneck"):
        raise ModelError(f"block {block!r} is not one of 'basic', 'bottleneck'")
    per_block, examples = (6, CIFAR_DEPTHS[:5]) if block == "basic" else (9, (164, 1001))
    if not isinstance(depth, int) or depth < per_block + 2 or (depth - 2) % per_block:
        raise ModelError(
            f"depth {depth} is not {per_block}n+2: try {', '.join(map(str, examples))}"
        )
    n = (depth - 2) // per_block
    block_cls = BLOCKS[("preact_" if preact else "") + block]
    return ResNet(
        block_cls,
        (n, n, n),
        _scaled((16, 32, 64), width),
        stem="cifar",
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        plain=plain,
        zero_init_residual=zero_init_residual,
    )


def imagenet_resnet(
    depth: int = 50,
    *,
    preact: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: float = 1.0,
    shortcut: str = "B",
    plain: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """The ImageNet ResNet of He et al. 2015 Table 1; depth 18, 34, 50, 101 or 152."""
    if depth not in IMAGENET_DEPTHS:
        raise ModelError(
            f"ImageNet ResNet depth {depth} is not one of {', '.join(map(str, IMAGENET_DEPTHS))}"
        )
    block, layers = IMAGENET_DEPTHS[depth]
    block_cls = BLOCKS[("preact_" if preact else "") + block]
    return ResNet(
        block_cls,
        layers,
        _scaled((64, 128, 256, 512), width),
        stem="imagenet",
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
        plain=plain,
        zero_init_residual=zero_init_residual,
    )


# --- registry ----------------------------------------------------------------------------------

Builder = Callable[..., nn.Module]
# name -> (builder, the factory whose keyword arguments the builder accepts)
_REGISTRY: dict[str, tuple[Builder, Builder]] = {}


def register_model(factory: Builder) -> Callable[[Builder], Builder]:
    """Register a builder under its function name; ``factory`` defines its options."""

    def register(fn: Builder) -> Builder:
        _REGISTRY[fn.__name__] = (fn, factory)
        return fn

    return register


# CIFAR, He et al. 2015 Table 6 (option A).
@register_model(cifar_resnet)
def resnet20(**kw: Any) -> ResNet:
    return cifar_resnet(20, **kw)


@register_model(cifar_resnet)
def resnet32(**kw: Any) -> ResNet:
    return cifar_resnet(32, **kw)


@register_model(cifar_resnet)
def resnet44(**kw: Any) -> ResNet:
    return cifar_resnet(44, **kw)


@register_model(cifar_resnet)
def resnet56(**kw: Any) -> ResNet:
    return cifar_resnet(56, **kw)


@register_model(cifar_resnet)
def resnet110(**kw: Any) -> ResNet:
    return cifar_resnet(110, **kw)


@register_model(cifar_resnet)
def resnet1202(**kw: Any) -> ResNet:
    return cifar_resnet(1202, **kw)


# Their plain twins (He et al. 2015 Fig. 6 left).
@register_model(cifar_resnet)
def plain20(**kw: Any) -> ResNet:
    return cifar_resnet(20, **{"plain": True, **kw})


@register_model(cifar_resnet)
def plain32(**kw: Any) -> ResNet:
    return cifar_resnet(32, **{"plain": True, **kw})


@register_model(cifar_resnet)
def plain44(**kw: Any) -> ResNet:
    return cifar_resnet(44, **{"plain": True, **kw})


@register_model(cifar_resnet)
def plain56(**kw: Any) -> ResNet:
    return cifar_resnet(56, **{"plain": True, **kw})


@register_model(cifar_resnet)
def plain110(**kw: Any) -> ResNet:
    return cifar_resnet(110, **{"plain": True, **kw})


@register_model(cifar_resnet)
def plain1202(**kw: Any) -> ResNet:
    return cifar_resnet(1202, **{"plain": True, **kw})


# Pre-activation CIFAR nets, He et al. 2016 Table 3 (projection shortcuts where shapes change).
@register_model(cifar_resnet)
def preact_resnet110(**kw: Any) -> ResNet:
    return cifar_resnet(110, **{"preact": True, "shortcut": "B", **kw})


@register_model(cifar_resnet)
def preact_resnet164(**kw: Any) -> ResNet:
    return cifar_resnet(164, **{"block": "bottleneck", "preact": True, "shortcut": "B", **kw})


@register_model(cifar_resnet)
def preact_resnet1001(**kw: Any) -> ResNet:
    return cifar_resnet(1001, **{"block": "bottleneck", "preact": True, "shortcut": "B", **kw})


# ImageNet, He et al. 2015 Table 1, torchvision's layout (option B).
@register_model(imagenet_resnet)
def resnet18(**kw: Any) -> ResNet:
    return imagenet_resnet(18, **kw)


@register_model(imagenet_resnet)
def resnet34(**kw: Any) -> ResNet:
    return imagenet_resnet(34, **kw)


@register_model(imagenet_resnet)
def resnet50(**kw: Any) -> ResNet:
    return imagenet_resnet(50, **kw)


@register_model(imagenet_resnet)
def resnet101(**kw: Any) -> ResNet:
    return imagenet_resnet(101, **kw)


@register_model(imagenet_resnet)
def resnet152(**kw: Any) -> ResNet:
    return imagenet_resnet(152, **kw)


@register_model(imagenet_resnet)
def plain18(**kw: Any) -> ResNet:
    return imagenet_resnet(18, **{"plain": True, **kw})


@register_model(imagenet_resnet)
def plain34(**kw: Any) -> ResNet:
    return imagenet_resnet(34, **{"plain": True, **kw})


# Any other CIFAR depth by name: resnet74, plain74, preact_resnet56; cifar_resnet50 and
# cifar_plain50 where resnet50 would name the ImageNet net.
_DYNAMIC = re.compile(r"^(resnet|plain|preact_resnet|cifar_resnet|cifar_plain)(\d+)$")


def _resolve(name: str) -> tuple[Builder, Builder, dict[str, Any]]:
    """(builder, factory, preset keyword arguments) for a model name."""
    if name in _REGISTRY:
        builder, factory = _REGISTRY[name]
        return builder, factory, {}
    match = _DYNAMIC.match(name)
    if match:
        family, depth = match.group(1), int(match.group(2))
        preset: dict[str, Any] = {"depth": depth}
        if family in ("plain", "cifar_plain"):
            preset["plain"] = True
        if family == "preact_resnet":
            preset.update(preact=True, shortcut="B")
            if depth >= 164 and (depth - 2) % 9 == 0:
                preset["block"] = "bottleneck"
        return cifar_resnet, cifar_resnet, preset
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(
        f"unknown model {name!r}: {hint}run `reslab models` to list them "
        "(CIFAR depths 6n+2 also work, e.g. resnet74, plain74)"
    )


def cifar_model_name(depth: int, plain: bool) -> str:
    """A registry name that builds the CIFAR net of ``depth`` (or its plain twin) for sure.

    ``resnet50`` and ``resnet152`` are the ImageNet nets; their CIFAR namesakes are
    ``cifar_resnet50`` and ``cifar_plain50``.
    """
    cifar_resnet(depth)  # a clear error for a depth that is not 6n+2
    family = "plain" if plain else "resnet"
    return f"cifar_{family}{depth}" if f"resnet{depth}" in IMAGENET_NAMES else f"{family}{depth}"


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("resnet56", shortcut="B")``.

    Overrides are the factory's keyword arguments: ``num_classes``, ``in_channels``, ``width``,
    ``shortcut`` (A/B/C), ``plain``, ``zero_init_residual``, ``preact``. The resolved name and
    overrides are kept on the model as ``model.reslab_config``, which :func:`reslab.save_weights`
    stores so a weights file alone rebuilds its model.
    """
    builder, factory, preset = _resolve(name)
    valid = set(inspect.signature(factory).parameters) - {"depth"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ModelError(
            f"{name} has no option {', '.join(unknown)}: valid options are "
            f"{', '.join(sorted(valid))}"
        )
    model = builder(**{**preset, **overrides})
    model.reslab_config = {"name": name, **overrides}  # type: ignore[assignment]
    return model


IMAGENET_NAMES = frozenset(f"resnet{d}" for d in IMAGENET_DEPTHS)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, CIFAR family first; ``pattern`` filters with a regex search."""
    names = list(_REGISTRY)
    if pattern:
        names = [n for n in names if re.search(pattern, n)]
    return names


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image (convolutions and linear layers).

    ``input_size`` is ``(C, H, W)``; by default the model's native size.
    """
    size = tuple(input_size) if input_size else tuple(getattr(model, "input_size", (3, 32, 32)))
    total = 0

    def conv_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += out[0].numel() * k

    def linear_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


__all__ = [
    "CIFAR_DEPTHS",
    "IMAGENET_DEPTHS",
    "PREACT_CIFAR_DEPTHS",
    "ResNet",
    "cifar_model_name",
    "cifar_resnet",
    "count_macs",
    "count_params",
    "create_model",
    "imagenet_resnet",
    "list_models",
    "register_model",
]
