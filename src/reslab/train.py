"""Training and evaluation: one config dataclass, one loop, one run folder.

Read it top to bottom:

1. :class:`TrainConfig`, one field per knob, and :func:`resolve`, which layers
   defaults < recipe (:mod:`reslab.recipes`) < TOML file < command line.
2. :func:`lr_at`, the learning rate as a plain function of the step (nothing to save on resume).
3. :func:`evaluate`, the single evaluation used for the clean training error, the validation and
   test errors and ``reslab eval`` (:func:`eval_run`).
4. The run folder: a lock, atomic checkpoints whose commit point is ``checkpoints/last.json``,
   and ``metrics.jsonl`` / ``metrics.csv`` / ``result.json``.
5. :func:`fit`, the loop. The data stay on the device (:class:`reslab.data.DeviceLoader`), the
   per-step path has no per-sample Python and no host sync (running loss and error are summed on
   the device and read once per epoch), and a run killed at any point resumes to bit-identical
   weights on CPU with ``deterministic=True``.

Run folder::

    <out>/
      .lock                          fcntl lock held while a process trains here (pid inside)
      config.json                    resolved config + versions; `reslab train --config` reruns it
      metrics.jsonl, metrics.csv     one record per epoch (errors in percent)
      checkpoints/
        step-<N>.safetensors         model weights at step N (save_weights, atomic)
        step-<N>.optim.safetensors   momentum buffers (optim.<i>) and EMA weights (ema.<name>)
        last.json                    commit point: step, loader/RNG state, history, file hashes
        last.safetensors             hard link to the committed weights (convenience)
        last.optim.safetensors       hard link to the committed optimizer state
        best.safetensors             weights with the lowest validation/test error so far
      result.json                    written last, when the run has finished
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import sys
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.data import AUGMENTS, Dataset, DeviceLoader, eval_batches, holdout, load_dataset
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from reslab.models import count_params, create_model
from reslab.recipes import RECIPES, default_recipe, recipe_values
from reslab.weights import load_weights, read_model_config, read_state_dict, save_weights

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

try:  # POSIX only; elsewhere runs go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RECIPES",
    "EvalResult",
    "History",
    "TrainConfig",
    "eval_run",
    "evaluate",
    "fit",
    "load_config_file",
    "lr_at",
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
# Warm-up until error (He et al. 2015 §4.2) reads the training error of the last this-many
# steps: one host sync per window, and only while warming up.
WARMUP_CHECK_EVERY = 20
CHECKPOINT_FORMAT = 1


# --- 1. configuration --------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``config.json`` in the run folder holds one."""

    # model
    model: str = "resnet20"  # registry name, see `reslab models`
    width: float = 1.0  # channel multiplier (0.25 = a quarter of the paper's widths)
    shortcut: str | None = None  # A (zero-pad), B or C (projections); None = the model's default
    plain: bool | None = None  # strip the shortcuts (the plain twin); None = the model's default
    zero_init_residual: bool = False  # zero each block's last BN scale: blocks start as identity
    # data
    dataset: str = "digits"  # digits, cifar10, cifar100, mnist, fashion-mnist, imagefolder, ...
    data_dir: str | None = None  # data folder; None = $RESLAB_DATA or ~/.cache/reslab
    val_split: int = 0  # hold out this many train images for validation; 0 = use the test split
    augment: str | None = None  # cifar, flip or none; None = the dataset's default
    # optimisation
    recipe: str | None = None  # named defaults (reslab.recipes); None = chosen by dataset
    epochs: int = 30  # passes over the train split (ignored when steps is set)
    steps: int | None = None  # total iterations, overrides epochs (the paper's 64k)
    batch_size: int = 128  # GLOBAL batch; each of N ranks takes batch_size / N
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on every parameter, BN and biases included, as the paper did
    schedule: str = "cosine"  # multistep, cosine, onecycle or constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # multistep, x total
    gamma: float = 0.1  # multistep factor at each milestone
    warmup_steps: int = 0  # linear warm-up to lr (onecycle: the rising part; 0 = 25 %)
    warmup_until_error: float | None = None  # use warmup_lr until train error (%) drops below
    warmup_lr: float = 0.01  # learning rate during warmup_until_error
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    ema: float | None = None  # decay of an exponential moving average of weights used for eval
    grad_clip: float | None = None  # clip the global gradient norm to this
    # system
    device: str = "auto"  # auto (cuda if available), cpu, cuda or cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA and AMX CPUs, else fp32), fp32, bf16
    channels_last: bool | None = None  # NHWC activations; None = on (faster on CPU and CUDA)
    compile: bool | None = None  # torch.compile the model; None = on for CUDA, off on CPU
    cuda_graphs: bool | None = None  # CUDA graphs when compiling; None = on for CUDA
    sync_bn: bool = False  # synchronise BN statistics across ranks
    seed: int = 0  # weights, data order and augmentation
    deterministic: bool = False  # deterministic kernels (bit-identical resume on CPU)
    threads: int | None = None  # torch.set_num_threads; parallel study workers use 1
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow; debugging)
    # output
    out: str | None = None  # run folder; None = runs/<model>-<dataset>-s<seed>
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    eval_batch_size: int = 1024  # batch size of evaluation passes
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every N steps
    snapshot_steps: list[int] = field(default_factory=list)  # keep weights at these steps
    quiet: bool = False  # one plain line per epoch, no progress bar
    tensorboard: bool = False  # also log to TensorBoard (if installed) under <out>/tb

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    def run_dir(self) -> Path:
        """The run folder: ``out`` or ``runs/<model>-<dataset>-s<seed>``."""
        return Path(self.out or f"runs/{self.model}-{self.dataset}-s{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Resolve a TOML (or ``config.json``) file; ``overrides`` win over the file."""
        return resolve({**load_config_file(path), **overrides})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_values(c: TrainConfig) -> None:
    """Range checks; each error names the field and the fix in one line."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(
                f"{name} must be {what}, got {getattr(c, name)!r} (set {_flag(name)} or "
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
    raw.pop("_meta", None)  # versions and provenance, written by fit() into config.json
    values = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(k for k in values if k not in FIELDS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key {', '.join(unknown)}; valid keys are the "
            "`reslab train` flags without dashes, e.g. batch_size, lr, epochs"
        )
    hints = _field_types()
    return {k: _coerce(f"{k} (in {path})", v, hints[k]) for k, v in values.items()}


def resolve(explicit: Mapping[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from the values the user set: defaults < recipe < ``explicit``.

    ``explicit`` holds what the user asked for (TOML file merged with command-line flags, the
    flags winning). The recipe is ``explicit["recipe"]`` or the dataset's default
    (:func:`reslab.recipes.default_recipe`). An explicit ``epochs`` without an explicit
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


# --- 2. learning-rate schedule -----------------------------------------------------------------


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate for 0-based ``step`` of ``total_steps``: a pure function, so resuming needs
    no scheduler state.

    * a linear warm-up over ``warmup_steps`` reaches ``lr`` at step ``warmup_steps - 1``;
    * ``multistep``: ``lr * gamma**k`` after the k-th milestone (fractions of the total:
      the paper's 32k and 48k of 64k are ``[0.5, 0.75]``);
    * ``cosine``: half a cosine from ``lr`` to 0 over the steps after the warm-up;
    * ``onecycle``: linear up to ``lr`` (over ``warmup_steps``, or 25 % of the run), then
      linearly down to 0;
    * ``constant``: ``lr``.
    """
    base, warm = config.lr, config.warmup_steps
    if config.schedule == "onecycle":
        peak = warm or max(1, round(0.25 * total_steps))
        if step < peak:
            return base * (step + 1) / peak
        return base * max(0.0, (total_steps - step) / max(1, total_steps - peak))
    if step < warm:
        return base * (step + 1) / warm
    if config.schedule == "multistep":
        passed = sum(step >= round(m * total_steps) for m in config.milestones)
        return base * config.gamma**passed
    if config.schedule == "cosine":
        t = (step - warm) / max(1, total_steps - warm)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return base


# --- 3. evaluation -----------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Top-1 error of a model on a split."""

    error: float  # top-1 error, percent
    loss: float  # mean cross-entropy
    n: int  # images evaluated
    confusion: Tensor  # num_classes × num_classes counts; rows true class, columns predicted

    def per_class_error(self) -> list[float]:
        """Top-1 error per true class, percent (NaN for a class with no images)."""
        totals = self.confusion.sum(1).double()
        correct = self.confusion.diagonal().double()
        return [
            100.0 * (1 - c / t) if t > 0 else float("nan")
            for c, t in zip(correct.tolist(), totals.tolist(), strict=True)
        ]


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Top-1 error, mean loss and confusion matrix of ``model`` in eval mode, no augmentation.

    ``images`` are uint8 ``N×C×H×W`` (kept on the device when they already are). With
    ``world_size > 1`` each rank evaluates every ``world_size``-th image and the sums are
    all-reduced, so every rank returns the result for the whole split.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    k = num_classes or int(labels.max()) + 1
    if world_size > 1:
        images, labels = images[rank::world_size], labels[rank::world_size]
    confusion = torch.zeros(k * k, dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_context(dev, autocast_dtype):
            for x, y in eval_batches(images, labels, batch_size, mean, std, dev, channels_last):
                logits = model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                cell = y * k + logits.argmax(1)
                # index_put_ with accumulate has a deterministic kernel; bincount has none on CUDA
                confusion.index_put_((cell,), torch.ones_like(cell), accumulate=True)
    finally:
        model.train(was_training)
    if world_size > 1:
        torch.distributed.all_reduce(confusion)
        torch.distributed.all_reduce(loss_sum)
    matrix = confusion.view(k, k).cpu()
    n = int(matrix.sum())
    correct = int(matrix.diagonal().sum())
    return EvalResult(
        error=100.0 * (n - correct) / max(n, 1),
        loss=float(loss_sum) / max(n, 1),
        n=n,
        confusion=matrix,
    )


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def eval_run(
    weights: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Evaluate a weights file on a dataset split: ``reslab eval``.

    Without ``model`` the net is rebuilt from the file's header (:func:`reslab.load_model`).
    Without ``dataset``, a file inside a run folder uses the run's dataset, else ``digits``.
    Returns error, loss, per-class error and the confusion matrix as plain JSON values.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} does not exist")
    run_config = _run_config_near(weights)
    if dataset is None:
        dataset = str(run_config.get("dataset", "digits")) if run_config else "digits"
    if split not in ("test", "train"):
        raise ConfigError(f"split must be test or train, got {split!r}")
    dev = pick_device(device, local_rank=0)
    ds = load_dataset(dataset, data_dir=data_dir or (run_config or {}).get("data_dir"))
    net = _model_for_weights(weights, model, ds)
    net.to(dev)
    images = ds.test_images if split == "test" else ds.train_images
    labels = ds.test_labels if split == "test" else ds.train_labels
    result = evaluate(
        net,
        images,
        labels,
        mean=ds.mean,
        std=ds.std,
        num_classes=ds.num_classes,
        batch_size=batch_size,
        device=dev,
    )
    return {
        "weights": str(weights),
        "model": getattr(net, "reslab_config", {}).get("name", model),
        "dataset": ds.name,
        "split": split,
        "n": result.n,
        "error": result.error,
        "loss": result.loss,
        "classes": list(ds.classes),
        "per_class_error": result.per_class_error(),
        "confusion": result.confusion.tolist(),
    }


def _run_config_near(weights: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run folder a weights file sits in, if any."""
    for folder in (weights.parent, weights.parent.parent):
        candidate = folder / "config.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return data if isinstance(data, dict) else None
    return None


def _model_for_weights(weights: Path, name: str | None, ds: Dataset) -> nn.Module:
    header: dict[str, Any] = {}
    if weights.suffix == ".safetensors":
        header = read_model_config(weights) or {}  # CheckpointError if the entry is corrupt
    if name is None and not header:
        raise ConfigError(
            f"{weights} carries no model config; pass --model NAME (e.g. --model resnet20)"
        )
    if name is None or header.get("name") == name:
        kwargs = {k: v for k, v in header.items() if k != "name"}
        net = create_model(name or header["name"], **kwargs)
    else:
        net = create_model(name, num_classes=ds.num_classes, in_channels=ds.in_channels)
    load_weights(net, weights)
    out_features = getattr(getattr(net, "fc", None), "out_features", ds.num_classes)
    if out_features != ds.num_classes:
        raise ConfigError(
            f"{weights} has {out_features} outputs but {ds.name} has {ds.num_classes} classes; "
            "pass the dataset it was trained on with --dataset"
        )
    return net


# --- 4. run folder: lock, checkpoints, metrics --------------------------------------------------


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run>/.lock`` holding the owner's pid.

    The kernel drops the lock when the process dies (even by ``kill -9``), so a stale lock
    never blocks a resume.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # --out is a file, under a file, read-only, disk full...
            raise ReslabError(
                f"cannot use {self.run_dir} as a run folder: {exc.strerror or exc}; "
                "choose another --out"
            ) from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ReslabError(
                    f"run folder {self.run_dir} is in use by another process (pid {owner}); "
                    "wait for it or choose another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where links are refused)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(dst, src.read_bytes())


class RunFolder:
    """Reading and writing one run folder; only rank 0 writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self.config_path = path / "config.json"
        self.result_path = path / "result.json"
        self.last_json = self.ckpt_dir / "last.json"

    def has_run(self) -> bool:
        return any(p.exists() for p in (self.config_path, self.result_path, self.last_json))

    def write_config(self, config: TrainConfig, explicit: Sequence[str] | None) -> None:
        meta = {
            "reslab_version": _reslab_version(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": _now(),
            "explicit": sorted(explicit) if explicit is not None else None,
        }
        atomic_write_json(self.config_path, {**config.to_dict(), "_meta": meta})

    def read_config(self) -> TrainConfig:
        if not self.config_path.is_file():
            raise ReslabError(
                f"no run to resume in {self.path}: {self.config_path.name} is missing; "
                "start it without --resume"
            )
        return TrainConfig(**load_config_file(self.config_path))

    # checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(
        self,
        step: int,
        model: nn.Module,
        tensors: dict[str, Tensor],
        state: dict[str, Any],
    ) -> None:
        """Write step-stamped files, then ``last.json`` (the commit point), then the links.

        A crash before the commit leaves the previous checkpoint in force; after it, the new
        one. Stale step files are removed once the new checkpoint is committed.
        """
        weights = self.ckpt_dir / f"step-{step:09d}.safetensors"
        optim = self.ckpt_dir / f"step-{step:09d}.optim.safetensors"
        from safetensors.torch import save as st_save

        save_weights(model, weights, metadata={"step": str(step)})
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(optim, st_save(cpu, metadata={"step": str(step)}))
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in (weights, optim)}
        atomic_write_json(
            self.last_json,
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "weights": weights.name,
                "optim": optim.name,
                "files": files,
                **state,
            },
        )
        _link_atomic(weights, self.ckpt_dir / "last.safetensors")
        _link_atomic(optim, self.ckpt_dir / "last.optim.safetensors")
        for old in self.ckpt_dir.glob("step-*.safetensors"):
            if old.name not in files:
                old.unlink(missing_ok=True)

    def snapshot_path(self, step: int) -> Path:
        """Where the weights kept at ``step`` (``snapshot_steps``) go."""
        return self.ckpt_dir / f"snapshot-{step:09d}.safetensors"

    def load_checkpoint(
        self, *, repair: bool = True
    ) -> tuple[dict[str, Any], Path, dict[str, Tensor]] | None:
        """(state, weights path, optimizer tensors) of the committed checkpoint, or None.

        Every referenced file is checked against the size and SHA-256 recorded at commit.
        With ``repair`` (rank 0 only), stale ``last.*`` links and temporary files left by a
        crash are fixed.
        """
        if not self.last_json.is_file():
            if repair:  # killed during the first checkpoint: only temp files are left
                for tmp in self.ckpt_dir.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
            return None
        try:
            state = json.loads(self.last_json.read_text())
            weights = self.ckpt_dir / state["weights"]
            optim = self.ckpt_dir / state["optim"]
            files = state["files"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{self.last_json} is unreadable ({exc}); delete {self.ckpt_dir} to restart "
                "the run from scratch"
            ) from exc
        for path, alias in ((weights, "last.safetensors"), (optim, "last.optim.safetensors")):
            shown = f"{self.ckpt_dir / alias} (= {path.name})"
            if not path.is_file():
                raise CheckpointError(f"checkpoint file {shown} is missing")
            want = files[path.name]
            size = path.stat().st_size
            if size != want["size"] or _sha256(path) != want["sha256"]:
                raise CheckpointError(
                    f"checkpoint file {shown} is truncated or corrupt ({size} bytes, "
                    f"{want['size']} written, SHA-256 differs); restore it or delete "
                    f"{self.ckpt_dir} to restart the run"
                )
        tensors = read_state_dict(optim)
        if not repair:
            return state, weights, tensors
        # Repair the convenience links if a crash came between the commit and the link.
        for src, alias in ((weights, "last.safetensors"), (optim, "last.optim.safetensors")):
            dst = self.ckpt_dir / alias
            if not dst.exists() or not os.path.samefile(src, dst):
                _link_atomic(src, dst)
        for tmp in self.ckpt_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return state, weights, tensors

    # metrics ----------------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any], columns: Sequence[str]) -> None:
        try:
            with (self.path / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            csv_path = self.path / "metrics.csv"
            new = not csv_path.exists()
            with csv_path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(record)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # The epoch's checkpoint is committed already; a resume rewrites both files from it.
            raise ReslabError(
                f"cannot write the metrics in {self.path}: {os.strerror(exc.errno)}; the "
                "checkpoint is saved, free some space and resume"
            ) from exc

    def rewrite_metrics(self, records: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """Make the metrics files match the checkpoint's history (drops epochs run after it)."""
        atomic_write_text(
            self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.path / "metrics.csv", buf.getvalue())

    def read_records(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _reslab_version() -> str:
    from reslab import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# RNG states as JSON: torch's byte tensors as base64, numpy's and Python's as lists.
def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py_state = random.getstate()
    return {
        # Only the CPU generator: data order and augmentation are drawn there, and saving
        # every GPU's state would tie a checkpoint to the number of GPUs of the machine.
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    def tensor(text: str) -> Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --- distributed -------------------------------------------------------------------------------


@dataclass
class _Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, error: str | None) -> None:
        """Rank 0's error (or None) becomes every rank's, so no rank waits on a dead peer."""
        if self.enabled:
            box = [error]
            torch.distributed.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ReslabError(error)


def _init_distributed(config: TrainConfig) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} is the global batch and must divide evenly over "
            f"{world_size} ranks"
        )
    use_cuda = config.device.startswith("cuda") or (
        config.device == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank=rank, world_size=world_size, local_rank=local_rank)


def _param_checksum(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks when DDP kept them in step."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- 5. the training loop ----------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """How a run uses its device. The fast path is the default; each part has a flag to turn
    it off (``--no-channels-last``, ``--precision fp32``, ``--no-compile``, ``--no-cuda-graphs``).
    """

    channels_last: bool  # NHWC activations and weights
    compile: bool  # torch.compile the model
    cuda_graphs: bool  # compile with CUDA graphs (mode reduce-overhead)
    amp_dtype: torch.dtype | None  # autocast dtype, None for fp32


def _cpu_has_bf16_matmul() -> bool:
    """AMX tiles (Sapphire Rapids and later): oneDNN runs bf16 convolutions on them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def runtime(config: TrainConfig, device: torch.device) -> Runtime:
    """The settings ``config`` resolves to on ``device`` (``None`` fields pick the fast path).

    * channels_last: on everywhere; tensor-core convolutions want NHWC, and on this project's
      CPU it measured 1.14-1.21x faster too (docs/PERFORMANCE.md).
    * compile: on for CUDA; off on CPU, where it paid back for resnet20 after a ~19 s compile
      but made resnet56 slower.
    * CUDA graphs: on for compiled CUDA runs. A ResNet-56 step is ~600 kernel launches around
      ~0.1 ms of arithmetic, so replaying one captured graph removes the launch-bound time.
    * bf16 autocast: on CUDA devices that support it, and on CPUs with AMX tiles, where
      oneDNN's bf16 convolutions measured 2.6x faster for resnet20 at 32x32.
    """
    cuda = device.type == "cuda"
    use_compile = config.compile if config.compile is not None else cuda
    graphs = config.cuda_graphs if config.cuda_graphs is not None else True
    if config.precision == "auto":
        # Native bf16 tensor cores from compute capability 8.0 (Ampere); older cards emulate.
        bf16 = (
            torch.cuda.get_device_capability(device) >= (8, 0) if cuda else _cpu_has_bf16_matmul()
        )
    else:
        bf16 = config.precision == "bf16"
    return Runtime(
        channels_last=config.channels_last if config.channels_last is not None else True,
        compile=use_compile,
        cuda_graphs=graphs and cuda and use_compile,
        amp_dtype=torch.bfloat16 if bf16 else None,
    )


def compile_mode(cuda_graphs: bool) -> str:
    """torch.compile mode: CUDA graphs for launch-bound nets, else autotuned kernels."""
    return "reduce-overhead" if cuda_graphs else "max-autotune-no-cudagraphs"


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; one fused kernel on CUDA, multi-tensor (foreach) updates on CPU."""
    # Weight decay on every parameter, BN scales and biases included, as He et al. 2015 did.
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )


def restore_momentum(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor]) -> None:
    """Load the ``optim.<i>`` momentum buffers of a checkpoint into ``optimizer``.

    Saved buffers are contiguous; each gets its parameter's memory layout (channels_last) back,
    because the fused CUDA SGD kernel requires parameter, gradient and buffer to share strides.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        if key.startswith("optim."):
            p = params[int(key.split(".")[1])]
            optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(value)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast: contextlib.AbstractContextManager[Any],
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    cuda_graphs: bool = False,
) -> tuple[Tensor, Tensor]:
    """One SGD step; returns (loss, logits) as device tensors, with no host sync.

    Under CUDA graphs the outputs live in the graph's memory pool and are overwritten by the
    next replay: callers consume them (accumulate on the device) before the next step.
    """
    if cuda_graphs:
        # A new iteration starts here, so the graph pool may reuse the last step's outputs.
        torch.compiler.cudagraph_mark_step_begin()
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()
    return loss, logits


@dataclass
class History:
    """What :func:`fit` returns: the run folder, one record per epoch, and the final result."""

    run_dir: Path
    records: list[dict[str, Any]]
    final: dict[str, Any]


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N``; under torchrun, CUDA ranks use their local rank."""
    if name not in DEVICES and re.fullmatch(r"cuda:\d+", name) is None:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReslabError(
            f"--device {name} was asked for but CUDA is not available (no GPU or a CPU-only "
            "PyTorch build); use --device cpu"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        index = local_rank
    elif ":" in name:
        index = int(name.split(":")[1])
    else:  # the current device: a study worker sets it to its own GPU
        index = torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ReslabError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


class _EMA:
    """Exponential moving average of the weights (BN statistics copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._params: list[Tensor] = list(self.module.parameters())
        self._buffers: list[Tensor] = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # ema += (1 - decay) * (p - ema), all parameters in one foreach kernel
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], 1 - self.decay)
        for mine, theirs in zip(self._buffers, model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()


class _Running:
    """Sums of one epoch's training loss and errors, kept on the device: no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.errors = torch.zeros((), dtype=torch.int64, device=device)
        self.window_errors = torch.zeros((), dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # global step on device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.count = 0  # images this epoch (host int: known without a sync)
        self.window_count = 0

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        loss = loss.detach().float()
        wrong = (logits.argmax(1) != y).sum()
        self.loss += loss * y.shape[0]
        self.errors += wrong
        self.window_errors += wrong
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.step += 1
        self.count += y.shape[0]
        self.window_count += y.shape[0]

    def totals(self, dist: _Dist | None) -> tuple[float, int, int, int]:
        """(loss sum, errors, images, first non-finite step or -1): one sync.

        Summed over all ranks when ``dist`` is given (every rank must call it then); this
        rank's alone when it is None.
        """
        packed = torch.stack(
            [
                self.loss,
                self.errors.double(),
                torch.tensor(float(self.count), dtype=torch.float64, device=self.device),
            ]
        )
        bad = self.first_bad.clone()
        if dist is not None and dist.enabled:
            torch.distributed.all_reduce(packed)
            # -1 means none: reduce max over (step if bad else -1) misses earlier bad steps on
            # other ranks only by at most one step, as NaN gradients spread to every rank.
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        loss, errors, count = packed.tolist()
        return loss, int(errors), int(count), int(bad)

    def take_window(self, dist: _Dist) -> float:
        """Training error (%) over the steps since the last call, all ranks; resets the window."""
        packed = torch.stack(
            [
                self.window_errors.double(),
                torch.tensor(float(self.window_count), dtype=torch.float64, device=self.device),
            ]
        )
        if dist.enabled:
            torch.distributed.all_reduce(packed)
        errors, count = packed.tolist()
        self.window_errors.zero_()
        self.window_count = 0
        return 100.0 * errors / max(count, 1.0)

    def reset_epoch(self) -> None:
        self.loss.zero_()
        self.errors.zero_()
        self.count = 0

    def state(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "errors": int(self.errors),
            "count": self.count,
            "window_errors": int(self.window_errors),
            "window_count": self.window_count,
        }

    def load(self, state: dict[str, Any], step: int) -> None:
        self.loss.fill_(state["loss"])
        self.errors.fill_(state["errors"])
        self.count = int(state["count"])
        self.window_errors.fill_(state["window_errors"])
        self.window_count = int(state["window_count"])
        self.step.fill_(step)


class _Reporter:
    """Console output: a rich progress bar on a terminal, else one plain line per epoch."""

    def __init__(self, quiet: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        if not self.enabled or self.quiet or not sys.stderr.isatty():
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, stats="")

    @property
    def wants_stats(self) -> bool:
        return self.bar is not None

    def step(self, step: int, epoch: int, stats: str | None = None) -> None:
        if self.bar is not None:
            fields = {"stats": stats} if stats is not None else {}
            self.bar.update(self.task, completed=step, description=f"epoch {epoch}", **fields)

    def line(self, text: str, always: bool = False) -> None:
        if not self.enabled or (self.quiet and not always):
            return
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class NonFiniteLoss(ReslabError):
    """The training loss became NaN or inf; the message names the step and the lr."""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fit(
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    explicit: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> History:
    """Train a model as ``config`` says and return its :class:`History`.

    * ``fit(config)`` starts a new run in ``config.run_dir()``; a folder that already holds a
      run is refused (nothing is overwritten).
    * ``fit(config, resume=True)`` continues the run in that folder if there is one (its saved
      config must match ``config``), else starts it; a finished run is returned as it is.
    * ``fit(resume_from=run_dir)`` continues the run saved there, with its saved config;
      ``overrides`` may change only :data:`RESUME_OVERRIDABLE` fields.

    ``explicit`` names the fields the user set (recorded in ``config.json``). Under torchrun
    (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone writes files and prints.
    """
    if resume_from is not None:
        folder = RunFolder(Path(resume_from))
        saved = folder.read_config()
        changes = dict(overrides or {})
        bad = sorted(set(changes) - RESUME_OVERRIDABLE)
        if bad:
            raise ConfigError(
                f"--resume uses the run's saved config; {', '.join(map(_flag, bad))} cannot "
                "change on resume (start a new run with --config "
                f"{folder.config_path} --out NEW_FOLDER instead)"
            )
        config = dataclasses.replace(saved, **changes, out=str(folder.path))
        resume = True
    elif config is None:
        config = resolve({})
    elif resume:
        folder = RunFolder(config.run_dir())
        if folder.config_path.is_file():
            saved = folder.read_config()
            differ = [
                f.name
                for f in dataclasses.fields(TrainConfig)
                if f.name not in RESUME_OVERRIDABLE | {"out"}
                and getattr(saved, f.name) != getattr(config, f.name)
            ]
            if differ:
                raise ConfigError(
                    f"run folder {folder.path} holds a run with a different config "
                    f"({', '.join(differ)} differ); choose another --out"
                )
    if config.out is None:
        config = dataclasses.replace(config, out=str(config.run_dir()))
    result_path = RunFolder(config.run_dir()).result_path
    if resume and result_path.is_file():  # finished: nothing to do (studies skip such runs)
        folder = RunFolder(config.run_dir())
        final = json.loads(result_path.read_text())
        if not config.quiet and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"{folder.path} has finished already (test error {_fmt(final.get('test_error'))} %)"
            )
        return History(folder.path, folder.read_records(), final)
    dist = _init_distributed(config)
    # Process-wide torch settings that fit() changes, restored when it returns.
    torch_state = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_anomaly_enabled(),
    )
    backend_state = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        return _fit(config, dist, resume=resume, explicit=explicit)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(torch_state[0])
        torch.use_deterministic_algorithms(torch_state[1])
        torch.autograd.set_detect_anomaly(torch_state[2])
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = backend_state
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _fit(
    config: TrainConfig, dist: _Dist, *, resume: bool, explicit: Sequence[str] | None
) -> History:
    wall_start = time.perf_counter()
    report = _Reporter(config.quiet, enabled=dist.main)

    # -- environment -------------------------------------------------------------------------
    device = pick_device(config.device, dist.local_rank)
    cuda = device.type == "cuda"
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    torch.autograd.set_detect_anomaly(config.detect_anomaly)
    if not cuda:
        # Deep plain nets produce denormal activations and gradients, which x86 CPUs process
        # tens of times slower; flushing them to zero is invisible at fp32 training precision.
        torch.set_flush_denormal(True)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    fast = runtime(config, device)
    channels_last, use_compile = fast.channels_last, fast.compile
    cuda_graphs, amp_dtype = fast.cuda_graphs, fast.amp_dtype

    # -- data ----------------------------------------------------------------------------------
    full = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    # One fixed held-out split: every seed trains on the same images.
    ds = holdout(full, config.val_split, seed=0) if config.val_split else full
    eval_key = "val_error" if config.val_split else "test_error"
    if config.batch_size > len(ds.train_labels):
        n_train = len(ds.train_labels)
        raise ConfigError(
            f"--batch-size {config.batch_size} is more than the {n_train:,} training images of "
            f"{ds.name}; use --batch-size {n_train} or less"
        )
    loader = DeviceLoader(
        ds.train_images,
        ds.train_labels,
        batch_size=config.batch_size // dist.world_size,  # batch_size is the global batch
        mean=ds.mean,
        std=ds.std,
        device=device,
        augment=config.augment or ds.augment,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=channels_last,
    )
    eval_images = ds.test_images.to(device)
    eval_labels = ds.test_labels.to(device)
    steps_per_epoch = len(loader)
    total_steps = config.steps or config.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    # -- model, optimiser, EMA -----------------------------------------------------------------
    model_kwargs: dict[str, Any] = {"num_classes": ds.num_classes, "in_channels": ds.in_channels}
    if config.width != 1.0:
        model_kwargs["width"] = config.width
    for name in ("shortcut", "plain"):
        if getattr(config, name) is not None:
            model_kwargs[name] = getattr(config, name)
    if config.zero_init_residual:
        model_kwargs["zero_init_residual"] = True
    raw = create_model(config.model, **model_kwargs)
    if config.sync_bn and dist.enabled and not cuda:
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel")
    if config.sync_bn and dist.enabled:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw.to(device)
    if channels_last:
        raw.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(config, raw, device)
    ema = _EMA(raw, config.ema) if config.ema else None

    # -- run folder (rank 0 decides, every rank learns the verdict) ----------------------------
    folder = RunFolder(config.run_dir())
    lock = RunLock(folder.path)
    error: str | None = None
    if dist.main:
        try:
            lock.acquire()
            if folder.has_run() and not resume:
                raise ReslabError(
                    f"run folder {folder.path} already holds a run; pass --resume "
                    f"{folder.path} to continue it, or choose another --out"
                )
            elif not folder.config_path.is_file():
                folder.write_config(config, explicit)
        except ReslabError as exc:
            lock.release()
            error = str(exc)
        except BaseException:
            lock.release()
            raise
    dist.agree(error)

    try:
        return _train(
            config=config,
            dist=dist,
            report=report,
            folder=folder,
            device=device,
            ds=ds,
            full=full,
            eval_key=eval_key,
            loader=loader,
            eval_images=eval_images,
            eval_labels=eval_labels,
            total_steps=total_steps,
            num_epochs=num_epochs,
            raw=raw,
            optimizer=optimizer,
            ema=ema,
            channels_last=channels_last,
            use_compile=use_compile,
            cuda_graphs=cuda_graphs,
            amp_dtype=amp_dtype,
            wall_start=wall_start,
        )
    finally:
        report.close()
        lock.release()


def _train(
    *,
    config: TrainConfig,
    dist: _Dist,
    report: _Reporter,
    folder: RunFolder,
    device: torch.device,
    ds: Dataset,
    full: Dataset,
    eval_key: str,
    loader: DeviceLoader,
    eval_images: Tensor,
    eval_labels: Tensor,
    total_steps: int,
    num_epochs: int,
    raw: nn.Module,
    optimizer: torch.optim.SGD,
    ema: _EMA | None,
    channels_last: bool,
    use_compile: bool,
    cuda_graphs: bool,
    amp_dtype: torch.dtype | None,
    wall_start: float,
) -> History:
    columns = [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_error",
        "clean_train_error",
        eval_key,
        "images_per_s",
        "epoch_time",
        "wall_time",
    ]
    params = list(raw.parameters())
    running = _Running(device)
    step = 0
    warming = config.warmup_until_error is not None
    warmup_end: int | None = None
    best_error: float | None = None
    records: list[dict[str, Any]] = []
    wall_before = 0.0  # wall time of earlier sessions of this run

    # -- resume ----------------------------------------------------------------------------------
    checkpoint = folder.load_checkpoint(repair=dist.main)
    if checkpoint is not None:
        state, weights_path, tensors = checkpoint
        load_weights(raw, weights_path)
        restore_momentum(optimizer, tensors)
        if ema is not None:
            ema.module.load_state_dict(
                {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
            )
        loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        step = int(state["step"])
        warming, warmup_end = bool(state["warming"]), state["warmup_end"]
        best_error, records = state["best_error"], list(state["records"])
        wall_before = float(state["wall_time"])
        running.load(state["running"], step)
        if dist.main:
            folder.rewrite_metrics(records, columns)
            report.line(f"resuming {folder.path} at step {step} of {total_steps}")
    elif dist.main:
        # A run killed before its first checkpoint starts over; drop its partial metrics.
        for name in ("metrics.jsonl", "metrics.csv"):
            (folder.path / name).unlink(missing_ok=True)
    snapshots = set(config.snapshot_steps)

    def snapshot() -> None:
        """The weights at a chosen step, kept for probes (e.g. gradient flow over training).

        A resumed run replays the steps after its checkpoint deterministically on CPU and
        rewrites any snapshot among them.
        """
        if dist.main and step in snapshots:
            save_weights(raw, folder.snapshot_path(step), metadata={"step": str(step)})

    if step == 0:
        snapshot()

    # -- wrappers: compile, DDP --------------------------------------------------------------------
    model: nn.Module = raw
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if use_compile:
        # Runs of a study share this process: forget earlier models' graphs so the recompile
        # limit is not reached. Compiling the DDP wrapper keeps its comm/compute overlap.
        torch._dynamo.reset()
        model = typing.cast(nn.Module, torch.compile(model, mode=compile_mode(cuda_graphs)))
    # Evaluation runs eagerly: each eval batch shape (and eval-mode BN) would need its own
    # compiled graph, and evaluation is a small part of a run.
    eval_model = raw

    writer = _tensorboard(folder.path, config.tensorboard and dist.main, report)
    n_params = count_params(raw)
    report.line(
        f"{config.model} ({n_params:,} params) on {ds.name}: {total_steps} steps "
        f"({num_epochs} epochs of {len(loader)}), batch {config.batch_size}, "
        f"{dist.world_size} × {device}, {'bf16' if amp_dtype else 'fp32'}, "
        f"recipe {config.recipe or '-'} -> {folder.path}"
    )
    report.start(total_steps, step)

    def save_checkpoint(epoch_records: list[dict[str, Any]]) -> None:
        """Rank 0 writes the committed state; called only after a finite-loss check."""
        if not dist.main:
            return
        tensors: dict[str, Tensor] = {}
        for i, p in enumerate(params):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{i}"] = buf
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        folder.save_checkpoint(
            step,
            raw,
            tensors,
            {
                "epoch": loader.epoch,
                "loader": loader.state_dict(),
                "rng": _rng_state(),
                "warming": warming,
                "warmup_end": warmup_end,
                "best_error": best_error,
                "records": epoch_records,
                "running": running.state(),
                "wall_time": wall_before + time.perf_counter() - wall_start,
                "saved": _now(),
            },
        )

    def kept() -> str:
        last = (
            json.loads(folder.last_json.read_text())["step"] if folder.last_json.exists() else None
        )
        if last is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {last}) is kept in {folder.ckpt_dir}"

    def check_finite() -> tuple[float, int, int]:
        loss_sum, errors, count, bad = running.totals(dist)
        if bad >= 0:
            lr = config.warmup_lr if warming else lr_at(config, bad, total_steps)
            raise NonFiniteLoss(
                f"training loss became NaN/inf at step {bad} (lr {lr:.4g}); stopped, {kept()}; "
                "lower --lr, add --grad-clip or --warmup-steps"
            )
        return loss_sum, errors, count

    autocast = autocast_context(device, amp_dtype)
    start_epoch = loader.epoch
    lr = config.warmup_lr if warming else lr_at(config, step, total_steps)
    for epoch in range(start_epoch, num_epochs):
        if step >= total_steps:  # resumed from the checkpoint taken when training ended
            break
        # -- one epoch of training: no host sync inside ----------------------------------------
        loader.set_epoch(epoch)
        raw.train()
        epoch_start, images_this_session = time.perf_counter(), 0
        for x, y in loader:
            lr = config.warmup_lr if warming else lr_at(config, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                loss, logits = train_step(
                    model,
                    optimizer,
                    x,
                    y,
                    autocast,
                    config.label_smoothing,
                    config.grad_clip,
                    cuda_graphs=cuda_graphs,
                )
            except RuntimeError as exc:
                # --detect-anomaly's NaN report: autograd has printed the forward call above.
                if not (config.detect_anomaly and "returned nan values" in str(exc)):
                    raise
                raise NonFiniteLoss(
                    f"--detect-anomaly: {str(exc).rstrip('.')} at step {step} (lr {lr:.4g}); "
                    f"the forward call that made it is printed above; stopped, {kept()}"
                ) from None
            if ema is not None:
                ema.update(raw)
            running.add(loss, logits, y)
            step += 1
            images_this_session += y.shape[0] * dist.world_size
            snapshot()

            # He et al. 2015 §4.2: warm up at warmup_lr until the training error is below the
            # threshold; read every WARMUP_CHECK_EVERY steps (the only mid-epoch sync).
            if warming and step % WARMUP_CHECK_EVERY == 0:
                window_error = running.take_window(dist)
                assert config.warmup_until_error is not None
                if math.isfinite(window_error) and window_error < config.warmup_until_error:
                    warming, warmup_end = False, step
                    report.line(
                        f"step {step}: training error {window_error:.1f} % < "
                        f"{config.warmup_until_error:g} %, warm-up over, back to the schedule"
                    )
            if report.wants_stats and step % max(1, len(loader) // 10) == 0:
                loss_sum, errors, count, _ = running.totals(None)  # rank 0 only: local
                rate = images_this_session / max(time.perf_counter() - epoch_start, 1e-9)
                stats = (
                    f"loss {loss_sum / max(count, 1):.3f} err {100 * errors / max(count, 1):.1f}% "
                    f"{rate:,.0f} img/s lr {lr:.3g}"
                )
                report.step(step, epoch + 1, stats)
            else:
                report.step(step, epoch + 1)
            if step >= total_steps:
                break
            if (
                config.checkpoint_every_steps
                and step % config.checkpoint_every_steps == 0
                and loader.state_dict()["batch"] < len(loader)  # the epoch end saves anyway
            ):
                check_finite()
                save_checkpoint(records)

        # -- end of epoch: the one sync, evaluation, record, checkpoint --------------------------
        loss_sum, errors, count = check_finite()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - epoch_start
        last_epoch = epoch == num_epochs - 1
        clean = held = None
        if (epoch + 1) % config.eval_every == 0 or last_epoch:
            net = ema.module if ema is not None else eval_model
            _sync_buffers(raw, dist)
            common: dict[str, Any] = {
                "mean": ds.mean,
                "std": ds.std,
                "num_classes": ds.num_classes,
                "batch_size": config.eval_batch_size,
                "device": device,
                "channels_last": channels_last,
                "autocast_dtype": amp_dtype,
                "rank": dist.rank,
                "world_size": dist.world_size,
            }
            clean = evaluate(net, loader.images, loader.labels, **common).error
            held = evaluate(net, eval_images, eval_labels, **common).error
            if dist.main and (best_error is None or held < best_error):
                best_error = held
                save_weights(
                    raw if ema is None else ema.module, folder.ckpt_dir / "best.safetensors"
                )
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr,
            "train_loss": loss_sum / max(count, 1),
            "train_error": 100.0 * errors / max(count, 1),
            "clean_train_error": clean,
            eval_key: held,
            "images_per_s": images_this_session / max(epoch_time, 1e-9),
            "epoch_time": epoch_time,
            "wall_time": wall_before + time.perf_counter() - wall_start,
        }
        records.append(record)
        running.reset_epoch()
        save_checkpoint(records)
        if dist.main:
            folder.append_metrics(record, columns)
            if writer is not None:
                for key, value in record.items():
                    if key not in ("epoch", "step") and value is not None:
                        writer.add_scalar(key, value, step)
        report.line(
            f"epoch {epoch + 1}/{num_epochs} step {step} lr {lr:.4g} "
            f"loss {record['train_loss']:.4f} train err {_fmt(record['train_error'])} % "
            f"clean train err {_fmt(clean)} % {eval_key.replace('_error', '')} err "
            f"{_fmt(held)} % {record['images_per_s']:,.0f} img/s {epoch_time:.1f} s",
            always=True,
        )

    # -- finish: final errors, checksums, result.json (written last) -----------------------------
    final_record = records[-1]
    final: dict[str, Any] = {
        "status": "finished",
        "model": config.model,
        "dataset": ds.name,
        "params": count_params(raw),
        "epochs": len(records),
        "steps": step,
        "train_loss": final_record["train_loss"],
        "clean_train_error": final_record["clean_train_error"],
        eval_key: final_record[eval_key],
        "best_error": best_error,
        "warmup_end_step": warmup_end,
        "images_per_s": sum(r["images_per_s"] for r in records) / len(records),
        "wall_time": wall_before + time.perf_counter() - wall_start,
        "world_size": dist.world_size,
        "weights": "checkpoints/last.safetensors",
    }
    if config.val_split:
        net = ema.module if ema is not None else eval_model
        final["test_error"] = evaluate(
            net,
            full.test_images.to(device),
            full.test_labels.to(device),
            mean=ds.mean,
            std=ds.std,
            num_classes=ds.num_classes,
            batch_size=config.eval_batch_size,
            device=device,
            channels_last=channels_last,
            autocast_dtype=amp_dtype,
            rank=dist.rank,
            world_size=dist.world_size,
        ).error
    if ema is not None and dist.main:
        save_weights(ema.module, folder.ckpt_dir / "ema.safetensors")
        final["eval_weights"] = "checkpoints/ema.safetensors"
    checksum = _param_checksum(raw)
    if dist.enabled:
        sums: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(sums, checksum)
        final["rank_checksums"] = sums
    else:
        final["rank_checksums"] = [checksum]
    if dist.main:
        atomic_write_json(folder.result_path, final)
        if writer is not None:
            writer.close()
    report.close()
    report.line(
        f"finished {folder.path}: clean train error {_fmt(final['clean_train_error'])} %, "
        f"test error {_fmt(final.get('test_error'))} %, {final['wall_time']:.1f} s",
        always=True,
    )
    return History(folder.path, records, final)


def _sync_buffers(model: nn.Module, dist: _Dist) -> None:
    """Give every rank rank 0's BN statistics before evaluating (DDP does so at each forward)."""
    if dist.enabled:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def _tensorboard(path: Path, wanted: bool, report: _Reporter) -> Any:
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        report.line(
            "tensorboard is not installed (pip install 'reslab[tensorboard]'); "
            "logging to metrics.jsonl/csv only",
            always=True,
        )
        return None
    return SummaryWriter(log_dir=str(path / "tb"))
