"""The :class:`Dataset` container and what every format module builds it with.

Every dataset loads into a :class:`Dataset`: the train and test splits as uint8 ``N×C×H×W`` CPU
tensors with int64 labels, the class names, per-channel mean/std of the train split, and the
augmentation that suits it. :func:`holdout` splits a validation set off the train split,
stratified by class; :func:`data_root` is the data folder (``data_dir``, else ``$RESLAB_DATA``,
else ``~/.cache/reslab``).

This module imports no format module: the formats (:mod:`.digits`, :mod:`.cifar`, :mod:`.idx`,
:mod:`.imagefolder`, :mod:`.synthetic`) build their :class:`Dataset` with :func:`_make_dataset`
and check labels with :func:`_check_labels`, and :mod:`.formats` maps each name to its format in
:func:`~reslab.data.formats.load_dataset`, so imports run one way: ``dataset`` ← formats ←
``formats``. Every problem the user can fix raises :class:`~reslab.errors.DataError` with one
line naming the file and what was expected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.loader import AUGMENTS
from reslab.errors import DataError

# ---------------------------------------------------------------------------------------------
# Dataset container


@dataclass(repr=False)
class Dataset:
    """Train and test splits as uint8 ``N×C×H×W`` CPU tensors with int64 labels.

    ``mean`` and ``std`` are per channel in [0, 1] pixel units, from the train split;
    ``augment`` is the :data:`AUGMENTS` kind the training loader should apply.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"

    def __post_init__(self) -> None:
        # Loaders validate user files before building a Dataset, so a failure here is a bug.
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{split}_images must be uint8 N×C×H×W, got {images.dtype}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(f"{split}_labels must be int64 of length {images.shape[0]}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError("train and test images differ in shape")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean/std need one value per channel")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Height of the (square) images."""
        return int(self.train_images.shape[2])

    def __repr__(self) -> str:
        c, h, w = self.train_images.shape[1:]
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"shape={c}×{h}×{w}, classes={self.num_classes}, augment={self.augment!r})"
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``N×C×H×W`` images, in [0, 1] units.

    Computed exactly from a 256-bin histogram per channel, so 50,000 CIFAR images need no
    float copy. A constant channel gets std 1 so normalising by it stays finite.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.numel() == 0:
        raise ValueError("channel_stats needs a non-empty uint8 N×C×H×W tensor")
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means: list[float] = []
    stds: list[float] = []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * levels).sum() / total
        var = (counts * (levels - mean) ** 2).sum() / total
        means.append(float(mean))
        std = math.sqrt(float(var))
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def holdout(ds: Dataset, n_val: int, seed: int = 0) -> Dataset:
    """Split ``n_val`` validation images off the train split, stratified by class.

    The result's train split is the rest, its *test* split is the held-out part, and its
    mean/std are recomputed from the new train split so validation images inform nothing.
    Deterministic in ``seed``: He et al. 2015 (Sec. 4.2) tune on a 45k/5k split of the CIFAR-10
    train set, i.e. ``holdout(cifar10, 5000, seed)``.
    """
    n = len(ds.train_labels)
    if not 0 < n_val < n:
        raise DataError(
            f"cannot hold out {n_val} validation images from {ds.name}: "
            f"need 0 < n_val < {n}, the size of its train split"
        )
    keep, held = _stratified_split(
        ds.train_labels.cpu().numpy(), n_val, np.random.RandomState(seed)
    )
    keep_t, held_t = torch.from_numpy(keep), torch.from_numpy(held)
    train_images = ds.train_images[keep_t]
    mean, std = channel_stats(train_images)
    return Dataset(
        name=ds.name,
        train_images=train_images,
        train_labels=ds.train_labels[keep_t],
        test_images=ds.train_images[held_t],
        test_labels=ds.train_labels[held_t],
        classes=list(ds.classes),
        mean=mean,
        std=std,
        augment=ds.augment,
    )


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$RESLAB_DATA``, else ``~/.cache/reslab``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("RESLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "reslab"


# ---------------------------------------------------------------------------------------------
# Helpers for the format modules


def _check_labels(labels: np.ndarray, num_classes: int, source: object) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{source}: label {int(labels[i])} at record {i} is outside 0..{num_classes - 1}; "
            "the file is corrupt or belongs to another dataset"
        )


def _make_dataset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    augment: str,
) -> Dataset:
    def tensor(array: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
        array = np.ascontiguousarray(array, dtype=dtype)
        # Arrays viewing a bytes object (np.frombuffer) are read-only; torch needs its own copy.
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    train_images = tensor(train[0], np.uint8)
    mean, std = channel_stats(train_images)
    return Dataset(
        name=name,
        train_images=train_images,
        train_labels=tensor(train[1], np.int64),
        test_images=tensor(test[0], np.uint8),
        test_labels=tensor(test[1], np.int64),
        classes=list(classes),
        mean=mean,
        std=std,
        augment=augment,
    )


def _stratified_split(
    labels: np.ndarray, n_holdout: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), each sorted, holding out ``n_holdout`` samples per class share.

    Each class gives ``n_holdout * count / N`` samples, rounded by largest remainder (ties to the
    lower class) so the total is exact. ``RandomState`` is used because numpy freezes its stream
    (NEP 19), so a split made today is the split made by any later numpy.
    """
    classes, counts = np.unique(labels, return_counts=True)
    total = int(labels.size)
    quota = counts * n_holdout // total
    remainder = counts * n_holdout % total
    order = np.argsort(-remainder, kind="stable")
    quota[order[: n_holdout - int(quota.sum())]] += 1
    held = [
        np.flatnonzero(labels == cls)[rng.permutation(int(count))[: int(q)]]
        for cls, count, q in zip(classes, counts, quota, strict=True)
    ]
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(total, dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx
