"""CIFAR-10 and CIFAR-100, from their binary or their python batches.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (technical report, 2009);
files from https://www.cs.toronto.edu/~kriz/cifar.html. Each dataset comes in two official
versions and reslab reads either: the *binary* batches (records of label byte(s) then 3,072
pixels) and the *python* batches (pickled dicts, read through
:func:`~reslab.data.unpickle.safe_unpickle`). :func:`_load_cifar` prefers what is on disk: an
extracted folder, then an archive in the data folder, and only then downloads the binary
archive (reading it needs no unpickling at all), checked against its published md5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reslab.data.dataset import Dataset, _check_labels, _make_dataset
from reslab.data.download import _download, _extract_folder
from reslab.data.unpickle import safe_unpickle
from reslab.errors import DataError

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_CIFAR_PIXELS = 3 * 32 * 32

_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    title: str
    num_classes: int
    classes: tuple[str, ...]
    py_dir: str
    py_train: tuple[str, ...]
    py_test: str
    py_meta: str
    py_label_key: str
    py_names_key: str
    py_archive: str
    py_md5: str
    bin_dir: str
    bin_train: tuple[str, ...]
    bin_test: str
    bin_meta: str
    label_bytes: int  # CIFAR-100 records carry a coarse then a fine label byte
    bin_archive: str
    bin_md5: str


_CIFAR = {
    "cifar10": _CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        classes=_CIFAR10_CLASSES,
        py_dir="cifar-10-batches-py",
        py_train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        py_test="test_batch",
        py_meta="batches.meta",
        py_label_key="labels",
        py_names_key="label_names",
        py_archive="cifar-10-python.tar.gz",
        py_md5="c58f30108f718f92721af3b95e74349a",
        bin_dir="cifar-10-batches-bin",
        bin_train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        bin_test="test_batch.bin",
        bin_meta="batches.meta.txt",
        label_bytes=1,
        bin_archive="cifar-10-binary.tar.gz",
        bin_md5="c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar100": _CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        num_classes=100,
        classes=_CIFAR100_CLASSES,
        py_dir="cifar-100-python",
        py_train=("train",),
        py_test="test",
        py_meta="meta",
        py_label_key="fine_labels",
        py_names_key="fine_label_names",
        py_archive="cifar-100-python.tar.gz",
        py_md5="eb9058c3a382ffc7106e4002c42a8d85",
        bin_dir="cifar-100-binary",
        bin_train=("train.bin",),
        bin_test="test.bin",
        bin_meta="fine_label_names.txt",
        label_bytes=2,
        bin_archive="cifar-100-binary.tar.gz",
        bin_md5="03b5dce01913d631647c71ecec9e9cb8",
    ),
}


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _decode_names(names: object, count: int, source: object) -> list[str]:
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise DataError(f"{source}: expected a list of {count} class names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            out.append(n.decode("utf-8", errors="replace"))
        elif isinstance(n, str):
            out.append(n)
        else:
            raise DataError(f"{source}: class names must be strings, found {type(n).__name__}")
    return out


def _read_cifar_binary(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Records of label byte(s) then 3,072 pixels: the R plane, G, B, each 32×32 row-major."""
    record = spec.label_bytes + _CIFAR_PIXELS
    size = _file_size(path)
    if size == 0 or size % record:
        raise DataError(
            f"{path} is {size} bytes, not a whole non-zero number of {record}-byte "
            f"{spec.title} records; the file is truncated or not a {spec.title} binary batch, "
            "delete it and download it again"
        )
    try:
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    labels = raw[:, spec.label_bytes - 1].astype(np.int64)
    _check_labels(labels, spec.num_classes, path)
    return raw[:, spec.label_bytes :].reshape(-1, 3, 32, 32), labels


def _str_keys(obj: dict[Any, Any]) -> dict[Any, Any]:
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_python(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """A pickled dict with ``data`` (N×3072 uint8, same layout as binary) and the labels."""
    obj = safe_unpickle(path)
    key = spec.py_label_key
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict with 'data' and '{key}', found {type(obj).__name__}"
        )
    entries = _str_keys(obj)
    if "data" not in entries or key not in entries:
        raise DataError(
            f"{path}: expected a pickled dict with 'data' and '{key}' entries, found keys "
            f"{sorted(map(str, entries))}; is this a {spec.title} python batch?"
        )
    try:
        data = np.asarray(entries["data"])
        labels = np.asarray(entries[key])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'data' or '{key}' is not an array ({exc})") from exc
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != _CIFAR_PIXELS:
        raise DataError(
            f"{path}: 'data' has shape {data.shape}, expected N×{_CIFAR_PIXELS} "
            "(N images of 3×32×32 bytes)"
        )
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255:
            raise DataError(f"{path}: 'data' must hold bytes 0..255, found dtype {data.dtype}")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: '{key}' must be {data.shape[0]} integer labels, one per image; found "
            f"{labels.dtype} of shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    _check_labels(labels, spec.num_classes, path)
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_names(folder: Path, spec: _CifarSpec, binary: bool) -> list[str]:
    meta = folder / (spec.bin_meta if binary else spec.py_meta)
    if not meta.is_file():
        return list(spec.classes)
    if binary:
        try:
            lines = meta.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise DataError(f"cannot read {meta}: {exc.strerror or exc}") from exc
        return _decode_names([s.strip() for s in lines if s.strip()], spec.num_classes, meta)
    obj = safe_unpickle(meta)
    if not isinstance(obj, dict) or spec.py_names_key not in _str_keys(obj):
        raise DataError(f"{meta}: expected a pickled dict with '{spec.py_names_key}'")
    return _decode_names(_str_keys(obj)[spec.py_names_key], spec.num_classes, meta)


def _read_cifar_folder(folder: Path, spec: _CifarSpec, binary: bool) -> Dataset:
    train_files = spec.bin_train if binary else spec.py_train
    test_file = spec.bin_test if binary else spec.py_test
    missing = [f for f in (*train_files, test_file) if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder} is missing {', '.join(missing)}; expected {', '.join(train_files)} and "
            f"{test_file} — delete the folder to have it extracted or downloaded again"
        )
    read = _read_cifar_binary if binary else _read_cifar_python
    parts = [read(folder / f, spec) for f in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read(folder / test_file, spec)
    return _make_dataset(spec.name, train, test, _cifar_names(folder, spec, binary), "cifar")


def _load_cifar(spec: _CifarSpec, root: Path, download: bool) -> Dataset:
    # Prefer what is already on disk: extracted folders, then archives, then a download. Local
    # archives are checked by structure (their md5 would only repeat that check); downloads by
    # md5. The binary archive is the one downloaded since reading it needs no unpickling at all.
    for folder, binary in ((spec.py_dir, False), (spec.bin_dir, True)):
        if (root / folder).is_dir():
            return _read_cifar_folder(root / folder, spec, binary)
    for archive, folder, binary in (
        (spec.py_archive, spec.py_dir, False),
        (spec.bin_archive, spec.bin_dir, True),
    ):
        if (root / archive).is_file():
            return _read_cifar_folder(_extract_folder(root / archive, root, folder), spec, binary)
    if not download:
        raise DataError(
            f"{spec.title} not found in {root}: expected {spec.py_dir}/, {spec.bin_dir}/, "
            f"{spec.py_archive} or {spec.bin_archive}; pass download=True or download "
            f"{_CIFAR_URL}{spec.bin_archive} into {root}"
        )
    archive_path = _download(_CIFAR_URL + spec.bin_archive, root, spec.bin_archive, spec.bin_md5)
    return _read_cifar_folder(_extract_folder(archive_path, root, spec.bin_dir), spec, True)
