"""Datasets as uint8 tensors, and a loader that batches, augments and normalises on the device.

Every dataset loads into a :class:`Dataset`: the train and test splits as uint8 ``N×C×H×W`` CPU
tensors with int64 labels, the class names, per-channel mean/std of the train split, and the
augmentation that suits it. :func:`load_dataset` knows

* ``digits``: the 1,797 8×8 UCI hand-written digits bundled with reslab (scikit-learn's copy;
  see ``_data/LICENSE-digits.txt``), so everything runs offline;
* ``cifar10`` / ``cifar100`` (Krizhevsky, "Learning Multiple Layers of Features from Tiny
  Images", 2009), from an extracted folder or the official ``.tar.gz`` (python or binary
  version) in the data folder, else downloaded and checked against its published md5;
* ``mnist`` / ``fashion-mnist`` (LeCun et al. 1998; Xiao et al. 2017) IDX files, plain or gzipped;
* ``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` images read with Pillow;
* ``synthetic``: seeded random images, for smoke tests and timing.

The data folder is ``data_dir``, else ``$RESLAB_DATA``, else ``~/.cache/reslab``.

Files on disk are untrusted: their size and structure are checked before use, pickles go through
a restricted unpickler (:func:`safe_unpickle`), archives are extracted member by member with
links, devices and paths outside the target refused, and downloads are checked against their
md5 before extraction. Every problem the user can fix raises :class:`~reslab.errors.DataError`
with one line naming the file and what was expected.

:class:`DeviceLoader` keeps a whole uint8 split on the device (50,000 CIFAR images are 150 MB)
and builds each batch by indexing, augmenting with batched tensor ops (no per-sample Python) and
normalising there, which removes the host-side input pipeline that otherwise bounds small-image
training. Its order and augmentation are functions of ``(seed, epoch, batch index, rank)``, so a
run resumed mid-epoch sees bit-identical batches and ranks shard one global permutation.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import pickle
import pickletools
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data

from reslab.errors import DataError, ReslabError, UnsafePickleError

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

log = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder", "synthetic")
AUGMENTS = ("cifar", "flip", "none")

# He et al. 2015, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Sec. 4.2:
# "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from the padded image
# or its horizontal flip".
_CROP_PAD = 4
_DIGITS_TEST_SIZE = 360  # 20% of 1,797, split per class (see _stratified_split)


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$RESLAB_DATA``, else ``~/.cache/reslab``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("RESLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "reslab"


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


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


# numpy's own reconstructors (ndarray.__setstate__, dtype.__setstate__, multiarray.scalar) trust
# their arguments: fed a corrupted pickle they can segfault the process (found by fuzzing
# mutated pickles). So the globals a pickle names for numpy data resolve to the stand-ins below,
# which only record their arguments; _materialize then checks them and builds the arrays with
# np.frombuffer, for plain numeric dtypes only.
_SAFE_DTYPES = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


class _NdarrayMark:
    """Stands for the ``numpy.ndarray`` class, which pickles only pass to ``_reconstruct``."""


_NDARRAY = _NdarrayMark()


class _DtypeStub:
    """Records ``numpy.dtype(spec, align, copy)`` and its BUILD state (for the byte order)."""

    def __init__(self, spec: object = None, *_flags: object) -> None:
        self.spec = spec
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def resolve(self) -> np.dtype[Any]:
        spec = _text(self.spec)
        if spec not in _SAFE_DTYPES:
            raise pickle.UnpicklingError(f"numpy dtype {self.spec!r} is not a plain numeric type")
        dtype = np.dtype(spec)
        state = self.state
        order = _text(state[1]) if isinstance(state, tuple) and len(state) > 1 else None
        if order == "<":
            dtype = dtype.newbyteorder("<")
        elif order == ">":
            dtype = dtype.newbyteorder(">")
        elif order not in (None, "|", "="):
            raise pickle.UnpicklingError(f"numpy dtype byte order {order!r} is not valid")
        return dtype


def _array_from_bytes(buffer: object, dtype: object, shape: object, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, _DtypeStub):
        raise pickle.UnpicklingError("numpy array without a numpy dtype")
    dt = dtype.resolve()
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"numpy array shape {shape!r} is not a tuple of sizes")
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = bytes(buffer.raw())
    if not isinstance(buffer, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy array data is not bytes")
    count = math.prod(shape)
    if len(buffer) != count * dt.itemsize:
        raise pickle.UnpicklingError(
            f"numpy array of shape {shape} and dtype {dt} needs {count * dt.itemsize} bytes, "
            f"the pickle has {len(buffer)}"
        )
    flat = np.frombuffer(buffer, dtype=dt, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _ArrayStub:
    """Records ``_reconstruct(ndarray, shape, typecode)`` and the BUILD state with the data."""

    def __init__(self) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self) -> np.ndarray:
        state = self.state
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # numpy writes (version, shape, dtype, is_fortran, data)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("numpy array without a valid state")
        shape, dtype, fortran, data = state
        return _array_from_bytes(data, dtype, shape, bool(fortran))


def _reconstruct_stub(subtype: object, *_args: object) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy.ndarray objects are allowed")
    return _ArrayStub()


def _scalar_stub(dtype: object, data: object = None) -> Any:
    return _array_from_bytes(data, dtype, (), False)[()]


def _frombuffer_stub(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    return _array_from_bytes(buffer, dtype, shape, _text(order) == "F")


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    # Protocol <= 2 pickles write bytes as _codecs.encode(str, "latin1"); allow exactly that use.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin-1")


def _bytearray(data: object = b"", encoding: object = None) -> bytearray:
    # bytearray(n) would allocate n bytes; pickles only ever pass the content.
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    return bytearray(_latin1_encode(data, encoding))


# The only globals a pickle may name: numpy's reconstructors for arrays, dtypes and scalars
# (numpy 1.x and 2.x spellings, mapped to the stand-ins above) and a few builtin types.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct_stub
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _scalar_stub
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer_stub
for _builtins in ("builtins", "__builtin__"):
    _ALLOWED_GLOBALS[(_builtins, "set")] = set
    _ALLOWED_GLOBALS[(_builtins, "frozenset")] = frozenset
    _ALLOWED_GLOBALS[(_builtins, "complex")] = complex
    _ALLOWED_GLOBALS[(_builtins, "bytearray")] = _bytearray


def _materialize(root: Any) -> Any:
    """Replace the array and dtype stand-ins in the unpickled containers with numpy objects.

    Lists and dicts are updated in place (so shared and self-referencing ones stay so), tuples
    rebuilt; set members and dict keys are hashable, so they cannot be arrays and are left.
    """
    seen: dict[int, Any] = {}

    def visit(obj: Any) -> Any:
        key = id(obj)
        if key in seen:
            return seen[key]
        if isinstance(obj, _ArrayStub):
            seen[key] = obj.build()
        elif isinstance(obj, _DtypeStub):
            seen[key] = obj.resolve()
        elif isinstance(obj, list):
            seen[key] = obj
            obj[:] = [visit(v) for v in obj]
        elif isinstance(obj, dict):
            seen[key] = obj
            for k, v in obj.items():
                obj[k] = visit(v)
        elif isinstance(obj, tuple):
            seen[key] = tuple(visit(v) for v in obj)
        else:
            return obj
        return seen[key]

    return visit(root)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to unpickle {self._source}: it asks for the global {module}.{name}; "
                "only containers, numbers, strings, bytes and numpy arrays are allowed"
            )
        return obj


# Opcode byte -> (name, argument size), from pickletools' table: a size >= 0 is fixed, the
# negative TAKEN_FROM_ARGUMENT* sizes are a length prefix, UP_TO_NEWLINE a text line.
_OPCODES = {
    op.code.encode("latin-1")[0]: (op.name, op.arg.n if op.arg is not None else 0)
    for op in pickletools.opcodes
}
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
}


def _prescan_pickle(data: bytes, source: str) -> None:
    """Walk the opcodes without executing any, rejecting what the C unpickler would over-allocate.

    The C unpickler sizes its memo table from PUT indices and some buffers from length prefixes
    before checking them against the input, so a few crafted bytes can demand gigabytes. A real
    pickler numbers memo entries consecutively and its length prefixes fit in the file. This
    walk only measures arguments (``pickletools.genops`` would decode each one and takes
    seconds on a CIFAR batch).
    """

    def corrupt(why: str) -> DataError:
        return DataError(f"{source} is not a readable pickle ({why}); the file is corrupt")

    pos, n_ops, end = 0, 0, len(data)
    while True:
        if pos >= end:
            raise corrupt("it ends before the STOP opcode")
        code = data[pos]
        if code not in _OPCODES:
            raise corrupt(f"unknown opcode {bytes([code])!r} at byte {pos}")
        name, size = _OPCODES[code]
        pos += 1
        n_ops += 1
        if name == "STOP":
            return
        arg_start = pos
        if size >= 0:
            pos += size
        elif size == pickletools.UP_TO_NEWLINE:
            lines = 2 if name in ("GLOBAL", "INST") else 1
            for _ in range(lines):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise corrupt(f"unterminated {name} argument at byte {arg_start}")
                pos = newline + 1
        else:
            fmt, width = _LENGTH_PREFIX[size]
            if pos + width > end:
                raise corrupt(f"truncated {name} length at byte {pos}")
            (length,) = struct.unpack_from(fmt, data, pos)
            if length < 0:
                raise corrupt(f"negative {name} length at byte {pos}")
            pos += width + length
        if pos > end:
            raise corrupt(f"{name} at byte {arg_start - 1} runs past the end of the data")
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            raw = data[arg_start:pos]
            if name == "BINPUT":
                index = raw[0]
            elif name == "LONG_BINPUT":
                (index,) = struct.unpack("<I", raw)
            else:
                try:
                    index = int(raw)
                except ValueError:
                    raise corrupt(f"bad PUT index {raw[:20]!r}") from None
            # A real pickler never needs more memo slots than it has written opcodes.
            if not 0 <= index <= n_ops:
                raise corrupt(f"memo index {index} at opcode {n_ops} is out of range")


def safe_unpickle(
    source: str | os.PathLike[str] | bytes | bytearray | IO[bytes], source_name: str | None = None
) -> Any:
    """Unpickle plain data (containers, numbers, str, bytes, numpy arrays) and nothing else.

    ``source`` is a path, the pickle's bytes, or a binary file object; ``source_name`` names it
    in errors. A pickle that names any other global (``os.system``, ``builtins.eval``...) raises
    :class:`~reslab.errors.UnsafePickleError` before anything is called; a malformed one raises
    :class:`~reslab.errors.DataError`. numpy arrays and scalars come back as real numpy objects
    but are rebuilt by reslab from their bytes, and only for bool/int/uint/float/complex dtypes
    (object, string and structured arrays are refused). Strings pickled by Python 2 load as
    ``bytes`` (``encoding="bytes"``), as the CIFAR python batches expect.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = source_name or "pickle data"
    elif isinstance(source, (str, os.PathLike)):
        name = source_name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc
    else:
        name = source_name or str(getattr(source, "name", "pickle stream"))
        try:
            data = source.read()
        except OSError as exc:
            raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc
    _prescan_pickle(data, name)
    try:
        return _materialize(_RestrictedUnpickler(io.BytesIO(data), name).load())
    except ReslabError:
        raise
    except Exception as exc:
        # Whatever the allowed reconstructors or the unpickler raise on malformed input
        # (UnpicklingError, EOFError, ValueError, TypeError, MemoryError...) is a data problem.
        raise DataError(
            f"{name} is not a readable pickle ({type(exc).__name__}: {exc}); the file is corrupt"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Downloads and archives


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` into ``dest``. The only network access in reslab; tests replace it."""
    request = urllib.request.Request(url, headers={"User-Agent": "reslab"})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder}: {exc.strerror or exc}; "
            "pass data_dir= or set RESLAB_DATA to a writable folder"
        ) from exc


def _download(url: str, folder: Path, filename: str, md5: str) -> Path:
    """Download to a temporary name, check the md5, then rename to ``folder/filename``."""
    _ensure_dir(folder)
    final = folder / filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s to %s", url, final)
        try:
            _fetch(url, tmp)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise DataError(
                f"could not download {url} ({exc}); download it by hand and save it as "
                f"{final}, or point data_dir/RESLAB_DATA at a folder that has it"
            ) from exc
        actual = _md5(tmp)
        if actual != md5:
            raise DataError(
                f"checksum mismatch for {filename} from {url}: expected md5 {md5}, got {actual}; "
                f"the download was deleted, try again or download it by hand into {folder}"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


# The CIFAR archives unpack to about 180 MB; the cap stops a bogus archive filling the disk.
_MAX_EXTRACT_BYTES = 2 << 30


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders of ``archive`` under ``dest``; refuse anything else.

    Done by hand rather than with ``tarfile.extractall`` (whose ``filter=`` exists only in newer
    Pythons) so the rules are the same everywhere: no absolute or ``..`` paths, no symbolic or
    hard links, no devices or FIFOs. Callers extract into a fresh private folder, so a member
    refused halfway leaves nothing behind.
    """
    dest_resolved = dest.resolve()
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} would be written "
                        f"outside {dest}"
                    )
                if member.issym() or member.islnk():
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} is a link to "
                        f"{member.linkname!r}; dataset archives contain only files and folders"
                    )
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} is a device, FIFO or "
                        "other special file; dataset archives contain only files and folders"
                    )
                clean = [p for p in parts if p not in ("", ".")]
                if not clean:
                    continue
                target = dest.joinpath(*clean)
                if not target.resolve().is_relative_to(dest_resolved):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} resolves outside {dest}"
                    )
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > _MAX_EXTRACT_BYTES:
                    raise DataError(
                        f"refusing to extract {archive}: it unpacks to more than "
                        f"{_MAX_EXTRACT_BYTES >> 20} MiB, far more than any dataset reslab reads"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise DataError(f"{archive}: member {name!r} has no readable data")
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        why = " ".join(str(exc).split())  # tarfile's "r:*" lists each method it tried, a line each
        raise DataError(
            f"{archive} is not a readable .tar.gz archive ({why}); delete it and download it again"
        ) from exc


def _extract_folder(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` in a private temporary folder and move its ``folder`` to ``root``.

    The rename is atomic, so a crash or a concurrent rank never leaves a half-extracted folder
    where the loader would take it for a complete one.
    """
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".reslab-extract-", dir=root))
    except OSError as exc:
        raise DataError(
            f"cannot extract {archive}: {root} is not writable ({exc.strerror or exc})"
        ) from exc
    final = root / folder
    try:
        _safe_extract(archive, tmp)
        if not (tmp / folder).is_dir():
            raise DataError(
                f"{archive} has no {folder}/ folder; it is not the expected archive, "
                "delete it and download it again"
            )
        try:
            os.replace(tmp / folder, final)
        except OSError as exc:
            # A complete folder there means another process extracting at the same time won.
            if not final.is_dir():
                raise DataError(
                    f"cannot move the extracted {folder}/ to {final} ({exc.strerror or exc}); "
                    "remove whatever is in the way"
                ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------
# Small validation helpers


def _check_labels(labels: np.ndarray, num_classes: int, source: object) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{source}: label {int(labels[i])} at record {i} is outside 0..{num_classes - 1}; "
            "the file is corrupt or belongs to another dataset"
        )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


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


# ---------------------------------------------------------------------------------------------
# digits


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


# ---------------------------------------------------------------------------------------------
# CIFAR

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


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST (IDX files)

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


# ---------------------------------------------------------------------------------------------
# Image folders


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
        # PNG file"), EOFError, struct.error... (found by tests/test_bad_input.py's fuzzer).
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


# ---------------------------------------------------------------------------------------------
# Synthetic


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


# ---------------------------------------------------------------------------------------------
# Entry point


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
        ds = _load_digits()
    elif key in _CIFAR:
        ds = _load_cifar(_CIFAR[key], root, download)
    elif key in _IDX:
        ds = _load_idx_dataset(_IDX[key], root, download)
    elif key == "imagefolder":
        return _load_imagefolder(root, image_size or 32)
    else:
        shape = synthetic_shape
        if image_size is not None:
            shape = (shape[0], image_size, image_size)
        return _load_synthetic(shape, synthetic_size, num_classes, seed)
    if image_size is not None and image_size != ds.image_size:
        raise DataError(
            f"{key} images are {ds.image_size}×{ds.image_size}; image_size={image_size} is "
            "only supported for imagefolder and synthetic"
        )
    return ds


# ---------------------------------------------------------------------------------------------
# Augmentation and normalisation on the device


def _check_augment(images: torch.Tensor, kind: str) -> None:
    if kind not in AUGMENTS:
        raise DataError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"augment_batch needs uint8 N×C×H×W images, got {images.dtype}")


def _draw_augment(
    b: int, kind: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` shifts (``b×2`` int64) and flips (``b`` bool) on ``generator``'s device.

    The draw order (crop offsets, then flips) fixes the values a seed gives; :class:`DeviceLoader`
    relies on it to draw a whole epoch's parameters up front, batch by batch.
    """
    dev = generator.device
    shifts = torch.zeros(b, 2, dtype=torch.int64, device=dev)
    flips = torch.zeros(b, dtype=torch.bool, device=dev)
    if kind == "none" or b == 0:
        return shifts, flips
    if kind == "cifar":
        offsets = torch.randint(0, 2 * _CROP_PAD + 1, (b, 2), generator=generator, device=dev)
        shifts = offsets - _CROP_PAD
    flips = torch.rand(b, generator=generator, device=dev) < 0.5
    return shifts, flips


def _apply_augment(
    images: torch.Tensor, kind: str, shifts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Apply drawn ``shifts``/``flips`` (already on the images' device) with batched ops only.

    Nothing here reads a value back to the host, so on CUDA it queues kernels without a sync.
    """
    b, c, h, w = images.shape
    if kind == "none" or b == 0:
        return images
    if kind == "flip":
        return torch.where(flips.view(b, 1, 1, 1), images.flip(3), images)
    # Zero-pad once, then two gathers with per-sample row and column indices (broadcast views,
    # so no B×C×H×W index is built); the flip is folded into the column index:
    # out[n, ch, i, j] = padded[n, ch, dy + P + i, dx + P + (W-1-j if flip else j)].
    padded = F.pad(images, (_CROP_PAD,) * 4)
    wp = w + 2 * _CROP_PAD
    device = images.device
    cols = torch.arange(w, device=device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + (shifts[:, 1:] + _CROP_PAD)
    rows = torch.arange(h, device=device) + (shifts[:, :1] + _CROP_PAD)
    picked = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, wp))
    return picked.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


@overload
def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a uint8 ``N×C×H×W`` batch with batched tensor ops on its own device.

    ``"cifar"``: zero-pad 4 pixels, take a random crop of the original size (shift ``dy, dx``
    uniform in [-4, 4]), then flip horizontally with probability 1/2 (He et al. 2015, Sec. 4.2).
    ``"flip"``: the flip only; ``"none"``: unchanged. The padding is black (pixel 0) as in the
    common torchvision ``RandomCrop(32, padding=4)`` recipe, not the mean-subtracted zero of the
    original paper. With ``return_params`` also returns ``shifts`` (``N×2`` int64 ``dy, dx``,
    where unflipped ``out[i, j] = image[i + dy, j + dx]``) and ``flips`` (``N`` bool).
    """
    _check_augment(images, kind)
    shifts, flips = _draw_augment(int(images.shape[0]), kind, generator)
    # Random numbers come from ``generator`` on its own device and only these B-sized tensors
    # move, so the draws are the same whatever device holds the images. (DeviceLoader instead
    # draws a whole epoch at once and copies it to the device once.)
    shifts = shifts.to(images.device)
    flips = flips.to(images.device)
    out = _apply_augment(images, kind, shifts, flips)
    if return_params:
        return out, shifts, flips
    return out


def _normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    if channels_last and images.dim() == 4:
        # Reorder the 1-byte pixels rather than the 4-byte floats; the elementwise ops below
        # keep the channels-last layout.
        images = images.contiguous(memory_format=torch.channels_last)
    x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.to(dtype)


def _stats_tensor(values: Sequence[float], channels: int, device: torch.device) -> torch.Tensor:
    if len(values) != channels:
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(values)}")
    return _stats_cached(tuple(float(v) for v in values), device)


@functools.lru_cache(maxsize=32)
def _stats_cached(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Made once per (values, device): building it copies from the host, which on CUDA is a
    # blocking copy, so normalize_batch called per batch must not rebuild it. Read-only by use.
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without making the host wait for the device.

    On CUDA the tensor is pinned first, so the copy is truly asynchronous (a pageable
    ``.to(device)`` is a cudaMemcpy that waits for the stream); the caching host allocator keeps
    the pinned buffer alive until the copy has run. The loader calls this once per epoch.
    """
    if device.type == "cuda":
        if torch.cuda.is_available():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 ``N×C×H×W`` to ``dtype`` ``(x/255 - mean) / std`` on the images' device."""
    c = int(images.shape[1])
    mean_t = _stats_tensor(mean, c, images.device)
    std_t = _stats_tensor(std, c, images.device)
    return _normalize(images, mean_t, std_t, dtype, channels_last)


def _seed_from(*parts: object) -> int:
    """A 63-bit seed from the parts, stable across processes and Python versions."""
    text = ",".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class DeviceLoader:
    """Shuffled, sharded, augmented, normalised batches from a split kept on the device.

    The whole uint8 split moves to ``device`` once. Each epoch draws one permutation from
    ``(seed, epoch)``; every rank draws the same one and takes ``perm[rank::world_size]`` (after
    trimming to a multiple of ``world_size * batch_size`` with ``drop_last``; without it, padding
    by wrapping around as ``DistributedSampler`` does), so at each step the ranks' batches
    together are exactly the batch one process with ``world_size * batch_size`` would see.

    Augmentation for batch ``i`` uses a generator seeded from ``(seed, epoch, i, rank)``, so the
    only state is ``(epoch, next batch)``. At the start of an epoch the loader draws every
    batch's crop shifts and flips on the CPU, packs them with the epoch's sample indices and
    copies them to the device in one asynchronous copy; each batch then only slices those, so
    on CUDA the loop queues kernels and never waits for the GPU. :meth:`state_dict` /
    :meth:`load_state_dict` :meth:`state_dict` / :meth:`load_state_dict` resume
    mid-epoch with bit-identical batches. Iterating to the end of an epoch moves to the next;
    :meth:`set_epoch` jumps to another epoch (and keeps the position if it is the current one,
    so ``set_epoch(e)`` at the top of a resumed epoch loop does not lose the resume point).
    Yields ``(x, y)``: ``x`` of ``dtype`` (channels-last if asked), ``y`` int64, both on device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        augment: str = "none",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"DeviceLoader needs uint8 N×C×H×W images, got {images.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError("labels must have one entry per image")
        if augment not in AUGMENTS:
            raise DataError(f"unknown augmentation {augment!r}; choose one of {AUGMENTS}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"invalid loader setup batch_size={batch_size}, rank={rank}, "
                f"world_size={world_size}; need batch_size >= 1 and 0 <= rank < world_size"
            )
        n = int(images.shape[0])
        if n == 0 or (drop_last and n < batch_size * world_size):
            raise DataError(
                f"{n} images make no full batch of {batch_size} × {world_size} rank(s); "
                "lower batch_size or pass drop_last=False"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.dtype = dtype
        channels = int(images.shape[1])
        self._mean = _stats_tensor(mean, channels, self.device)
        self._std = _stats_tensor(std, channels, self.device)
        self.epoch = 0
        self._batch = 0

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_samples // global_batch
        per_rank = -(-self.num_samples // self.world_size)
        return -(-per_rank // self.batch_size)

    def _shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (CPU, int64)."""
        n = self.num_samples
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed_from("perm", self.seed, epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: len(self) * self.batch_size * self.world_size]
        else:
            # Wrap around (repeating if there are fewer samples than ranks) so every rank gets
            # the same number of batches and no rank waits on a collective that never comes.
            pad = -n % self.world_size
            order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
        return order[self.rank :: self.world_size]

    def _epoch_plan(self, epoch: int) -> torch.Tensor:
        """``4×n`` int64 on the device: rows sample index, ``dy``, ``dx``, flip; one copy.

        Batch ``i``'s shifts and flips are drawn as ``augment_batch`` would with a CPU
        generator seeded from ``("aug", seed, epoch, i, rank)``, so the values do not depend on
        the device or on where in the epoch a run resumed.
        """
        shard = self._shard(epoch)
        plan = torch.zeros(4, len(shard), dtype=torch.int64)
        plan[0] = shard
        if self.augment != "none":
            for i, start in enumerate(range(0, len(shard), self.batch_size)):
                stop = min(start + self.batch_size, len(shard))
                gen = torch.Generator().manual_seed(
                    _seed_from("aug", self.seed, epoch, i, self.rank)
                )
                shifts, flips = _draw_augment(stop - start, self.augment, gen)
                plan[1:3, start:stop] = shifts.t()
                plan[3, start:stop] = flips
        return _to_device(plan, self.device)

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch``; if already in it, keep the current position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._batch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_batches = len(self)
        if self._batch >= n_batches:
            self.epoch += 1
            self._batch = 0
        epoch = self.epoch
        plan = self._epoch_plan(epoch)
        # Device-side views made once per epoch; the loop below only slices them.
        order = plan[0]
        shifts = plan[1:3].t()
        flips = plan[3].bool()
        for i in range(self._batch, n_batches):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[batch]
            x = self.images[idx]
            y = self.labels[idx]
            x = _apply_augment(x, self.augment, shifts[batch], flips[batch])
            x = _normalize(x, self._mean, self._std, self.dtype, self.channels_last)
            # Count the batch as consumed before handing it out, so a checkpoint taken while
            # the caller holds batch i resumes at batch i + 1.
            self._batch = i + 1
            yield x, y
        self.epoch = epoch + 1
        self._batch = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: epoch, next batch, and the settings it depends on."""
        return {
            "epoch": self.epoch,
            "batch": self._batch,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "augment": self.augment,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; the loader must be set up as the saved one was."""
        mine = self.state_dict()
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
            mismatched = [k for k in mine if k not in ("epoch", "batch") and state[k] != mine[k]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"loader state is incomplete or malformed ({exc!r})") from exc
        if mismatched:
            detail = ", ".join(f"{k}={state[k]!r} (now {mine[k]!r})" for k in mismatched)
            raise DataError(f"cannot resume the data loader: it was saved with {detail}")
        if epoch < 0 or not 0 <= batch <= len(self):
            raise DataError(f"loader state epoch={epoch}, batch={batch} is out of range")
        self.epoch, self._batch = epoch, batch


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order normalised batches without augmentation, keeping the last partial batch."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    dev = torch.device(device)
    channels = int(images.shape[1])
    mean_t = _stats_tensor(mean, channels, dev)
    std_t = _stats_tensor(std, channels, dev)
    # One copy of the whole split (a no-op when it is already there), not one per batch: a
    # pageable per-batch copy would make the host wait for the GPU at every step.
    images = images.to(dev)
    labels = labels.to(dev, dtype=torch.int64)
    for start in range(0, int(images.shape[0]), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        yield _normalize(x, mean_t, std_t, dtype, channels_last), y
