"""What a study runs: :class:`StudyConfig` (the user's settings) and :class:`RunSpec` (one run).

airbench's rule made literal: a run is a function from (config, seed) to metrics. A study plans
its runs as :class:`RunSpec` values, and each becomes one ordinary ``reslab train`` run folder.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from reslab import checks
from reslab.checks import Bounds, shown
from reslab.errors import ConfigError
from reslab.experiments.cluster import CLUSTERS
from reslab.experiments.registry import Flag, Study, get_study, names
from reslab.models import cifar_model_name
from reslab.train.config import PRECISIONS, TrainConfig

__all__ = ["ALWAYS", "SETTINGS", "VARIANTS", "RunSpec", "StudyConfig"]

# The default of a setting whose default is the study's own (Study.depths, Study.defaults):
# filled in by StudyConfig.__post_init__, so the field's type holds after construction.
_STUDYS: Any = None

#: The shortcuts study's variants: the plain twin and He et al. 2015's options A, B, C (§4.1).
VARIANTS = ("plain", "A", "B", "C")


@dataclass
class StudyConfig:
    """One study: which nets to train, how, and where to save them."""

    experiment: str = "degradation"  # a registered study: reslab.experiments.list_studies()
    dataset: str = "digits"  # a reslab.data dataset; digits is embedded and offline
    depths: tuple[int, ...] = _STUDYS  # CIFAR-family depths, 6n+2
    families: tuple[str, ...] = ("plain", "residual")  # which twins to train
    shortcut: str = "A"  # shortcut option of the residual nets (He et al. 2015 §4.2: A)
    variants: tuple[str, ...] = VARIANTS  # shortcuts study: plain and options to compare
    seeds: tuple[int, ...] = _STUDYS  # one run per seed; tables give mean ± std
    recipe: str | None = None  # trainer recipe; None picks the dataset's default
    epochs: int | None = None  # override the recipe's epochs
    steps: int | None = None  # override with a number of iterations (paper: 64k)
    batch_size: int | None = None  # override the recipe's batch size
    lr: float | None = None  # override the recipe's peak learning rate
    width: float = 1.0  # channel multiplier of every net
    # The runs' arithmetic: auto | fp32 | bf16; auto is the trainer's (bf16 on CUDA and on CPUs
    # that run bf16 natively and measure it faster, else fp32), resolved by each run.
    precision: str = "auto"
    data_dir: str | None = None  # where datasets live (default ~/.cache/reslab)
    device: str = "auto"  # auto | cpu | cuda
    jobs: int | None = None  # parallel runs; None: one per GPU, or one per CPU core
    cluster: str = "local"  # local: a worker pool here; ray: Ray tasks (--ray-address)
    ray_address: str | None = None  # Ray cluster address; None: RAY_ADDRESS, else local Ray
    # Train runs of one shape and recipe as one packed net (reslab.train.fit_pack); None: on
    # CUDA only (on the project's 2-core CPU a pack's step measured no faster than separate
    # steps: docs/PERFORMANCE.md, "Packed twins").
    pack: bool | None = None
    probe_batch: int = 256  # images the probes look at
    probe_steps: tuple[int, ...] = _STUDYS  # gradient flow also at these steps (0 = at init)
    tolerance: float = 1.0  # points of training error within which two nets "train as well"
    out: str = _STUDYS  # the study folder; None: runs/<experiment>
    options: dict[str, Any] = field(default_factory=dict)  # a study's own flags' values

    def __post_init__(self) -> None:
        self.experiment = checks.conform("experiment", self.experiment, str)
        study = get_study(self.experiment)  # an unknown name is a one-line ConfigError
        _apply_defaults(self, study)
        _check_types_and_bounds(self, study)
        # Repeated depths or seeds would plan the same run twice.
        self.depths = tuple(dict.fromkeys(self.depths))
        self.seeds = tuple(dict.fromkeys(self.seeds))
        self.families = tuple(self.families)
        self.probe_steps = tuple(sorted(set(self.probe_steps)))
        self.variants = tuple(v if v == "plain" else v.upper() for v in self.variants)
        self.shortcut = self.shortcut.upper()
        if not self.depths:
            raise ConfigError("--depths needs at least one depth, e.g. --depths 20,56")
        if study.one_depth and len(self.depths) > 1:
            raise ConfigError(
                f"the {study.name} study takes nets of one depth, got depths "
                f"{','.join(map(str, self.depths))}: give one, e.g. --depth {max(self.depths)}"
            )
        study.check(self)
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1")
        for family in self.families:
            if family not in ("plain", "residual"):
                raise ConfigError(f"family {shown(family)} is not one of plain, residual")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError(f"variant {shown(variant)} is not one of {', '.join(VARIANTS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {shown(self.precision)}"
            )
        if self.cluster not in CLUSTERS:
            raise ConfigError(
                f"--cluster must be one of {', '.join(CLUSTERS)}, got {shown(self.cluster)}"
            )
        for depth in self.depths:
            cifar_model_name(depth, plain=False)  # validates 6n+2 with a clear error

    def to_json(self) -> dict[str, Any]:
        """The settings as results.json's ``config``: every field, a study's options flat."""
        settings = dataclasses.asdict(self)
        options = settings.pop("options")
        return {**settings, **options}


def _apply_defaults(config: StudyConfig, study: Study) -> None:
    """Fill what the user left out with the study's defaults, however the config was made
    (flags or Python): its depths, seeds, folder and other settings (:attr:`Study.defaults`),
    and every one of its own flags' values (:attr:`Study.flags`, parsed from their defaults)."""
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(StudyConfig)}
    defaults = {
        "depths": study.depths,
        "seeds": study.seeds,
        "probe_steps": (0,),
        "out": f"runs/{study.name}",
        **study.defaults,
    }
    for name, value in defaults.items():
        if given.get(name) is None:
            setattr(config, name, value)
    if isinstance(config.options, dict):
        for flag in study.flags:
            if config.options.get(flag.name) is None and flag.name not in given:
                config.options[flag.name] = flag.parsed_default()


