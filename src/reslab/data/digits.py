"""The bundled digits: 1,797 8×8 hand-written digits, so reslab runs offline.

UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin and C. Kaynak, 1998), in the copy
scikit-learn ships (``_data/digits.csv.gz``; origin and licence in ``_data/LICENSE-digits.txt``):
64 grey levels 0..16 and the label per row. There is no official split, so reslab holds out 20%
per class with a fixed seed.
"""

from __future__ import annotations

import gzip
import zlib
from importlib import resources

import numpy as np

from reslab.data.dataset import Dataset, _check_labels, _make_dataset, _stratified_split
from reslab.errors import DataError

_DIGITS_TEST_SIZE = 360  # 20% of 1,797, split per class (see _stratified_split)


def _load_digits() -> Dataset:
    ref = resources.files("reslab") / "_data" / "digits.csv.gz"
    try:
        with ref.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"the bundled {ref} is unreadable ({exc}); reinstall reslab") from exc
    if table.shape[1] != 65 or table.shape[0] == 0:
        raise DataError(f"the bundled {ref} has shape {table.shape}, expected N×65; reinstall")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise DataError(f"the bundled {ref} has pixels outside 0..16; reinstall reslab")
    _check_labels(labels, 10, ref)
    # 16 grey levels onto 0..255 so all datasets share uint8 pixel units.
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    train, test = _stratified_split(labels, _DIGITS_TEST_SIZE, np.random.RandomState(0))
    return _make_dataset(
        "digits",
        (images[train], labels[train]),
        (images[test], labels[test]),
        [str(i) for i in range(10)],
        augment="none",
    )
