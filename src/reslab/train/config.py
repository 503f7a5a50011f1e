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
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab import checks
from reslab.checks import Bounds, shown
from reslab.data import AUGMENTS
from reslab.errors import ConfigError
from reslab.models import model_layout
from reslab.models.options import train_options
from reslab.train.recipes import RECIPES, default_recipe, recipe_values

# `reslab train`'s model options: name -> (default, help, bounds), from the one record.
MODEL_FLAGS = train_options()

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
# Fields that may differ when a run is resumed: they change neither the math nor the files,
# only its rounding (threads: how oneDNN splits reductions; device: a study may resume a run
# on another GPU) and so bit-identity with an uninterrupted run.
RESUME_OVERRIDABLE = frozenset(
    {"quiet", "threads", "tensorboard", "detect_anomaly", "data_dir", "device"}
)


def knob(
    default: Any,
    help: str,
    *,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    bounds: Bounds | None = None,
) -> Any:
    """A :class:`TrainConfig` field: its default and the one line of help its flag shows.

    ``aliases`` are extra spellings of the flag kept for old command lines (``--wd``);
    ``bounds`` is the type and range every value of a numeric field is checked against
    (:mod:`reslab.checks`), however it is given: flag, config file, Python or a study.
    """
    meta = {"help": help, "aliases": aliases, "metavar": metavar, "bounds": bounds}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def model_knob(name: str) -> Any:
    """The field of model option ``name``: its flag's default, help and bounds are the record's
    (:class:`~reslab.models.options.ModelOptions`)."""
    default, help, bounds = MODEL_FLAGS[name]
    return knob(default, help, bounds=bounds)


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``config.json`` in the run folder holds one."""

    # model
    model: str = knob(
        "resnet20", "model name, e.g. resnet20, resnet110, plain56 (see `reslab models`)"
    )
    width: float = model_knob("width")
    shortcut: str | None = model_knob("shortcut")
    plain: bool | None = model_knob("plain")
    zero_init_residual: bool = model_knob("zero_init_residual")
    # He et al. 2016's ablations (CIFAR nets; reslab.models.options documents them)
    activation: str | None = model_knob("activation")
    shortcut_mode: str | None = model_knob("shortcut_mode")
    shortcut_scale: float | None = model_knob("shortcut_scale")
    branch_scale: float | None = model_knob("branch_scale")
    gate_bias: float | None = model_knob("gate_bias")
    shortcut_dropout: float | None = model_knob("shortcut_dropout")
    # The nets that train without shortcuts or BN (CIFAR nets; reslab.models.inits)
    norm: str | None = model_knob("norm")
    init: str | None = model_knob("init")
    nonlinearity: str | None = model_knob("nonlinearity")
    # timm's regularisers (reslab.models.timm_api, reslab.blocks.drop)
    drop_rate: float = model_knob("drop_rate")
    drop_path_rate: float = model_knob("drop_path_rate")
    # data
    dataset: str = knob(
        "digits",
        "digits (default, offline), cifar10, cifar100, mnist, fashion-mnist, imagefolder, ...",
    )
    data_dir: str | None = knob(
        None, "data folder (default $RESLAB_DATA or ~/.cache/reslab)", metavar="DIR"
    )
    val_split: int = knob(
        0,
        "hold out N train images for validation (0: evaluate on the test split)",
        metavar="N",
        bounds=Bounds(int, 0, checks.MAX_IMAGES),
    )
    augment: str | None = knob(None, "cifar, flip or none (default: the dataset's own)")
    # optimisation
    recipe: str | None = knob(
        None, f"named defaults: {', '.join(RECIPES)} (default chosen by dataset)"
    )
    epochs: int = knob(
        30,
        "passes over the train split (ignored when --steps is set)",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_EPOCHS),
    )
    steps: int | None = knob(
        None,
        "total iterations; overrides --epochs (the paper: 64000)",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_STEPS),
    )
    batch_size: int = knob(
        128,
        "GLOBAL batch size, split evenly over torchrun ranks",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_BATCH),
    )
    lr: float = knob(
        0.1, "peak learning rate", bounds=Bounds(float, 0, checks.FLOAT_MAX, lo_open=True)
    )
    momentum: float = knob(0.9, "SGD momentum", bounds=Bounds(float, 0, 1, hi_open=True))
    nesterov: bool = knob(False, "Nesterov momentum")
    weight_decay: float = knob(
        5e-4,
        "weight decay, on every parameter (BN and biases too) as in the paper",
        aliases=("--wd",),
        bounds=Bounds(float, 0, checks.FLOAT_MAX),
    )
    schedule: str = knob("cosine", "multistep, cosine, onecycle or constant")
    milestones: list[float] = knob(
        [0.5, 0.75],
        "multistep milestones as fractions of the total steps, e.g. 0.5,0.75",
        bounds=Bounds(float, 0, 1, lo_open=True, hi_open=True, many=True),
    )
    gamma: float = knob(
        0.1, "multistep factor at each milestone", bounds=Bounds(float, 0, 1, lo_open=True)
    )
    warmup_steps: int = knob(
        0,
        "linear warm-up steps (onecycle: the rising part; 0 = 25 %)",
        metavar="N",
        bounds=Bounds(int, 0, checks.MAX_STEPS),
    )
    warmup_until_error: float | None = knob(
        None,
        "use --warmup-lr until the training error (percent) is below this (paper: 80)",
        metavar="PCT",
        bounds=Bounds(float, 0, 100, lo_open=True),
    )
    warmup_lr: float = knob(
        0.01,
        "learning rate while --warmup-until-error is active",
        bounds=Bounds(float, 0, checks.FLOAT_MAX, lo_open=True),
    )
    label_smoothing: float = knob(
        0.0, "cross-entropy label smoothing", bounds=Bounds(float, 0, 1, hi_open=True)
    )
    ema: float | None = knob(
        None,
        "evaluate an EMA of the weights with this decay, e.g. 0.999",
        metavar="DECAY",
        bounds=Bounds(float, 0, 1, lo_open=True, hi_open=True, example=", e.g. 0.999"),
    )
    grad_clip: float | None = knob(
        None,
        "clip the global gradient norm to this",
        metavar="NORM",
        bounds=Bounds(float, 0, checks.FLOAT_MAX, lo_open=True),
    )
    # --- timm-style trainer options (issue 10): EMA warm-up, mixup/cutmix, accumulation ---
    ema_warmup: bool = knob(
        True, "warm the EMA decay up as timm's ModelEmaV3: min(decay, 1 - step^(-2/3))"
    )
    mixup: float = knob(
        0.0,
        "mixup α: mix image pairs, λ ~ Beta(α, α) (Zhang et al. 2017); 0 = off",
        metavar="ALPHA",
        bounds=Bounds(float, 0, checks.FLOAT_MAX, example=", e.g. 0.8"),
    )
    cutmix: float = knob(
        0.0,
        "cutmix α: paste a box of area 1-λ from the pair (Yun et al. 2019); 0 = off",
        metavar="ALPHA",
        bounds=Bounds(float, 0, checks.FLOAT_MAX, example=", e.g. 1.0"),
    )
    mix_prob: float = knob(
        1.0,
        "probability that a batch is mixed (with --mixup/--cutmix)",
        metavar="P",
        bounds=Bounds(float, 0, 1),
    )
    mix_switch_prob: float = knob(
        0.5,
        "with both --mixup and --cutmix: probability a mixed batch uses cutmix",
        metavar="P",
        bounds=Bounds(float, 0, 1),
    )
    accum_steps: int = knob(
        1,
        "gradient accumulation: each step's --batch-size as K micro-batches (BN sees each)",
        metavar="K",
        bounds=Bounds(int, 1, checks.MAX_BATCH),
    )
    # system
    device: str = knob("auto", "auto (default: cuda if available), cpu, cuda or cuda:N")
    precision: str = knob(
        "auto",
        "auto (bf16 on CUDA and where the CPU runs it natively and faster, else fp32), "
        "fp32 or bf16",
    )
    channels_last: bool | None = knob(
        None, "NHWC activations (default: on; measured faster on CPU too)"
    )
    compile: bool | None = knob(None, "torch.compile the model (default: on for CUDA only)")
    cuda_graphs: bool | None = knob(None, "CUDA graphs when compiling (default: on for CUDA)")
    sync_bn: bool = knob(False, "synchronise BatchNorm statistics across torchrun ranks")
    seed: int = knob(
        0,
        "seed of weights, data order and augmentation",
        metavar="N",
        bounds=Bounds(int, 0, checks.MAX_SEED, hi_open=True),
    )
    deterministic: bool = knob(False, "deterministic kernels: bit-identical resume on CPU")
    threads: int | None = knob(
        None,
        "CPU threads (default: the usable cores others leave free, saved in config.json)",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_THREADS),
    )
    detect_anomaly: bool = knob(False, "autograd anomaly detection (slow; debugging)")
    # output
    out: str | None = knob(
        None, "run folder (default runs/<model>-<dataset>-s<seed>)", metavar="DIR"
    )
    eval_every: int = knob(
        1,
        "epochs between evaluations (the last epoch is always evaluated)",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_EPOCHS),
    )
    eval_batch_size: int = knob(
        1024,
        "batch size of evaluation passes",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_BATCH),
    )
    checkpoint_every_steps: int | None = knob(
        None,
        "also checkpoint mid-epoch every N steps",
        metavar="N",
        bounds=Bounds(int, 1, checks.MAX_STEPS),
    )
    snapshot_steps: list[int] = knob(
        [],
        "keep the weights at these steps, e.g. 0,50,100 (checkpoints/snapshot-N.safetensors)",
        bounds=Bounds(int, 0, checks.MAX_STEPS, many=True),
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


def _check_types(config: TrainConfig) -> None:
    for name, hint in typing.get_type_hints(TrainConfig).items():
        setattr(config, name, checks.conform(name, getattr(config, name), hint))


def _check_values(c: TrainConfig) -> None:
    """Range checks; each error names the field and the fix in one line.

    Every numeric field is checked against its ``bounds`` (:mod:`reslab.checks`: finite, in
    range), then the rules that relate fields, then the model the fields name, from its
    layout alone: nothing is built, so a net too deep or too wide is refused in milliseconds.
    """
    fix = " (set {flag} or {name} = ... in the config file)"
    checks.check_names(dataclasses.asdict(c), PATH_FIELDS)
    for f in dataclasses.fields(TrainConfig):
        bounds, value = f.metadata["bounds"], getattr(c, f.name)
        if bounds is not None and value is not None:
            try:
                bounds.check(f.name, value)
            except ConfigError as exc:
                raise ConfigError(
                    str(exc) + fix.format(flag=flag_name(f.name), name=f.name)
                ) from None

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(
                f"{name} must be {what}, got {shown(getattr(c, name))}"
                + fix.format(flag=flag_name(name), name=name)
            )

    need(not c.nesterov or c.momentum > 0, "nesterov", "off when momentum is 0")
    need(c.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
    need(
        c.milestones == sorted(c.milestones),
        "milestones",
        "increasing fractions of the total steps in (0, 1), e.g. [0.5, 0.75]",
    )
    need(
        c.snapshot_steps == sorted(set(c.snapshot_steps)),
        "snapshot_steps",
        "increasing step numbers, 0 or more, e.g. [0, 50, 100]",
    )
    need(c.augment is None or c.augment in AUGMENTS, "augment", f"one of {', '.join(AUGMENTS)}")
    need(c.shortcut is None or c.shortcut.upper() in ("A", "B", "C"), "shortcut", "A, B or C")
    need(
        c.device in DEVICES or re.fullmatch(r"cuda:\d{1,4}", c.device) is not None,
        "device",
        "auto, cpu, cuda or cuda:N",
    )
    need(c.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(c.recipe is None or c.recipe in RECIPES, "recipe", f"one of {', '.join(RECIPES)}")
    _check_trainer_options(c, need)
    _check_model(c)


def _check_trainer_options(c: TrainConfig, need: Callable[[bool, str, str], None]) -> None:
    """Issue 10's trainer options (EMA warm-up, mixup/cutmix, accumulation), kept apart; their
    ranges are their fields' bounds."""
    need(
        c.batch_size % c.accum_steps == 0,
        "accum_steps",
        f"a divisor of --batch-size {c.batch_size} (micro-batches of batch_size / K)",
    )
    need(
        c.accum_steps == 1 or not c.cuda_graphs,
        "cuda_graphs",
        "off with --accum-steps > 1 (CUDA graphs overwrite accumulated gradients, "
        "pytorch/pytorch#169545; the default turns them off)",
    )


