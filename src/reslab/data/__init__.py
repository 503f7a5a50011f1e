"""Datasets as uint8 tensors, and a loader that batches, augments and normalises on the device.

:func:`load_dataset` fills a :class:`Dataset` (train and test splits as uint8 ``N×C×H×W`` CPU
tensors with int64 labels); :class:`DeviceLoader` keeps a split on the device and yields
shuffled, augmented, normalised batches. The modules, in reading order:

* ``loader``: :func:`augment_batch`, :func:`normalize_batch`, :class:`DeviceLoader`,
  :func:`eval_batches`;
* ``dataset``: :class:`Dataset`, :func:`channel_stats`, :func:`holdout`, :func:`data_root`, and
  the helpers every format module builds its :class:`Dataset` with;
* one module per format, each importing ``dataset`` and none importing another: ``digits`` (the
  bundled UCI digits), ``cifar`` (CIFAR-10/100, binary and python batches), ``idx`` (MNIST,
  Fashion-MNIST), ``imagefolder`` (``ROOT/train/<class>/*``, and :class:`ImageFolderStream` for
  folders too big for memory), ``synthetic`` (seeded random images);
* ``formats``: :data:`DATASETS` and :func:`load_dataset`, which imports the formats and hands
  each name to its module.

Files on disk are untrusted, and the code that guards against them has rooms of its own:

* ``unpickle``: :func:`safe_unpickle`, a restricted unpickler behind an opcode pre-scan;
* ``download``: the one network call, the md5 check before a download is used, and archive
  extraction member by member that refuses links, devices and paths leaving the target.
"""

from reslab.data.dataset import Dataset, channel_stats, data_root, holdout
from reslab.data.formats import DATASETS, load_dataset
from reslab.data.imagefolder import ImageFolderStream
from reslab.data.loader import (
    AUGMENTS,
    DeviceLoader,
    augment_batch,
    eval_batches,
    normalize_batch,
)
from reslab.data.unpickle import safe_unpickle

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "Dataset",
    "DeviceLoader",
    "ImageFolderStream",
    "augment_batch",
    "channel_stats",
    "data_root",
    "eval_batches",
    "holdout",
    "load_dataset",
    "normalize_batch",
    "safe_unpickle",
]
