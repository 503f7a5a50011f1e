"""The model options: the one record of what ``create_model(name, **options)`` takes.

:class:`ModelOptions` lists every option once, with its type, its bounds (:mod:`reslab.checks`)
and, for those ``reslab train`` has a flag for, the flag's default and help. Everything else
reads it: the layout factories (:mod:`~reslab.models.resnet`, :mod:`~reslab.models.wide`) check
their keyword options with :meth:`ModelOptions.of`, :func:`~reslab.models.create_model` passes
``**options`` on to them (as timm's factory passes ``**kwargs`` to the builder), and
:class:`~reslab.train.TrainConfig` takes its model fields from :func:`train_options`.

Every option defaults to ``None``, the model name's own default (in brackets below). He et
al. 2016's ablations (arXiv:1603.05027) are CIFAR-only: ``activation`` places the activations
(Table 2 / Fig. 4: ``original`` (a), ``bn_after_add`` (b), ``relu_before_add`` (c),
``relu_preact`` (d), ``full_preact`` (e), which is ``preact=True``), and ``shortcut_mode`` sets
how each shortcut meets F (Table 1 / Fig. 2: ``identity``, ``scale`` (``λ·shortcut + μ·F``),
``exclusive_gate`` (``(1−g)·shortcut + g·F``), ``shortcut_gate`` (``(1−g)·shortcut + F``) with
``g = σ(1×1 conv(x) + b_g)``, ``conv`` (a 1×1 conv on every shortcut: option C) or ``dropout``
on the shortcut); those change the shortcut, so they have no plain twin.

The trainability options (CIFAR nets with the original basic block; the combinations that make
no sense are refused by :class:`~reslab.models.resnet.ResNetLayout`): ``norm`` ``"none"``
removes every BN, ``nonlinearity`` ``"tanh"`` replaces every ReLU, and ``init`` picks how the
net starts, one paper each: ``dirac`` (arXiv:1706.00388), ``looks_linear`` (arXiv:1702.08591
§5), ``delta_orthogonal`` (arXiv:1806.05393), ``skipinit`` (arXiv:2002.10444, 2003.04887) and
``fixup`` (arXiv:1901.09321); :mod:`reslab.models.inits` and :mod:`reslab.blocks.layers` say
what each builds.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reslab import checks
from reslab.checks import Bounds, shown
from reslab.errors import ModelError


def _option(
    bounds: Bounds | None = None,
    only: tuple[str, ...] = (),
    flag: tuple[Any, str] | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A :class:`ModelOptions` field. ``only``: the factories that take it (none: every one);
    ``flag``: ``reslab train``'s default and help line for it (none: the trainer has no flag);
    ``choices``: the values a string option may take (none: its factory checks it)."""
    meta = {"bounds": bounds, "only": only, "flag": flag, "choices": choices}
    return dataclasses.field(default=None, metadata=meta)


_CIFAR = ("cifar_layout",)
NORMS = ("batch", "none")
INITS = ("kaiming", "dirac", "looks_linear", "delta_orthogonal", "skipinit", "fixup")
NONLINEARITIES = ("relu", "tanh")


@dataclass(frozen=True)
class ModelOptions:
    """The options of :func:`~reslab.models.create_model`; ``None`` keeps the name's default."""

    # classes of the head; 0: no classifier, the net returns its pooled features, as timm's
    # num_classes=0 [10 for CIFAR nets, 1000 for ImageNet]
    num_classes: int | None = _option(Bounds(int, 0, checks.MAX_CLASSES))
    # channels of the input [3]
    in_channels: int | None = _option(Bounds(int, 1, checks.MAX_IN_CHANNELS))
    # a multiplier on every stage's channels [1.0]
    width: float | None = _option(
        Bounds(float, 0, checks.MAX_WIDTH, lo_open=True),
        flag=(1.0, "channel multiplier, e.g. 0.25 for a quarter-width net"),
    )
    # A pads the identity with zeros, B projects where the shape changes, C projects on every
    # block (He et al. 2015 §3.3) [A for CIFAR nets, B for pre-activation and ImageNet ones]
    shortcut: str | None = _option(
        flag=(None, "shortcut option A (zero-pad), B or C (projections); default: the model's")
    )
    # drop every shortcut: the name's plain twin [the name's]
    plain: bool | None = _option(flag=(None, "strip the shortcuts: the plain twin of the net"))
    # each block starts as its shortcut (arXiv:1706.02677 §5.1) [False]
    zero_init_residual: bool | None = _option(
        flag=(False, "zero each block's last BN scale: blocks start as identity")
    )
    # pre-activation blocks with He et al. 2016's defaults [the name's]
    preact: bool | None = _option(only=("cifar_layout", "imagenet_layout"))
    # basic or bottleneck [basic; bottleneck for pre-activation nets of 9n+2 ≥ 164 layers]
    block: str | None = _option(only=_CIFAR)
    # where BN and ReLU sit, (a) to (e) above [original]
    activation: str | None = _option(
        only=_CIFAR,
        flag=(
            None,
            "BN/ReLU placement: original, bn_after_add, relu_before_add, relu_preact, full_preact",
        ),
    )
    # how each shortcut meets F, above [identity]
    shortcut_mode: str | None = _option(
        only=_CIFAR,
        flag=(
            None,
            "identity, scale, exclusive_gate, shortcut_gate, conv or dropout (on the shortcut)",
        ),
    )
    # λ on the shortcut, shortcut_mode scale [0.5]
    shortcut_scale: float | None = _option(
        Bounds(float, 0, 1e3), _CIFAR, (None, "λ on the shortcut (--shortcut-mode scale; 0.5)")
    )
    # μ on F, shortcut_mode scale [1]
    branch_scale: float | None = _option(
        Bounds(float, 0, 1e3, lo_open=True),
        _CIFAR,
        (None, "μ on the residual branch (--shortcut-mode scale; 1)"),
    )
    # b_g, the gates' initial bias; the paper's best for both gates [-6]
    gate_bias: float | None = _option(
        Bounds(float, -1e3, 1e3), _CIFAR, (None, "initial gate bias b_g (the gating modes; -6)")
    )
    # drop probability on the shortcut, shortcut_mode dropout [0.5]
    shortcut_dropout: float | None = _option(
        Bounds(float, 0, 1, hi_open=True),
        _CIFAR,
        (None, "drop rate on the shortcut (dropout mode; 0.5)"),
    )
    # BN after every convolution, or none: each conv then has a bias for BN's shift [batch]
    norm: str | None = _option(
        only=_CIFAR,
        flag=(None, "batch or none (no BN: the convolutions get biases); default batch"),
        choices=NORMS,
    )
    # how the net starts, one paper each (module docstring) [kaiming: He et al.'s, today's]
    init: str | None = _option(
        only=_CIFAR,
        flag=(None, f"initialisation: {', '.join(INITS)}; default kaiming"),
        choices=INITS,
    )
    # the activation of every block and the stem [relu]
    nonlinearity: str | None = _option(
        only=_CIFAR, flag=(None, "relu or tanh; default relu"), choices=NONLINEARITIES
    )
    # dropout before the classifier, timm's drop_rate; in a wide ResNet, the paper's dropout
    # between each block's convolutions instead (WRN §2.3; the paper uses 0.3) [0]
    drop_rate: float | None = _option(
        Bounds(float, 0, 1, hi_open=True),
        flag=(0.0, "dropout before the classifier (a wide ResNet's: inside each block, WRN §2.3)"),
    )
    # stochastic depth (Huang et al. 2016, arXiv:1603.09382): the last block's branch drop
    # probability, linearly less for earlier blocks (reslab.blocks.drop); residual nets only [0]
    drop_path_rate: float | None = _option(
        Bounds(float, 0, 1, hi_open=True),
        flag=(0.0, "stochastic depth: the last block's drop rate, linear in depth (0.5: paper)"),
    )

    @classmethod
    def of(cls, options: Mapping[str, Any], factory: str, name: str = "") -> ModelOptions:
        """``options`` checked, in one line each: names ``factory`` takes, types, bounds.

        ``factory`` is the layout factory's ``__name__``; ``name`` (the model's, else the
        factory's) starts the line that refuses an option it does not take.
        """
        valid = names(factory)
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ModelError(
                f"{name or factory} has no option {', '.join(bad)}: "
                f"valid options are {', '.join(sorted(valid))}"
            )
        given = {k: v for k, v in options.items() if v is not None}
        for f in dataclasses.fields(cls):
            if f.name in given:
                _check(f, given[f.name])
        return cls(**given)

    def given(self) -> dict[str, Any]:
        """The options set (not ``None``), in the record's order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


FIELDS = {f.name: f for f in dataclasses.fields(ModelOptions)}
# The type of each option, without its None.
_KINDS = {
    name: next(a for a in typing.get_args(hint) if a is not type(None))
    for name, hint in typing.get_type_hints(ModelOptions).items()
}


def names(factory: str) -> list[str]:
    """The options layout factory ``factory`` (its ``__name__``) takes, in the record's order."""
    return [k for k, f in FIELDS.items() if not f.metadata["only"] or factory in f.metadata["only"]]


def train_options() -> dict[str, tuple[Any, str, Bounds | None]]:
    """``reslab train``'s model options: name -> (default, help, bounds), in the record's order."""
    return {
        k: (*f.metadata["flag"], f.metadata["bounds"])
        for k, f in FIELDS.items()
        if f.metadata["flag"]
    }


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    """Types first (a bool is a bool, never a truthy string), then the numbers' bounds."""
    kind = _KINDS[f.name]
    if f.metadata["bounds"] is not None:
        f.metadata["bounds"].check(f.name, value, ModelError)  # ints stay ints: checked only
    elif kind is bool and not isinstance(value, bool):
        raise ModelError(f"{f.name} must be True or False, got {shown(value)}")
    elif kind is str and not isinstance(value, str):
        raise ModelError(f"{f.name} must be a string, got {shown(value)}")
    elif f.metadata["choices"] and value not in f.metadata["choices"]:
        raise ModelError(
            f"{f.name} {shown(value)} is not one of {', '.join(f.metadata['choices'])}"
        )


__all__ = ["FIELDS", "INITS", "NONLINEARITIES", "NORMS", "ModelOptions", "names", "train_options"]
