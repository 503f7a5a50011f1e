"""Every model by name, in the manner of timm: ``create_model("resnet56", shortcut="B")``.

Names, and the one rule that makes a plain twin: replace ``resnet`` by ``plain`` in the name,
or, where the name has no ``resnet``, put ``plain_`` before it.

=====================================  ==============================================  ==========
residual                               plain twin (the same layers, no shortcuts)      input
=====================================  ==============================================  ==========
``resnet20 … resnet1202``  (CIFAR)     ``plain20 … plain1202``                         32×32
``preact_resnet110/164/1001``          ``preact_plain110/164/1001``                    32×32
``resnet18 … resnet152``  (ImageNet)   ``plain18 … plain152``  (bottlenecks from 50)   224×224
``wrn28_10`` ``wrn16_8`` ``wrn40_4``   ``plain_wrn28_10`` ``plain_wrn16_8`` …          32×32
``resnext29_8x64d`` ``…16x64d``        ``plain_resnext29_8x64d`` …                     32×32
``resnext50_32x4d``  (ImageNet)        ``plain_resnext50_32x4d``                       224×224
=====================================  ==============================================  ==========

Any other CIFAR depth builds by name too (``resnet74``, ``plain74``, ``preact_resnet56``,
``preact_plain56``). Where ``resnetN``/``plainN`` names an ImageNet net (50 and 152 are also
``6n+2``), the CIFAR net of that depth is ``cifar_resnetN``/``cifar_plainN``, and
:func:`cifar_model_name` picks that spelling for the studies. So does any wide ResNet
``wrnD_K`` (``D = 6n+4``) and any ResNeXt ``resnextD_CxWd``: CIFAR for ``D = 9n+2``, torchvision's
ImageNet layout for 50, 101 and 152 (``resnext101_32x8d``), each with its ``plain_`` twin.

Options override the name: ``create_model("resnet110", preact=True)`` is ``preact_resnet110``
and ``create_model(name, plain=True)`` is the name's plain twin, exactly.
``create_model(name, features_only=True, out_indices=...)`` is the net without its head, whose
forward returns the list of feature maps ``out_indices`` chooses (timm's convention: 0 is the
stem's output, ``i`` the ``i``-th stage's, negative indices count from the end; all by
default): a :class:`~reslab.models.features.ResNetFeatures`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

from reslab import checks
from reslab.checks import shown
from reslab.errors import ModelError
from reslab.models.counting import layout_params
from reslab.models.features import ResNetFeatures
from reslab.models.options import FIELDS as OPTION_FIELDS
from reslab.models.options import ModelOptions
from reslab.models.resnet import (
    IMAGENET_DEPTHS,
    ResNet,
    ResNetLayout,
    cifar_blocks_per_stage,
    cifar_layout,
    imagenet_layout,
)
from reslab.models.wide import cifar_resnext_layout, imagenet_resnext_layout, wrn_layout

LayoutFactory = Callable[..., ResNetLayout]
# name -> (the layout factory; preset arguments)
_REGISTRY: dict[str, tuple[LayoutFactory, dict[str, Any]]] = {}


def register_model(name: str, factory: LayoutFactory, **preset: Any) -> Callable[..., ResNet]:
    """Register ``name`` as ``factory(**preset)``; returns its builder, like timm's ``resnet56()``.

    The factory takes the shared :class:`~reslab.models.options.ModelOptions` and those that
    name it, as keywords; a preset is the name's default and any option overrides it.
    """
    _REGISTRY[name] = (factory, preset)

    def build(**options: Any) -> ResNet:
        return create_model(name, **options)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``create_model({name!r}, **options)``."
    return build


# CIFAR, He et al. 2015 Table 6 (option A), and their plain twins (Fig. 6 left).
resnet20 = register_model("resnet20", cifar_layout, depth=20)
resnet32 = register_model("resnet32", cifar_layout, depth=32)
resnet44 = register_model("resnet44", cifar_layout, depth=44)
resnet56 = register_model("resnet56", cifar_layout, depth=56)
resnet110 = register_model("resnet110", cifar_layout, depth=110)
resnet1202 = register_model("resnet1202", cifar_layout, depth=1202)
plain20 = register_model("plain20", cifar_layout, depth=20, plain=True)
plain32 = register_model("plain32", cifar_layout, depth=32, plain=True)
plain44 = register_model("plain44", cifar_layout, depth=44, plain=True)
plain56 = register_model("plain56", cifar_layout, depth=56, plain=True)
plain110 = register_model("plain110", cifar_layout, depth=110, plain=True)
plain1202 = register_model("plain1202", cifar_layout, depth=1202, plain=True)

# Pre-activation CIFAR nets, He et al. 2016 Table 3 (option B, bottlenecks from 164 layers),
# and their plain twins: the same pre-activation layers without the identity path.
preact_resnet110 = register_model("preact_resnet110", cifar_layout, depth=110, preact=True)
preact_resnet164 = register_model("preact_resnet164", cifar_layout, depth=164, preact=True)
preact_resnet1001 = register_model("preact_resnet1001", cifar_layout, depth=1001, preact=True)
preact_plain110 = register_model(
    "preact_plain110", cifar_layout, depth=110, preact=True, plain=True
)
preact_plain164 = register_model(
    "preact_plain164", cifar_layout, depth=164, preact=True, plain=True
)
preact_plain1001 = register_model(
    "preact_plain1001", cifar_layout, depth=1001, preact=True, plain=True
)

# ImageNet, He et al. 2015 Table 1, torchvision's layout (option B), and their plain twins
# (the paper trains plain-18 and plain-34, Fig. 4; the deeper ones complete the set).
resnet18 = register_model("resnet18", imagenet_layout, depth=18)
resnet34 = register_model("resnet34", imagenet_layout, depth=34)
resnet50 = register_model("resnet50", imagenet_layout, depth=50)
resnet101 = register_model("resnet101", imagenet_layout, depth=101)
resnet152 = register_model("resnet152", imagenet_layout, depth=152)
plain18 = register_model("plain18", imagenet_layout, depth=18, plain=True)
plain34 = register_model("plain34", imagenet_layout, depth=34, plain=True)
plain50 = register_model("plain50", imagenet_layout, depth=50, plain=True)
plain101 = register_model("plain101", imagenet_layout, depth=101, plain=True)
plain152 = register_model("plain152", imagenet_layout, depth=152, plain=True)

# Wide ResNets, Zagoruyko & Komodakis 2016 (arXiv:1605.07146) Table 4, and their plain twins.
wrn28_10 = register_model("wrn28_10", wrn_layout, depth=28, widen_factor=10)
wrn16_8 = register_model("wrn16_8", wrn_layout, depth=16, widen_factor=8)
wrn40_4 = register_model("wrn40_4", wrn_layout, depth=40, widen_factor=4)
plain_wrn28_10 = register_model("plain_wrn28_10", wrn_layout, depth=28, widen_factor=10, plain=True)
plain_wrn16_8 = register_model("plain_wrn16_8", wrn_layout, depth=16, widen_factor=8, plain=True)
plain_wrn40_4 = register_model("plain_wrn40_4", wrn_layout, depth=40, widen_factor=4, plain=True)

# ResNeXt, Xie et al. 2017 (arXiv:1611.05431): CIFAR Table 7, ImageNet as torchvision's.
_RESNEXT29 = {"depth": 29, "bottleneck_width": 64}
resnext29_8x64d = register_model(
    "resnext29_8x64d", cifar_resnext_layout, cardinality=8, **_RESNEXT29
)
resnext29_16x64d = register_model(
    "resnext29_16x64d", cifar_resnext_layout, cardinality=16, **_RESNEXT29
)
resnext50_32x4d = register_model(
    "resnext50_32x4d", imagenet_resnext_layout, depth=50, cardinality=32, bottleneck_width=4
)
plain_resnext29_8x64d = register_model(
    "plain_resnext29_8x64d", cifar_resnext_layout, cardinality=8, plain=True, **_RESNEXT29
)
plain_resnext29_16x64d = register_model(
    "plain_resnext29_16x64d", cifar_resnext_layout, cardinality=16, plain=True, **_RESNEXT29
)
plain_resnext50_32x4d = register_model(
    "plain_resnext50_32x4d",
    imagenet_resnext_layout,
    depth=50,
    cardinality=32,
    bottleneck_width=4,
    plain=True,
)


# --- names --------------------------------------------------------------------------------------

IMAGENET_NAMES = frozenset(f"resnet{d}" for d in IMAGENET_DEPTHS)

# Any other CIFAR depth by name: resnet74, plain74, preact_resnet56, preact_plain56; and
# cifar_resnet50, cifar_plain50 where resnet50 and plain50 name the ImageNet nets.
_DYNAMIC = re.compile(r"^(resnet|plain|preact_resnet|preact_plain|cifar_resnet|cifar_plain)(\d+)$")
# Any wide ResNet and ResNeXt: wrn22_8, plain_wrn22_8; resnext29_4x32d, resnext101_32x8d.
_WRN = re.compile(r"^(plain_)?wrn(\d+)_(\d+)$")
_RESNEXT = re.compile(r"^(plain_)?resnext(\d+)_(\d+)x(\d+)d$")


def _resolve(name: str) -> tuple[LayoutFactory, dict[str, Any]]:
    """(layout factory, preset keyword arguments) for a model name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if len(name) > _MAX_NAME:
        raise ModelError(
            f"unknown model {shown(name)}: a model name has at most {_MAX_NAME} characters"
        )
    wide = _WRN.match(name)
    if wide:
        plain, depth, k = wide.groups()
        return wrn_layout, {"depth": int(depth), "widen_factor": int(k), "plain": bool(plain)}
    grouped = _RESNEXT.match(name)
    if grouped:
        plain, depth, c, d = grouped.groups()
        factory = imagenet_resnext_layout if int(depth) in IMAGENET_DEPTHS else cifar_resnext_layout
        grid = {"depth": int(depth), "cardinality": int(c), "bottleneck_width": int(d)}
        return factory, {**grid, "plain": bool(plain)}
    match = _DYNAMIC.match(name)
    if match:
        family, digits = match.group(1), match.group(2)
        depth = int(digits) if len(digits) <= 6 else checks.MAX_DEPTH + 1
        if depth > checks.MAX_DEPTH:
            raise ModelError(
                f"{shown(name)} has more than the {checks.MAX_DEPTH:,} layers reslab builds "
                f"(He et al. train 1202 at most); choose a shallower depth"
            )
        preset: dict[str, Any] = {"depth": depth}
        if family.endswith("plain"):
            preset["plain"] = True
        if family.startswith("preact_"):
            preset["preact"] = True  # the factory then picks option B and the block (2016)
        return cifar_layout, preset
    close = difflib.get_close_matches(name, list_models(), n=3) if len(name) <= _MAX_NAME else []
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(
        f"unknown model {shown(name)}: {hint}run `reslab models` to list them "
        "(CIFAR depths 6n+2 also work, e.g. resnet74, plain74, and wrnD_K, resnext29_CxWd)"
    )


