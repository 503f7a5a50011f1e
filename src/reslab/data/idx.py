"""MNIST (LeCun et al., "Gradient-Based Learning Applied to Document Recognition", 1998) and
Fashion-MNIST (Xiao et al., arXiv:1708.07747, 2017) from their IDX files, plain or gzipped.

The files are looked for in reslab's layout (``DATA/mnist/``) and then torchvision's
(``DATA/MNIST/raw/``); missing ones are downloaded from torchvision's mirrors and checked against
the same md5s torchvision uses.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reslab.data.dataset import Dataset, _check_labels, _make_dataset
from reslab.data.download import _download
from reslab.errors import DataError

_IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    title: str
    folders: tuple[str, ...]  # reslab's own layout first, then torchvision's
    mirror: str
    md5: tuple[str, ...]  # of the .gz files, in _IDX_FILES order
    classes: tuple[str, ...]


_IDX = {
    "mnist": _IdxSpec(
        name="mnist",
        title="MNIST",
        folders=("mnist", "MNIST/raw"),
        # torchvision's mirror and md5s (torchvision/datasets/mnist.py)
        mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5=(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        classes=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": _IdxSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        folders=("fashion-mnist", "FashionMNIST/raw"),
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5=(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {path} ({exc}); the file is truncated or corrupt, delete it and "
            "download it again"
        ) from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array (http://yann.lecun.com/exdb/mnist/): big-endian magic, dims, then bytes."""
    what = "images" if magic == _IDX_IMAGES else "labels"
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is {len(data)} bytes, too short for an IDX header; re-download")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: IDX magic number 0x{found:08X}, expected 0x{magic:08X} for MNIST-style "
            f"{what}; is this the right file?"
        )
    header = 4 + 4 * (magic & 0xFF)
    if len(data) < header:
        raise DataError(f"{path} is {len(data)} bytes, shorter than its {header}-byte IDX header")
    dims = struct.unpack(f">{magic & 0xFF}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path} is {len(data)} bytes, expected {expected} for an IDX array of shape "
            f"{dims}; the file is truncated or corrupt, delete it and download it again"
        )
    if 0 in dims:
        raise DataError(f"{path} holds an empty IDX array of shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(spec: _IdxSpec, root: Path, stem: str) -> Path | None:
    for folder in spec.folders:
        for name in (stem, stem + ".gz"):
            if (root / folder / name).is_file():
                return root / folder / name
    return None


def _load_idx_dataset(spec: _IdxSpec, root: Path, download: bool) -> Dataset:
    paths: list[Path] = []
    for stem, md5 in zip(_IDX_FILES, spec.md5, strict=True):
        path = _find_idx(spec, root, stem)
        if path is None:
            folder = root / spec.folders[0]
            if not download:
                raise DataError(
                    f"{spec.title} file {stem}[.gz] not found in {folder}; pass download=True "
                    f"or download {spec.mirror}{stem}.gz into {folder}"
                )
            path = _download(f"{spec.mirror}{stem}.gz", folder, stem + ".gz", md5)
        paths.append(path)
    splits = []
    for images_path, labels_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = _read_idx(images_path, _IDX_IMAGES)
        labels = _read_idx(labels_path, _IDX_LABELS).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{labels_path} has {labels.shape[0]} labels but {images_path} has "
                f"{images.shape[0]} images; the two files must come from the same release"
            )
        _check_labels(labels, len(spec.classes), labels_path)
        splits.append((images[:, None], labels))
    if splits[0][0].shape[1:] != splits[1][0].shape[1:]:
        raise DataError(
            f"{paths[0]} and {paths[2]} hold images of different sizes "
            f"({splits[0][0].shape[2:]} and {splits[1][0].shape[2:]})"
        )
    return _make_dataset(spec.name, splits[0], splits[1], spec.classes, augment="none")
