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
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn, overload

from reslab import checks
from reslab.checks import Bounds, shown
from reslab.errors import ModelError
from reslab.models.counting import layout_params
from reslab.models.features import ResNetFeatures
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
# name -> (the layout factory, whose keyword arguments are the name's options; preset arguments)
_REGISTRY: dict[str, tuple[LayoutFactory, dict[str, Any]]] = {}


def register_model(name: str, factory: LayoutFactory, **preset: Any) -> Callable[..., ResNet]:
    """Register ``name`` as ``factory(**preset)``; returns its builder, like timm's ``resnet56()``.

    The factory's keyword arguments are the name's options; a preset is the name's default
    and any option overrides it.
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
# What a name fixes; the factories take them as arguments, but they are not options.
_NAME_ARGUMENTS = {"depth", "widen_factor", "cardinality", "bottleneck_width"}


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
    names = list(_REGISTRY)
    if pattern:
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ModelError(f"filter {pattern!r} is not a regular expression ({exc})") from exc
        names = [n for n in names if regex.search(n)]
    return names


# --- building -----------------------------------------------------------------------------------

_BOOLEAN_OPTIONS = ("plain", "zero_init_residual", "preact")
_TEXT_OPTIONS = ("shortcut", "block", "activation", "shortcut_mode")
# Every number an option can ask for, bounded (reslab.checks) before any layout is computed.
NUMBER_OPTIONS = {
    "num_classes": Bounds(int, 1, checks.MAX_CLASSES),
    "in_channels": Bounds(int, 1, checks.MAX_IN_CHANNELS),
    "width": Bounds(float, 0, checks.MAX_WIDTH, lo_open=True),
    "shortcut_scale": Bounds(float, 0, 1e3),  # λ; the paper tries 0.5
    "branch_scale": Bounds(float, 0, 1e3, lo_open=True),  # μ
    "gate_bias": Bounds(float, -1e3, 1e3),  # b_g; the paper starts at -6
    "shortcut_dropout": Bounds(float, 0, 1, hi_open=True),
    "drop_rate": Bounds(float, 0, 1, hi_open=True),
}
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
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    width: float | None = None,
    shortcut: str | None = None,
    plain: bool | None = None,
    zero_init_residual: bool | None = None,
    preact: bool | None = None,
    block: str | None = None,
    activation: str | None = None,
    shortcut_mode: str | None = None,
    shortcut_scale: float | None = None,
    branch_scale: float | None = None,
    gate_bias: float | None = None,
    shortcut_dropout: float | None = None,
    drop_rate: float | None = None,
    features_only: Literal[False] = False,
    out_indices: None = None,
    **unknown: NoReturn,
) -> ResNet: ...


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    width: float | None = None,
    shortcut: str | None = None,
    plain: bool | None = None,
    zero_init_residual: bool | None = None,
    preact: bool | None = None,
    block: str | None = None,
    activation: str | None = None,
    shortcut_mode: str | None = None,
    shortcut_scale: float | None = None,
    branch_scale: float | None = None,
    gate_bias: float | None = None,
    shortcut_dropout: float | None = None,
    drop_rate: float | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **unknown: Any,
) -> ResNet | ResNetFeatures:
    """Build a registered model by name, e.g. ``create_model("resnet56", shortcut="B")``.

    Every option left at ``None`` keeps the name's default:

    * ``num_classes`` (10 for CIFAR nets, 1000 for ImageNet), ``in_channels`` (3), ``width``
      (a multiplier on every stage's channels, 1.0);
    * ``shortcut``: ``"A"`` pads the identity with zeros, ``"B"`` projects where the shape
      changes, ``"C"`` projects on every block (He et al. 2015 §3.3);
    * ``plain``: drop every shortcut, giving the name's plain twin;
    * ``zero_init_residual``: each block starts as its shortcut (arXiv:1706.02677 §5.1);
    * ``preact``: pre-activation blocks (He et al. 2016), with that paper's defaults;
    * ``block``: ``"basic"`` or ``"bottleneck"``, CIFAR nets only.

    He et al. 2016's ablations (arXiv:1603.05027), CIFAR nets only:

    * ``activation`` (Table 2 / Fig. 4): ``"original"`` (a), ``"bn_after_add"`` (b),
      ``"relu_before_add"`` (c), ``"relu_preact"`` (d) or ``"full_preact"`` (e, the same net as
      ``preact=True``); each has its plain twin;
    * ``shortcut_mode`` (Table 1 / Fig. 2): ``"identity"``, ``"scale"`` (``y = λ·shortcut +
      μ·F`` with ``shortcut_scale`` λ = 0.5 and ``branch_scale`` μ = 1 unless given),
      ``"exclusive_gate"`` (``(1−g)·shortcut + g·F``) or ``"shortcut_gate"`` (``(1−g)·shortcut +
      F``) with ``g = σ(1×1 conv(x) + b_g)`` and ``gate_bias`` b_g starting at −6, ``"conv"``
      (a 1×1 conv on every shortcut: ``shortcut="C"``) or ``"dropout"`` (``shortcut_dropout``
      0.5 on the shortcut). These change the shortcut, so they have no plain twin.

    ``drop_rate``: dropout inside a wide ResNet's blocks. ``features_only``: see the module.

    Any other keyword, or a value of the wrong type, raises :class:`~reslab.errors.ModelError`
    (``**unknown`` is typed ``NoReturn`` so that type checkers flag a misspelt option too). The
    resolved name and the options given are kept on the model as ``model.reslab_config``,
    which :func:`reslab.save_weights` stores so a weights file alone rebuilds its model.
    """
    # In signature order, which is also the order the trainer passes them, so the config that
    # a weights file's header records keeps its key order.
    given: dict[str, Any] = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "width": width,
        "shortcut": shortcut,
        "plain": plain,
        "zero_init_residual": zero_init_residual,
        "preact": preact,
        "block": block,
        "activation": activation,
        "shortcut_mode": shortcut_mode,
        "shortcut_scale": shortcut_scale,
        "branch_scale": branch_scale,
        "gate_bias": gate_bias,
        "shortcut_dropout": shortcut_dropout,
        "drop_rate": drop_rate,
    }
    options = {**{k: v for k, v in given.items() if v is not None}, **unknown}
    model = ResNet.from_layout(model_layout(name, **options))
    model.reslab_config = config = {"name": name, **options}  # type: ignore[assignment]
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
    valid = set(inspect.signature(factory).parameters) - _NAME_ARGUMENTS
    bad = sorted(set(options) - valid)
    if bad:
        raise ModelError(
            f"{name} has no option {', '.join(bad)}: valid options are {', '.join(sorted(valid))}"
        )
    options = {k: v for k, v in options.items() if v is not None}  # None: the name's default
    _check_options(options)
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


def _check_options(options: dict[str, Any]) -> None:
    """Types first (a bool is a bool, never a truthy string), then the sizes' bounds."""
    for option in _BOOLEAN_OPTIONS:
        if option in options and not isinstance(options[option], bool):
            raise ModelError(f"{option} must be True or False, got {shown(options[option])}")
    for option in _TEXT_OPTIONS:
        if option in options and not isinstance(options[option], str):
            raise ModelError(f"{option} must be a string, got {shown(options[option])}")
    for option, bounds in NUMBER_OPTIONS.items():
        if option in options:
            bounds.check(option, options[option], ModelError)


__all__ = [
    "IMAGENET_NAMES",
    "cifar_model_name",
    "create_model",
    "list_models",
    "model_layout",
    "register_model",
]
