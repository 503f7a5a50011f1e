"""The dataset names and :func:`load_dataset`, which hands each name to its format module.

:func:`load_dataset` knows

* ``digits``: the 1,797 8×8 UCI hand-written digits bundled with reslab (:mod:`.digits`), so
  everything runs offline;
* ``cifar10`` / ``cifar100`` (Krizhevsky 2009), from an extracted folder, an archive in the data
  folder or a checked download (:mod:`.cifar`);
* ``mnist`` / ``fashion-mnist`` (LeCun et al. 1998; Xiao et al. 2017) IDX files (:mod:`.idx`);
* ``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` images read with Pillow
  (:mod:`.imagefolder`);
* ``synthetic``: seeded random images, for smoke tests and timing (:mod:`.synthetic`).

This module imports the format modules and nothing imports it back but the package; the formats
build on :mod:`.dataset`, which imports none of them.
"""

from __future__ import annotations

import os

from reslab.data import cifar, digits, idx, imagefolder, synthetic
from reslab.data.dataset import Dataset, data_root
from reslab.errors import DataError

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder", "synthetic")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    image_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (3, 32, 32),
    synthetic_size: tuple[int, int] = (512, 128),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """Load one of :data:`DATASETS` into memory.

    ``data_dir`` (else ``$RESLAB_DATA``, else ``~/.cache/reslab``) holds the files; for
    ``imagefolder`` it is the folder with ``train/`` and ``test/``. ``download`` lets CIFAR and
    (Fashion-)MNIST fetch their official files when absent. ``image_size`` sets the side of
    ``imagefolder`` and ``synthetic`` images; other datasets have a fixed size and accept only
    that. ``synthetic_*``, ``num_classes`` and ``seed`` shape the ``synthetic`` dataset.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size}")
    root = data_root(data_dir)
    ds: Dataset
    if key == "digits":
        ds = digits._load_digits()
    elif key in cifar._CIFAR:
        ds = cifar._load_cifar(cifar._CIFAR[key], root, download)
    elif key in idx._IDX:
        ds = idx._load_idx_dataset(idx._IDX[key], root, download)
    elif key == "imagefolder":
        return imagefolder._load_imagefolder(root, image_size or 32)
    else:
        shape = synthetic_shape
        if image_size is not None:
            shape = (shape[0], image_size, image_size)
        return synthetic._load_synthetic(shape, synthetic_size, num_classes, seed)
    if image_size is not None and image_size != ds.image_size:
        raise DataError(
            f"{key} images are {ds.image_size}×{ds.image_size}; image_size={image_size} is "
            "only supported for imagefolder and synthetic"
        )
    return ds
