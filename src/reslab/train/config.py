"""The training configuration: one typed dataclass, validated at the edge, resolved in layers.

Each field of :class:`TrainConfig` carries its command-line help in its metadata
(:func:`knob`), and ``reslab train``'s flags are generated from the fields
(:func:`reslab.cli.train.register`), so a new field cannot lack a flag and a flag is always
named after its field (``weight_decay`` -> ``--weight-decay``).

:func:`resolve` layers defaults < recipe (:mod:`reslab.train.recipes`) < TOML file < command
line; :func:`load_config_file` reads a TOML file or a run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.data import AUGMENTS
from reslab.errors import ConfigError
from reslab.train.recipes import RECIPES, default_recipe, recipe_values

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEVICES",
    "FIELDS",
    "PRECISIONS",
    "RESUME_OVERRIDABLE",
    "SCHEDULES",
    "TrainConfig",
    "flag_name",
    "knob",
    "load_config_file",
    "resolve",
]

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# Fields that may differ when a run is resumed: they change neither the math nor the files.
# (device too: a study may resume a run on another GPU; only bit-identity across devices is lost)
RESUME_OVERRIDABLE = frozenset(
    {"quiet", "threads", "tensorboard", "detect_anomaly", "data_dir", "device"}
)


def knob(
    default: Any, help: str, *, aliases: tuple[str, ...] = (), metavar: str | None = None
) -> Any:
    """A :class:`TrainConfig` field: its default and the one line of help its flag shows.

    ``aliases`` are extra spellings of the flag kept for old command lines (``--wd``).
    """
    meta = {"help": help, "aliases": aliases, "metavar": metavar}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``config.json`` in the run folder holds one."""

    # model
    model: str = knob(
        "resnet20", "model name, e.g. resnet20, resnet110, plain56 (see `reslab models`)"
    )
    width: float = knob(1.0, "channel multiplier, e.g. 0.25 for a quarter-width net")
    shortcut: str | None = knob(
        None, "shortcut option A (zero-pad), B or C (projections); default: the model's"
    )
    plain: bool | None = knob(None, "strip the shortcuts: the plain twin of the net")
    zero_init_residual: bool = knob(
        False, "zero each block's last BN scale: blocks start as identity"
    )
    # He et al. 2016's ablations (CIFAR nets; reslab.create_model documents them)
    activation: str | None = knob(
        None, "BN/ReLU placement: original, bn_after_add, relu_before_add, relu_preact, full_preact"
    )
    shortcut_mode: str | None = knob(
        None, "identity, scale, exclusive_gate, shortcut_gate, conv or dropout (on the shortcut)"
    )
    shortcut_scale: float | None = knob(None, "λ on the shortcut (--shortcut-mode scale; 0.5)")
    branch_scale: float | None = knob(None, "μ on the residual branch (--shortcut-mode scale; 1)")
    gate_bias: float | None = knob(None, "initial gate bias b_g (the gating modes; -6)")
    shortcut_dropout: float | None = knob(None, "drop rate on the shortcut (dropout mode; 0.5)")
    # data
    dataset: str = knob(
        "digits",
        "digits (default, offline), cifar10, cifar100, mnist, fashion-mnist, imagefolder, ...",
    )
    data_dir: str | None = knob(
        None, "data folder (default $RESLAB_DATA or ~/.cache/reslab)", metavar="DIR"
    )
    val_split: int = knob(
        0, "hold out N train images for validation (0: evaluate on the test split)", metavar="N"
    )
    augment: str | None = knob(None, "cifar, flip or none (default: the dataset's own)")
    # optimisation
    recipe: str | None = knob(
        None, f"named defaults: {', '.join(RECIPES)} (default chosen by dataset)"
    )
    epochs: int = knob(30, "passes over the train split (ignored when --steps is set)", metavar="N")
    steps: int | None = knob(
        None, "total iterations; overrides --epochs (the paper: 64000)", metavar="N"
    )
    batch_size: int = knob(128, "GLOBAL batch size, split evenly over torchrun ranks", metavar="N")
    lr: float = knob(0.1, "peak learning rate")
    momentum: float = knob(0.9, "SGD momentum")
    nesterov: bool = knob(False, "Nesterov momentum")
    weight_decay: float = knob(
        5e-4,
        "weight decay, on every parameter (BN and biases too) as in the paper",
        aliases=("--wd",),
    )
    schedule: str = knob("cosine", "multistep, cosine, onecycle or constant")
    milestones: list[float] = knob(
        [0.5, 0.75], "multistep milestones as fractions of the total steps, e.g. 0.5,0.75"
    )
    gamma: float = knob(0.1, "multistep factor at each milestone")
    warmup_steps: int = knob(
        0, "linear warm-up steps (onecycle: the rising part; 0 = 25 %)", metavar="N"
    )
    warmup_until_error: float | None = knob(
        None,
        "use --warmup-lr until the training error (percent) is below this (paper: 80)",
        metavar="PCT",
    )
    warmup_lr: float = knob(0.01, "learning rate while --warmup-until-error is active")
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing")
    ema: float | None = knob(
        None, "evaluate an EMA of the weights with this decay, e.g. 0.999", metavar="DECAY"
    )
    grad_clip: float | None = knob(None, "clip the global gradient norm to this", metavar="NORM")
    # --- timm-style trainer options (issue 10): EMA warm-up, mixup/cutmix, accumulation ---
    ema_warmup: bool = knob(
        True, "warm the EMA decay up as timm's ModelEmaV3: min(decay, 1 - step^(-2/3))"
    )
    mixup: float = knob(
        0.0,
        "mixup α: mix image pairs, λ ~ Beta(α, α) (Zhang et al. 2017); 0 = off",
        metavar="ALPHA",
    )
    cutmix: float = knob(
        0.0,
        "cutmix α: paste a box of area 1-λ from the pair (Yun et al. 2019); 0 = off",
        metavar="ALPHA",
    )
    mix_prob: float = knob(
        1.0, "probability that a batch is mixed (with --mixup/--cutmix)", metavar="P"
    )
    mix_switch_prob: float = knob(
        0.5, "with both --mixup and --cutmix: probability a mixed batch uses cutmix", metavar="P"
    )
    accum_steps: int = knob(
        1,
        "gradient accumulation: each step's --batch-size as K micro-batches (BN sees each)",
        metavar="K",
    )
    # system
    device: str = knob("auto", "auto (default: cuda if available), cpu, cuda or cuda:N")
    precision: str = knob("auto", "auto (bf16 on CUDA and on AMX CPUs, else fp32), fp32 or bf16")
    channels_last: bool | None = knob(
        None, "NHWC activations (default: on; measured faster on CPU too)"
    )
    compile: bool | None = knob(None, "torch.compile the model (default: on for CUDA only)")
    cuda_graphs: bool | None = knob(None, "CUDA graphs when compiling (default: on for CUDA)")
    sync_bn: bool = knob(False, "synchronise BatchNorm statistics across torchrun ranks")
    seed: int = knob(0, "seed of weights, data order and augmentation", metavar="N")
    deterministic: bool = knob(False, "deterministic kernels: bit-identical resume on CPU")
    threads: int | None = knob(
        None,
        "CPU threads (default: one per core this process may use; study workers split them)",
        metavar="N",
    )
    detect_anomaly: bool = knob(False, "autograd anomaly detection (slow; debugging)")
    # output
    out: str | None = knob(
        None, "run folder (default runs/<model>-<dataset>-s<seed>)", metavar="DIR"
    )
    eval_every: int = knob(
        1, "epochs between evaluations (the last epoch is always evaluated)", metavar="N"
    )
    eval_batch_size: int = knob(1024, "batch size of evaluation passes", metavar="N")
    checkpoint_every_steps: int | None = knob(
        None, "also checkpoint mid-epoch every N steps", metavar="N"
    )
    snapshot_steps: list[int] = knob(
        [], "keep the weights at these steps, e.g. 0,50,100 (checkpoints/snapshot-N.safetensors)"
    )
    quiet: bool = knob(False, "one plain line per epoch, no progress bar")
    tensorboard: bool = knob(False, "also log to TensorBoard (if installed) under <out>/tb")

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    def run_dir(self) -> Path:
        """The run folder: ``out`` or ``runs/<model>-<dataset>-s<seed>``."""
        return Path(self.out or f"runs/{self.model}-{self.dataset}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, **values: Any) -> TrainConfig:
        """The config ``reslab train`` would run for these flags: the dataset's recipe applied
        (:func:`resolve`), e.g. ``TrainConfig.resolve(model="resnet56", epochs=5)``."""
        return resolve(values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Resolve a TOML (or ``config.json``) file; ``overrides`` win over the file."""
        return resolve({**load_config_file(path), **overrides})


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


def flag_name(name: str) -> str:
    """The command-line flag of field ``name``: ``weight_decay`` -> ``--weight-decay``."""
    return "--" + name.replace("_", "-")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (ints accepted for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    kind = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")


def _check_types(config: TrainConfig) -> None:
    for name, hint in _field_types().items():
        setattr(config, name, _coerce(name, getattr(config, name), hint))


def _check_values(c: TrainConfig) -> None:
    """Range checks; each error names the field and the fix in one line."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(
                f"{name} must be {what}, got {getattr(c, name)!r} (set {flag_name(name)} or "
                f"{name} = ... in the config file)"
            )

    need(c.epochs >= 1, "epochs", "a positive integer")
    need(c.steps is None or c.steps >= 1, "steps", "a positive integer")
    need(c.batch_size >= 1, "batch_size", "a positive integer")
    need(c.lr > 0 and math.isfinite(c.lr), "lr", "a positive number")
    need(0 <= c.momentum < 1, "momentum", "in [0, 1)")
    need(not c.nesterov or c.momentum > 0, "nesterov", "off when momentum is 0")
    need(c.weight_decay >= 0, "weight_decay", "zero or positive")
    need(c.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
    need(
        all(0 < m < 1 for m in c.milestones) and c.milestones == sorted(c.milestones),
        "milestones",
        "increasing fractions of the total steps in (0, 1), e.g. [0.5, 0.75]",
    )
    need(0 < c.gamma <= 1, "gamma", "in (0, 1]")
    need(c.warmup_steps >= 0, "warmup_steps", "zero or positive")
    need(
        all(v >= 0 for v in c.snapshot_steps) and c.snapshot_steps == sorted(set(c.snapshot_steps)),
        "snapshot_steps",
        "increasing step numbers, 0 or more, e.g. [0, 50, 100]",
    )
    need(
        c.warmup_until_error is None or 0 < c.warmup_until_error <= 100,
        "warmup_until_error",
        "a training error in percent, in (0, 100]",
    )
    need(c.warmup_lr > 0, "warmup_lr", "a positive number")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(c.ema is None or 0 < c.ema < 1, "ema", "a decay in (0, 1), e.g. 0.999")
    need(c.grad_clip is None or c.grad_clip > 0, "grad_clip", "a positive number")
    need(c.val_split >= 0, "val_split", "zero or a positive number of images")
    need(c.augment is None or c.augment in AUGMENTS, "augment", f"one of {', '.join(AUGMENTS)}")
    need(c.width > 0, "width", "a positive number")
    need(c.shortcut is None or c.shortcut.upper() in ("A", "B", "C"), "shortcut", "A, B or C")
    need(
        c.device in DEVICES or re.fullmatch(r"cuda:\d+", c.device) is not None,
        "device",
        "auto, cpu, cuda or cuda:N",
    )
    need(c.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(c.threads is None or c.threads >= 1, "threads", "a positive integer")
    need(c.eval_every >= 1, "eval_every", "a positive integer")
    need(c.eval_batch_size >= 1, "eval_batch_size", "a positive integer")
    need(
        c.checkpoint_every_steps is None or c.checkpoint_every_steps >= 1,
        "checkpoint_every_steps",
        "a positive integer",
    )
    need(c.recipe is None or c.recipe in RECIPES, "recipe", f"one of {', '.join(RECIPES)}")
    need(c.seed >= 0, "seed", "zero or positive")
    _check_trainer_options(c, need)


def _check_trainer_options(c: TrainConfig, need: Callable[[bool, str, str], None]) -> None:
    """Issue 10's trainer options (EMA warm-up, mixup/cutmix, accumulation), kept apart."""
    need(0 <= c.mixup < math.inf, "mixup", "a Beta α, zero (off) or positive, e.g. 0.8")
    need(0 <= c.cutmix < math.inf, "cutmix", "a Beta α, zero (off) or positive, e.g. 1.0")
    need(0 <= c.mix_prob <= 1, "mix_prob", "a probability in [0, 1]")
    need(0 <= c.mix_switch_prob <= 1, "mix_switch_prob", "a probability in [0, 1]")
    need(
        1 <= c.accum_steps <= c.batch_size and c.batch_size % c.accum_steps == 0,
        "accum_steps",
        f"a divisor of --batch-size {c.batch_size} (micro-batches of batch_size / K)",
    )
    need(
        c.accum_steps == 1 or not c.cuda_graphs,
        "cuda_graphs",
        "off with --accum-steps > 1 (CUDA graphs overwrite accumulated gradients, "
        "pytorch/pytorch#169545; the default turns them off)",
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The field values in a TOML file (or a run's ``config.json``), checked key by key.

    Keys may use dashes or underscores (``batch-size`` = ``batch_size``). Unknown keys and
    values of the wrong type raise :class:`ConfigError` naming them.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")  # TOML and JSON files are UTF-8
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return check_settings(raw, f"config file {path}", where=f" (in {path})")


def check_settings(raw: Mapping[Any, Any], source: str, where: str = "") -> dict[str, Any]:
    """``raw`` settings (dashes or underscores, ``_meta`` ignored) checked key by key."""
    values = {str(k).replace("-", "_"): v for k, v in raw.items() if k != "_meta"}
    unknown = sorted(k for k in values if k not in FIELDS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {', '.join(unknown)}; valid keys are the "
            "`reslab train` flags without dashes, e.g. batch_size, lr, epochs"
        )
    hints = _field_types()
    return {k: _coerce(f"{k}{where}", v, hints[k]) for k, v in values.items()}


def resolve(explicit: Mapping[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from the values the user set: defaults < recipe < ``explicit``.

    ``explicit`` holds what the user asked for (TOML file merged with command-line flags, the
    flags winning). The recipe is ``explicit["recipe"]`` or the dataset's default
    (:func:`reslab.train.recipes.default_recipe`). An explicit ``epochs`` without an explicit
    ``steps`` drops the recipe's ``steps``, so ``--epochs`` always does what it says.
    """
    explicit = dict(explicit or {})
    unknown = sorted(k for k in explicit if k not in FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting {', '.join(unknown)}")
    hints = _field_types()  # types first: the recipe lookup below uses dataset, model, recipe
    explicit = {k: _coerce(k, v, hints[k]) for k, v in explicit.items()}
    defaults = TrainConfig()
    dataset = str(explicit.get("dataset", defaults.dataset))
    model = str(explicit.get("model", defaults.model))
    recipe = explicit.get("recipe") or default_recipe(dataset)
    values: dict[str, Any] = recipe_values(recipe, model) if recipe else {}
    if "epochs" in explicit and "steps" not in explicit:
        values["steps"] = None
    values.update(explicit)
    values["recipe"] = recipe
    return TrainConfig(**values)