def _check_model(c: TrainConfig) -> None:
    """The net the config names, checked by the model registry without building it."""
    model_layout(c.model, **model_options(c))


def model_options(c: TrainConfig) -> dict[str, Any]:
    """The model options the config sets: those not at their flag's default, in the record's
    order (a weights file's header records them so)."""
    values = {name: getattr(c, name) for name in MODEL_FLAGS}
    return {k: v for k, v in values.items() if v != MODEL_FLAGS[k][0]}


# The text fields that are paths (at most checks.MAX_TEXT); every other one is a name.
PATH_FIELDS = ("data_dir", "out")


def check_threads(threads: int | None) -> None:
    """A new run's (or a resume's) ``threads``: at most :func:`reslab.checks.max_threads`.

    The field's own bound is machine-independent, so a run saved on a bigger machine still
    loads here; what this machine runs is bounded by its own cores.
    """
    if threads is not None:
        try:
            NEW_THREADS.check("threads", threads)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (this machine's; set --threads N or leave it out)") from None


NEW_THREADS = Bounds(int, 1, checks.max_threads)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The field values in a TOML file (or a run's ``config.json``), checked key by key.

    Keys may use dashes or underscores (``batch-size`` = ``batch_size``). Unknown keys and
    values of the wrong type raise :class:`ConfigError` naming them.
    """
    path = Path(path)
    where = f"config file {checks.shown_path(path)}"
    text = checks.read_config_text(path)  # bounded size, UTF-8, no BOM, a file
    raw = checks.parse_config_text(text, "json" if path.suffix == ".json" else "toml", where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a table of settings")
    return check_settings(raw, f"config file {path}", where=f" (in {path})")


def drop_unfit_threads(values: dict[str, Any], path: str | Path) -> str | None:
    """Leave out a run's recorded ``threads`` that this machine cannot start a run with.

    A run's config.json records the count reslab chose for it (``threads`` absent from
    ``_meta.explicit``: the default, read from the machine and its load). Rerun on a smaller
    machine, that count may exceed :func:`reslab.checks.max_threads`; it is then dropped, so
    the rerun picks its own, and the returned line says so. A count the user set is kept
    (and refused by :func:`resolve` if it is too large, as any ``--threads`` is).
    """
    threads = values.get("threads")
    path = Path(path)
    if threads is None or threads <= checks.max_threads() or path.suffix != ".json":
        return None  # a TOML file is the user's own: its threads are theirs
    try:
        raw = checks.parse_config_text(checks.read_config_text(path), "json", str(path))
        explicit = raw["_meta"]["explicit"]
    except (ConfigError, KeyError, TypeError):
        return None
    if not isinstance(explicit, list) or "threads" in explicit:
        return None
    del values["threads"]
    return (
        f"{checks.shown_path(path)} records {threads} threads, which reslab chose on the "
        f"machine that ran it; this one allows {checks.max_threads()}, so this run picks its "
        "own (--threads N sets it)"
    )


def check_settings(raw: Mapping[Any, Any], source: str, where: str = "") -> dict[str, Any]:
    """``raw`` settings (dashes or underscores, ``_meta`` ignored) checked key by key."""
    values = {str(k).replace("-", "_"): v for k, v in raw.items() if k != "_meta"}
    unknown = sorted(k for k in values if k not in FIELDS)
    if unknown:
        names = ", ".join(shown(k) if len(k) > 40 or not k.isidentifier() else k for k in unknown)
        raise ConfigError(
            f"{source}: unknown key {checks.one_line(names, 200)}; valid keys are the "
            "`reslab train` flags without dashes, e.g. batch_size, lr, epochs"
        )
    hints = typing.get_type_hints(TrainConfig)
    return {k: checks.conform(f"{k}{where}", v, hints[k]) for k, v in values.items()}


def resolve(explicit: Mapping[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from the values the user set: defaults < recipe < ``explicit``.

    ``explicit`` holds what the user asked for (TOML file merged with command-line flags, the
    flags winning). The recipe is ``explicit["recipe"]`` or the dataset's default
    (:func:`reslab.train.recipes.default_recipe`). An explicit ``epochs`` without an explicit
    ``steps`` drops the recipe's ``steps``, so ``--epochs`` always does what it says.
    """
    explicit = dict(explicit or {})
    unknown = sorted(str(k) for k in explicit if k not in FIELDS)
    if unknown:
        names = ", ".join(shown(k) for k in unknown)
        raise ConfigError(f"unknown setting {checks.one_line(names, 200)}")
    # types first: the recipe lookup below uses dataset, model, recipe
    hints = typing.get_type_hints(TrainConfig)
    explicit = {k: checks.conform(k, v, hints[k]) for k, v in explicit.items()}
    checks.check_names(explicit, PATH_FIELDS)  # before the recipe lookup reads model, dataset
    check_threads(explicit.get("threads"))
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
