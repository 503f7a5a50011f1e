"""Image folders: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (or ``val/``), as
torchvision's ``ImageFolder`` lays them out, decoded with Pillow.

Classes are the sorted sub-folders; hidden entries are skipped. Each image is resized (shorter
side to the target size) and centre-cropped to a square RGB image. ``load_dataset("imagefolder")``
decodes everything up front; :class:`ImageFolderStream` decodes lazily for folders too big to
hold in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from reslab.data.dataset import Dataset, _make_dataset
from reslab.errors import DataError


def _scan_split(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and ``(file, label)`` pairs of one split."""
    try:
        classes = sorted(
            d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
    except OSError as exc:
        raise DataError(f"cannot list {split_dir}: {exc.strerror or exc}") from exc
    if not classes:
        raise DataError(
            f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>"
        )
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        class_dir = split_dir / cls
        # Skip hidden entries (.DS_Store, .ipynb_checkpoints/) anywhere below the class folder.
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(class_dir).parts)
        )
        if not files:
            raise DataError(f"class folder {class_dir} has no files; every class needs images")
        samples.extend((p, label) for p in files)
    return classes, samples


def _decode_image(path: Path, size: int) -> np.ndarray:
    """RGB ``3×size×size`` uint8: shorter side resized to ``size``, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
        width, height = img.size
        if (width, height) != (size, size):
            scale = size / min(width, height)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        # A damaged file makes Pillow raise more than OSError/ValueError: SyntaxError ("broken
        # PNG file"), EOFError, struct.error... (found by the fuzzers in tests/test_fuzz.py).
        raise DataError(
            f"{path} is not an image Pillow can read ({exc}); remove it or convert it to PNG/JPEG"
        ) from exc
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _test_dir(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{root} has no test/ (or val/) folder; an imagefolder dataset needs "
        f"{root}/train/<class>/* and {root}/test/<class>/*"
    )


class ImageFolderStream(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """``root/split/<class>/*`` images decoded lazily, as ``(uint8 3×S×S tensor, label)``.

    For folders too big to hold in memory (ImageNet-scale): wrap it in a standard
    ``torch.utils.data.DataLoader`` with workers. ``load_dataset("imagefolder")`` instead decodes
    everything up front, which suits small folders and :class:`DeviceLoader`.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", image_size: int = 32
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is not a folder; expected {split_dir}/<class>/<images>")
        self.classes, self.samples = _scan_split(split_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return torch.from_numpy(_decode_image(path, self.image_size)), label


def _load_imagefolder(root: Path, image_size: int) -> Dataset:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"{root} has no train/ folder; an imagefolder dataset needs "
            f"{root}/train/<class>/* and {root}/test/<class>/*"
        )
    test_dir = _test_dir(root)
    train_classes, train_samples = _scan_split(train_dir)
    test_classes, test_samples = _scan_split(test_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between {train_dir} and {test_dir}: only in train "
            f"{only_train}, only in test {only_test}; both splits need the same classes"
        )

    def decode(samples: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([_decode_image(path, image_size) for path, _ in samples])
        return images, np.array([label for _, label in samples], dtype=np.int64)

    return _make_dataset(
        "imagefolder", decode(train_samples), decode(test_samples), train_classes, "flip"
    )
