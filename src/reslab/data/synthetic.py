"""The ``synthetic`` dataset: seeded random images and labels, for smoke tests and timing."""

from __future__ import annotations

import torch

from reslab.data.dataset import Dataset, _make_dataset
from reslab.errors import DataError


def _load_synthetic(
    shape: tuple[int, int, int], sizes: tuple[int, int], num_classes: int, seed: int
) -> Dataset:
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"synthetic_shape must be three positive ints (C, H, W), got {shape}")
    if len(sizes) != 2 or min(sizes) < 1:
        raise DataError(f"synthetic_size must be two positive ints (train, test), got {sizes}")
    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for n in sizes:
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, num_classes, (n,), dtype=torch.int64, generator=gen)
        splits.append((images.numpy(), labels.numpy()))
    classes = [str(i) for i in range(num_classes)]
    return _make_dataset("synthetic", splits[0], splits[1], classes, augment="none")