def _train_bounds(name: str) -> Bounds:
    bounds = next(f for f in dataclasses.fields(TrainConfig) if f.name == name).metadata["bounds"]
    assert isinstance(bounds, Bounds)
    return bounds


#: The bounds of StudyConfig's numbers (reslab.checks); the trainer's settings share the
#: trainer's own, so a study refuses what ``reslab train`` would, before anything is written.
BOUNDS: dict[str, Bounds] = {
    "depths": Bounds(int, 1, checks.MAX_DEPTH, many=True),
    "seeds": Bounds(int, 0, checks.MAX_SEED, hi_open=True, many=True),
    **{name: _train_bounds(name) for name in ("epochs", "steps", "batch_size", "lr", "width")},
    "jobs": Bounds(int, 1, checks.max_threads),  # worker processes: as many as threads
    "probe_batch": Bounds(int, 1, checks.MAX_BATCH),
    "probe_steps": Bounds(int, 0, checks.MAX_STEPS, many=True),
    "tolerance": Bounds(float, 0, 100),  # percentage points
}
_OVERRIDES = (
    ("epochs", "override the recipe's epochs"),
    ("steps", "override with a number of iterations"),
    ("batch_size", "override the recipe's batch size"),
    ("lr", "override the recipe's peak learning rate"),
)


#: The common settings' flags, declared once: every study takes those of ALWAYS and those its
#: :attr:`Study.takes` names, with its own defaults (:attr:`Study.defaults`).
SETTINGS: dict[str, Flag] = {
    flag.name: flag
    for flag in (
        Flag("--dataset", None, "dataset (digits is embedded and offline)"),
        Flag("--data-dir", None, "where datasets live (default ~/.cache/reslab)"),
        Flag("--depths", None, "CIFAR-family depths 6n+2, comma-separated", BOUNDS["depths"]),
        Flag("--seeds", None, "seeds, comma-separated", BOUNDS["seeds"]),
        Flag("--shortcut", None, "shortcut option of the residual nets: A|B|C"),
        Flag("--variants", None, "variants to compare, from plain,A,B,C", names),
        Flag("--probe-steps", None, "gradient flow also at these training steps, 0 = at init",
             BOUNDS["probe_steps"]),
        Flag("--probe-batch", None, "images the probes look at", BOUNDS["probe_batch"]),
        Flag("--recipe", None, "trainer recipe (default: the dataset's)"),
        *(Flag(f"--{n.replace('_', '-')}", None, h, BOUNDS[n]) for n, h in _OVERRIDES),
        Flag("--width", None, "channel multiplier", BOUNDS["width"]),
        Flag("--precision", None, "auto (bf16 where the device runs it natively and faster, "
             "else fp32) | fp32 | bf16"),
        Flag("--device", None, "auto | cpu | cuda"),
        Flag("--jobs", None, "parallel runs (default: one per CPU core, or one per GPU)",
             BOUNDS["jobs"]),
        Flag("--cluster", None, "local (a worker pool here) | ray (one Ray task a run)"),
        Flag("--ray-address", None, "Ray cluster address (default: RAY_ADDRESS, else local Ray)"),
        Flag("--out", None, "study folder"),
    )
}  # fmt: skip
#: The settings every study takes.
ALWAYS = ("dataset", "data_dir", "depths", "seeds", "device", "jobs", "out")


def _check_types_and_bounds(config: StudyConfig, study: Study) -> None:
    """Every field's type (:func:`reslab.checks.conform`), then its bounds, then the study's
    own flags' bounds on ``options``: at the edge, whether the values came from flags or
    Python."""
    for name, hint in typing.get_type_hints(StudyConfig).items():
        flag = "--" + name.replace("_", "-")
        value = checks.conform(flag, getattr(config, name), hint)
        if name in BOUNDS and value is not None:
            value = BOUNDS[name].check(flag, value)
        setattr(config, name, value)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "options"}
    checks.check_names(settings, ("data_dir", "out"), prefix="--")
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    for option in study.flags:
        value = getattr(config, option.name) if option.name in fields else None
        if option.name not in fields:
            value = config.options.get(option.name)
        if value is None:
            continue
        if option.bounds is not None:
            option.bounds.check(option.flag, value)
        elif isinstance(value, str):
            checks.conform(option.flag, value, str)
        elif isinstance(value, list | tuple):
            checks.conform(option.flag, value, tuple[str, ...])


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study."""

    name: str  # run folder name inside the study's runs/
    model: str  # registry name
    family: str  # plain | residual
    depth: int
    shortcut: str | None  # A | B | C, None for plain
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)  # TrainConfig fields
