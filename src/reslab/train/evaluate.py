"""Evaluation: one function for the clean training error, the held-out errors and ``reslab eval``.

:func:`evaluate` scores a model in eval mode without augmentation (top-1 error, mean loss and the
confusion matrix); :func:`eval_run` is ``reslab eval``: a weights file on a dataset split, fed
the inputs it was trained on (:func:`normalization_for`: ``--normalize``, else the file's
header, else the dataset's statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.checks import input_path
from reslab.data import Dataset, eval_batches, load_dataset
from reslab.errors import CheckpointError, ConfigError
from reslab.train.run_folder import run_config_near
from reslab.train.runtime import autocast_context, pick_device
from reslab.weights import (
    IMAGENET,
    Normalization,
    build_for_weights,
    normalization_problem,
    read_model_config,
    read_normalization,
)

__all__ = [
    "EvalResult",
    "dataset_normalization",
    "eval_run",
    "evaluate",
    "model_for_weights",
    "normalization_for",
    "parse_normalize",
]

# --normalize's values, for the help of `reslab eval` and of the studies' --weights.
NORMALIZE_CHOICES = (
    "imagenet, dataset (its own statistics) or MEAN,STD (one value each, or one per channel: "
    "m1,m2,m3,s1,s2,s3); default: the file's header, else dataset"
)


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


def eval_run(
    weights: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 1024,
    normalize: str | None = None,
) -> dict[str, Any]:
    """Evaluate a weights file on a dataset split: ``reslab eval``.

    Without ``model`` the net is rebuilt from the file's header (:func:`reslab.load_model`).
    Without ``dataset``, a file inside a run folder uses the run's dataset, else ``digits``.
    The inputs are normalised as :func:`normalization_for` says (``normalize`` is
    ``--normalize``). Returns error, loss, per-class error, the confusion matrix and the
    normalisation used as plain JSON values.
    """
    weights = input_path(weights, "weights file", error=CheckpointError)
    run_config = run_config_near(weights)
    if dataset is None:
        dataset = str(run_config.get("dataset", "digits")) if run_config else "digits"
    if split not in ("test", "train"):
        raise ConfigError(f"split must be test or train, got {split!r}")
    dev = pick_device(device, local_rank=0)
    ds = load_dataset(dataset, data_dir=data_dir or (run_config or {}).get("data_dir"))
    net = model_for_weights(weights, model, ds)
    norm = normalization_for(weights, normalize, ds)
    net.to(dev)
    images = ds.test_images if split == "test" else ds.train_images
    labels = ds.test_labels if split == "test" else ds.train_labels
    result = evaluate(
        net,
        images,
        labels,
        mean=norm.mean,
        std=norm.std,
        num_classes=ds.num_classes,
        batch_size=batch_size,
        device=dev,
    )
    return {
        "weights": str(weights),
        "model": getattr(net, "reslab_config", {}).get("name", model),
        "dataset": ds.name,
        "split": split,
        "normalization": norm.to_json(),
        "n": result.n,
        "error": result.error,
        "loss": result.loss,
        "classes": list(ds.classes),
        "per_class_error": result.per_class_error(),
        "confusion": result.confusion.tolist(),
    }


def model_for_weights(weights: Path, name: str | None, ds: Dataset) -> nn.Module:
    """The net in ``weights``, built from its header or as ``name``, sized for ``ds``.

    Imported checkpoints without a header need ``name``; a net whose classifier does not fit
    ``ds`` is refused in one line.
    """
    header: dict[str, Any] = {}
    if weights.suffix == ".safetensors":
        header = read_model_config(weights) or {}  # CheckpointError if the entry is corrupt
    if name is None and not header:
        raise ConfigError(
            f"{weights} carries no model config; pass --model NAME (e.g. --model resnet20)"
        )
    # build_for_weights compares the file's tensors with the net's layout before building it
    if name is None or header.get("name") == name:
        kwargs = {k: v for k, v in header.items() if k != "name"}
        net = build_for_weights(weights, name or header["name"], **kwargs)
    else:
        net = build_for_weights(
            weights, name, num_classes=ds.num_classes, in_channels=ds.in_channels
        )
    out_features = getattr(getattr(net, "fc", None), "out_features", ds.num_classes)
    if out_features != ds.num_classes:
        raise ConfigError(
            f"{weights} has {out_features} outputs but {ds.name} has {ds.num_classes} classes; "
            "pass the dataset it was trained on with --dataset"
        )
    return net


# --- which normalisation the weights expect ------------------------------------------------


def dataset_normalization(ds: Dataset) -> Normalization:
    """``ds``'s own train-split statistics, named after it: what ``reslab train`` feeds a net."""
    return Normalization.of(ds.name, ds.mean, ds.std)


def parse_normalize(text: str, ds: Dataset) -> Normalization:
    """``--normalize`` for ``ds``: ``imagenet``, ``dataset`` or ``MEAN,STD``.

    ``MEAN,STD`` is two numbers (one mean and one std for every channel) or ``2 × channels``
    numbers, the means first (``0.49,0.48,0.45,0.25,0.24,0.26``), in [0, 1] pixel units.
    Refused in one line: an unknown word, a wrong count, a value that is not finite, a std
    that is not positive, a mean outside [0, 1], or ImageNet's three channels for a dataset
    with another number.
    """
    word = text.strip().lower()
    channels = ds.in_channels
    where = f"--normalize {text!r}"
    if word == "dataset":
        return dataset_normalization(ds)
    if word == "imagenet":
        if channels != IMAGENET.channels:
            raise ConfigError(
                f"{where}: ImageNet's statistics are for 3 channels, {ds.name} has {channels}; "
                "pass MEAN,STD or dataset"
            )
        return IMAGENET
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"{where}: expected imagenet, dataset or MEAN,STD (numbers separated by commas)"
        ) from None
    if len(values) == 2:
        mean, std = [values[0]] * channels, [values[1]] * channels
    elif len(values) == 2 * channels:
        mean, std = values[:channels], values[channels:]
    else:
        raise ConfigError(
            f"{where}: {ds.name} has {channels} channel(s), so give 2 numbers (one mean, one "
            f"std) or {2 * channels} (the {channels} means, then the {channels} stds)"
        )
    problem = normalization_problem(mean, std)
    if problem is None and not all(0 <= m <= 1 for m in mean):
        problem = "means are in [0, 1] pixel units (divide 0-255 values by 255)"
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return Normalization.of("custom", mean, std)


def normalization_for(weights: Path, normalize: str | None, ds: Dataset) -> Normalization:
    """The inputs ``weights`` expect on ``ds``: ``normalize`` (``--normalize``) when given,
    else the file's header (:func:`reslab.weights.read_normalization`), else ``ds``'s own
    statistics (files from before the header entry, and imported checkpoints)."""
    if normalize is not None:
        return parse_normalize(normalize, ds)
    norm = read_normalization(weights)
    if norm is None:
        return dataset_normalization(ds)
    if norm.channels != ds.in_channels:
        raise ConfigError(
            f"{weights} was trained on {norm.channels}-channel inputs ({norm.name} statistics) "
            f"but {ds.name} has {ds.in_channels}; pass the dataset it was trained on"
        )
    return norm