def cifar_model_name(depth: int, plain: bool) -> str:
    """A registry name that builds the CIFAR net of ``depth`` (or its plain twin) for sure.

    ``resnet50``/``plain50`` and ``resnet152``/``plain152`` are the ImageNet nets; their CIFAR
    namesakes are ``cifar_resnet50``, ``cifar_plain50`` and so on. Every other depth keeps its
    bare name, so a study's run folders are named as they always were.
    """
    cifar_blocks_per_stage(depth)  # a clear error for a depth that is not 6n+2
    bare = f"{'plain' if plain else 'resnet'}{depth}"
    registered = _REGISTRY.get(bare)
    return bare if registered is None or registered[0] is cifar_layout else f"cifar_{bare}"


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, CIFAR family first; ``pattern`` filters with a regex search."""
    return checks.matching(list(_REGISTRY), pattern, ModelError)


# --- building -----------------------------------------------------------------------------------

_MAX_NAME = 64  # the longest registered name is 17 characters


# features_only=True returns the headless net; the overloads tell type checkers which is which.
@overload
def create_model(
    name: str,
    *,
    features_only: Literal[True],
    out_indices: int | Sequence[int] | None = None,
    **options: Any,
) -> ResNetFeatures: ...


@overload
def create_model(
    name: str, *, features_only: Literal[False] = False, out_indices: None = None, **options: Any
) -> ResNet: ...


def create_model(
    name: str,
    *,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **options: Any,
) -> ResNet | ResNetFeatures:
    """Build a registered model by name, e.g. ``create_model("resnet56", shortcut="B")``.

    ``options`` are :class:`~reslab.models.options.ModelOptions` (which lists and documents
    them): each left out or ``None`` keeps the name's default, and one the name's factory
    does not take, or of the wrong type, raises a one-line :class:`~reslab.errors.ModelError`.
    ``features_only``: see the module. The resolved name and the options given are kept on
    the model as ``model.reslab_config``, which :func:`reslab.save_weights` stores so a
    weights file alone rebuilds its model.
    """
    model = ResNet.from_layout(model_layout(name, **options))
    # In the record's order, whatever the caller's, so a weights file's header keeps its keys'.
    given = {k: options[k] for k in OPTION_FIELDS if options.get(k) is not None}
    model.reslab_config = config = {"name": name, **given}  # type: ignore[assignment]
    model.pretrained_cfg["architecture"] = name
    return _headless(model, config, features_only, out_indices)


def _headless(
    model: ResNet,
    config: dict[str, Any],
    features_only: object,
    out_indices: int | Sequence[int] | None,
) -> ResNet | ResNetFeatures:
    """``model`` without its head if ``features_only``; the config rebuilds it so."""
    if not isinstance(features_only, bool):
        raise ModelError(f"features_only must be True or False, got {features_only!r}")
    if out_indices is not None and not features_only:
        raise ModelError("out_indices chooses feature maps: it needs features_only=True")
    if not features_only:
        return model
    features = ResNetFeatures(model, out_indices)
    chosen = list(features.out_indices)
    features.reslab_config = {**config, "features_only": True, "out_indices": chosen}  # type: ignore[assignment]
    return features


def model_layout(name: str, **options: Any) -> ResNetLayout:
    """The layout :func:`create_model` would build, checked the same way, without any tensor."""
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string such as 'resnet20', got {shown(name)}")
    factory, preset = _resolve(name)
    options = ModelOptions.of(options, factory.__name__, name).given()
    layout = factory(**{**preset, **options})
    if layout.depth > checks.MAX_DEPTH:
        raise ModelError(
            f"{shown(name)} has {layout.depth:,} layers, more than the {checks.MAX_DEPTH:,} "
            "reslab builds; choose a shallower depth"
        )
    params = layout_params(layout)  # arithmetic on the shapes: nothing is allocated
    if params > checks.MAX_PARAMS:
        raise ModelError(
            f"{shown(name)} with these options has {params:,} parameters, more than the "
            f"{checks.MAX_PARAMS:,} reslab builds; lower width or num_classes"
        )
    return layout


__all__ = [
    "IMAGENET_NAMES",
    "cifar_model_name",
    "create_model",
    "list_models",
    "model_layout",
    "register_model",
]
