"""Tests for reslab.data: every loader on small files written here, the restricted unpickler,
download/extraction safety, and the device loader's augmentation, sharding and resume.

Nothing here touches the network: downloads go through ``reslab.data.download._fetch``, which
the tests replace with local copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import math
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import reslab.data as rd
from reslab.data import cifar, download
from reslab.data import idx as idx_mod
from reslab.data import loader as loader_mod
from reslab.errors import DataError, ReslabError, UnsafePickleError

FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---------------------------------------------------------------------------------------------
# Helpers that write dataset files


def _images(n: int, seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n: int, seed: int, num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, num_classes, n).astype(np.int64)


def _marked(images: np.ndarray) -> np.ndarray:
    """Image 0 gets flat R/G/B planes 11/22/33 and two marker pixels, to pin the plane order."""
    images = images.copy()
    images[0, 0], images[0, 1], images[0, 2] = 11, 22, 33
    images[0, 0, 0, 1] = 200  # R, row 0, column 1
    images[0, 2, 31, 30] = 201  # B, row 31, column 30
    return images


def _write_bin(path: Path, images: np.ndarray, labels: np.ndarray, label_bytes: int) -> None:
    prefix = [((labels + 7) % 20)[:, None]] if label_bytes == 2 else []  # coarse label
    cols = [*prefix, labels[:, None], images.reshape(len(images), -1)]
    path.write_bytes(np.concatenate(cols, axis=1).astype(np.uint8).tobytes())


def _write_py(path: Path, images: np.ndarray, labels: np.ndarray, key: bytes, proto: int) -> None:
    batch = {b"data": images.reshape(len(images), -1), key: labels.tolist(), b"batch_label": b"x"}
    path.write_bytes(pickle.dumps(batch, protocol=proto))


def _write_cifar(
    root: Path, name: str, fmt: str, n: int = 20, proto: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small CIFAR tree under ``root``; returns train images/labels and test images/labels."""
    spec = cifar._CIFAR[name]
    folder = root / (spec.bin_dir if fmt == "bin" else spec.py_dir)
    folder.mkdir(parents=True)
    train_files = spec.bin_train if fmt == "bin" else spec.py_train
    tr_i, tr_l = [], []
    for k in range(len(train_files)):
        images = _images(n, k)
        labels = _labels(n, k, spec.num_classes)
        if k == 0:
            images = _marked(images)
        tr_i.append(images)
        tr_l.append(labels)
    te_i, te_l = _images(n, 99), _labels(n, 99, spec.num_classes)
    key = spec.py_label_key.encode()
    for fname, images, labels in [
        *zip(train_files, tr_i, tr_l, strict=True),
        (spec.py_test, te_i, te_l),
    ]:
        if fmt == "bin":
            fname = spec.bin_test if fname == spec.py_test else fname
            _write_bin(folder / fname, images, labels, spec.label_bytes)
        else:
            _write_py(folder / fname, images, labels, key, proto)
    return np.concatenate(tr_i), np.concatenate(tr_l), te_i, te_l


def _tar_folder(archive: Path, folder: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def _tar_with(archive: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def _write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", _images(n, seed, (28, 28)), 0x803)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", _labels(n, seed, 10), 0x801)


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert(mode) if mode != "RGB" else img).save(path)


def _write_sentinel(path: str) -> None:
    Path(path).write_text("pwned")


class _Evil:
    """Unpickling this would run ``os.system``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _EvilWriter:
    """Unpickling this would call a (module-level, importable) function that writes a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_write_sentinel, (self.path,))


# ---------------------------------------------------------------------------------------------
# digits, synthetic, load_dataset basics


def test_digits_is_bundled_stratified_and_stable() -> None:
    ds = rd.load_dataset("digits")
    again = rd.load_dataset("digits", data_dir="/nonexistent/never/used")
    assert (len(ds.train_labels), len(ds.test_labels)) == (1437, 360)
    assert ds.train_images.shape == (1437, 1, 8, 8) and ds.test_images.shape == (360, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
    assert (ds.in_channels, ds.image_size, ds.augment) == (1, 8, "none")
    assert torch.equal(ds.train_images, again.train_images)
    assert torch.equal(ds.test_labels, again.test_labels)
    every = torch.cat([ds.train_images, ds.test_images])
    assert int(every.min()) == 0 and int(every.max()) == 255
    levels = {round(k * 255 / 16) for k in range(17)}
    assert set(every.unique().tolist()) <= levels
    # Stratified: each class gives ~20% of its images to the test split.
    train_counts = torch.bincount(ds.train_labels, minlength=10)
    test_counts = torch.bincount(ds.test_labels, minlength=10)
    share = test_counts.double() / (train_counts + test_counts).double()
    assert torch.all((share - 0.2).abs() < 0.01)
    assert len(ds.mean) == len(ds.std) == 1 and 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    assert "digits" in repr(ds) and len(repr(ds)) < 200


def test_synthetic_shapes_and_determinism() -> None:
    a = rd.load_dataset("synthetic", synthetic_shape=(2, 6, 6), synthetic_size=(40, 10), seed=3)
    b = rd.load_dataset("synthetic", synthetic_shape=(2, 6, 6), synthetic_size=(40, 10), seed=3)
    c = rd.load_dataset("synthetic", synthetic_shape=(2, 6, 6), synthetic_size=(40, 10), seed=4)
    assert a.train_images.shape == (40, 2, 6, 6) and a.test_images.shape == (10, 2, 6, 6)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.num_classes == 10 and int(a.train_labels.max()) < 10
    big = rd.load_dataset("synthetic", num_classes=3, image_size=12)
    assert big.train_images.shape == (512, 3, 12, 12) and big.classes == ["0", "1", "2"]
    assert all(abs(m - 0.5) < 0.02 for m in big.mean) and all(abs(s - 0.29) < 0.02 for s in big.std)
    with pytest.raises(DataError, match="synthetic_size"):
        rd.load_dataset("synthetic", synthetic_size=(0, 4))


def test_unknown_dataset_and_fixed_size() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*cifar10.*synthetic"):
        rd.load_dataset("imagenet")
    with pytest.raises(DataError, match="8×8"):
        rd.load_dataset("digits", image_size=32)


def test_fashion_alias_and_missing_files_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Fashion-MNIST file .* not found .*fashion-mnist"):
        rd.load_dataset("Fashion_MNIST", data_dir=tmp_path, download=False)


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "env"))
    assert rd.data_root() == tmp_path / "env"
    assert rd.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("RESLAB_DATA")
    assert rd.data_root() == Path.home() / ".cache" / "reslab"


def test_holdout_is_stratified_disjoint_and_deterministic() -> None:
    ds = rd.load_dataset("digits")
    h = rd.holdout(ds, 300, seed=1)
    again = rd.holdout(ds, 300, seed=1)
    other = rd.holdout(ds, 300, seed=2)
    assert len(h.test_labels) == 300 and len(h.train_labels) == 1437 - 300
    assert torch.equal(h.test_images, again.test_images)
    assert not torch.equal(h.test_images, other.test_images)
    counts = torch.bincount(h.test_labels, minlength=10).double()
    expected = torch.bincount(ds.train_labels, minlength=10).double() * 300 / 1437
    assert torch.all((counts - expected).abs() < 1)
    # The two parts partition the original train split (compare as multisets of rows).
    joined = torch.cat([h.train_images, h.test_images]).reshape(1437, -1)
    original = ds.train_images.reshape(1437, -1)
    assert sorted(map(bytes, joined.numpy())) == sorted(map(bytes, original.numpy()))
    assert h.mean != ds.mean  # recomputed from the smaller train split
    with pytest.raises(DataError, match="0 < n_val < 1437"):
        rd.holdout(ds, 1437, seed=0)


# ---------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize(
    ("name", "fmt"), [(n, f) for n in ("cifar10", "cifar100") for f in ("bin", "py")]
)
def test_cifar_round_trip(tmp_path: Path, name: str, fmt: str) -> None:
    tr_i, tr_l, te_i, te_l = _write_cifar(tmp_path, name, fmt)
    ds = rd.load_dataset(name, data_dir=tmp_path, download=False)
    n_train = 100 if name == "cifar10" else 20
    assert ds.train_images.shape == (n_train, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert np.array_equal(ds.train_images.numpy(), tr_i)
    assert np.array_equal(ds.train_labels.numpy(), tr_l)  # CIFAR-100: the fine labels
    assert np.array_equal(ds.test_images.numpy(), te_i)
    assert np.array_equal(ds.test_labels.numpy(), te_l)
    first = ds.train_images[0]
    assert int(first[0, 0, 1]) == 200 and int(first[2, 31, 30]) == 201
    assert set(first[1].unique().tolist()) == {22}
    assert ds.augment == "cifar" and ds.num_classes == (10 if name == "cifar10" else 100)
    expected_mean, expected_std = rd.channel_stats(torch.from_numpy(tr_i))
    assert ds.mean == expected_mean and ds.std == expected_std


def test_cifar_class_names_from_meta(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "a", "cifar10", "bin")
    names = [f"c{i}" for i in range(10)]
    (tmp_path / "a" / "cifar-10-batches-bin" / "batches.meta.txt").write_text(
        "\n".join(names) + "\n\n"
    )
    assert rd.load_dataset("cifar10", data_dir=tmp_path / "a").classes == names

    _write_cifar(tmp_path / "b", "cifar100", "py", proto=4)
    fine = [f"fine{i}".encode() for i in range(100)]
    meta = {b"fine_label_names": fine, b"coarse_label_names": [b"x"] * 20}
    (tmp_path / "b" / "cifar-100-python" / "meta").write_bytes(pickle.dumps(meta))
    ds = rd.load_dataset("cifar100", data_dir=tmp_path / "b")
    assert ds.classes == [f"fine{i}" for i in range(100)]

    _write_cifar(tmp_path / "c", "cifar10", "py")
    assert rd.load_dataset("cifar10", data_dir=tmp_path / "c").classes[:2] == [
        "airplane",
        "automobile",
    ]
    assert len(cifar._CIFAR100_CLASSES) == 100


def test_cifar_python_batch_as_written_by_python2(tmp_path: Path) -> None:
    """The official batches are Python 2 cPickle output: str as SHORT_BINSTRING/BINSTRING."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    images = _images(3, 5)
    flat = images.reshape(3, -1)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + i(0) + b"\x85" + s(b"b") + b"\x87R"
        + b"(" + i(1) + i(3) + i(3072) + b"\x86"
        + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
        + b"\x89" + s(flat.tobytes()) + b"tb"
    )  # fmt: skip
    blob = b"\x80\x02}(" + s(b"data") + array + s(b"labels") + b"](" + i(4) + i(0) + i(9) + b"eu."
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    obj = rd.safe_unpickle(path)
    assert set(obj) == {b"data", b"labels"} and obj[b"labels"] == [4, 0, 9]
    got_images, got_labels = cifar._read_cifar_python(path, cifar._CIFAR["cifar10"])
    assert np.array_equal(got_images, images) and got_labels.tolist() == [4, 0, 9]


def test_cifar_truncated_binary_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10", "bin")
    victim = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is 61360 bytes.*3073-byte"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    victim.write_bytes(b"")
    with pytest.raises(DataError, match=r"data_batch_3\.bin is 0 bytes"):
        rd.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_labels_out_of_range(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "a", "cifar10", "bin")
    batch = tmp_path / "a" / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(batch.read_bytes())
    raw[3073 * 2] = 10  # record 2's label
    batch.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin: label 10 at record 2 is outside 0\.\.9"):
        rd.load_dataset("cifar10", data_dir=tmp_path / "a")

    _write_cifar(tmp_path / "b", "cifar100", "py")
    bad = {b"data": _images(2, 0).reshape(2, -1), b"fine_labels": [3, 100]}
    (tmp_path / "b" / "cifar-100-python" / "test").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"label 100 at record 1 is outside 0\.\.99"):
        rd.load_dataset("cifar100", data_dir=tmp_path / "b")


def test_cifar_python_structure_is_checked(tmp_path: Path) -> None:
    spec = cifar._CIFAR["cifar10"]
    path = tmp_path / "batch"
    cases = [
        ([1, 2, 3], "expected a pickled dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "'data' and 'labels' entries"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(2, 100\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integer labels"),
        ({b"data": np.full((1, 3072), 300), b"labels": [0]}, "bytes 0..255"),
    ]
    for obj, message in cases:
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(DataError, match=message):
            cifar._read_cifar_python(path, spec)
    path.write_bytes(pickle.dumps({"data": np.ones((1, 3072), np.int64), "labels": [7]}))
    images, labels = cifar._read_cifar_python(path, spec)  # str keys and int64 pixels are fine
    assert images.dtype == np.uint8 and labels.tolist() == [7]


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 not found .*cifar-10-binary\.tar\.gz"):
        rd.load_dataset("cifar10", data_dir=tmp_path, download=False)
    _write_cifar(tmp_path, "cifar10", "py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        rd.load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar_reads_archive_in_data_dir(tmp_path: Path, fmt: str) -> None:
    tr_i, _, _, te_l = _write_cifar(tmp_path / "src", "cifar10", fmt)
    spec = cifar._CIFAR["cifar10"]
    folder, archive = (
        (spec.py_dir, spec.py_archive) if fmt == "py" else (spec.bin_dir, spec.bin_archive)
    )
    root = tmp_path / "root"
    root.mkdir()
    _tar_folder(root / archive, tmp_path / "src" / folder)
    ds = rd.load_dataset("cifar10", data_dir=root, download=False)
    assert np.array_equal(ds.train_images.numpy(), tr_i)
    assert np.array_equal(ds.test_labels.numpy(), te_l)
    assert sorted(p.name for p in root.iterdir()) == sorted([archive, folder])  # no temp left


def test_download_checksum_mismatch_is_refused_before_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = tmp_path / "wrong.tar.gz"
    _write_cifar(tmp_path / "src", "cifar10", "bin")
    _tar_folder(wrong, tmp_path / "src" / "cifar-10-batches-bin")
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(wrong.read_bytes())

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    root = tmp_path / "root"
    actual = download._md5(wrong)
    with pytest.raises(DataError) as info:
        rd.load_dataset("cifar10", data_dir=root)
    message = str(info.value)
    assert "c32a1d4ab5d03f1284b67883e8d87530" in message and actual in message
    assert "cifar-10-binary.tar.gz" in message and "\n" not in message
    assert fetched == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert list(root.iterdir()) == []  # bad download deleted, nothing extracted

    # With the checksum the test archive really has, the same path downloads, extracts, loads.
    good = dataclasses.replace(cifar._CIFAR["cifar10"], bin_md5=actual)
    monkeypatch.setitem(cifar._CIFAR, "cifar10", good)
    ds = rd.load_dataset("cifar10", data_dir=root)
    assert len(ds.train_labels) == 100
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
    ]


def test_download_failure_explains_manual_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(download, "_fetch", offline)
    with pytest.raises(DataError, match=r"could not download https://ossci.*by hand.*mnist"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    assert [p for p in (tmp_path / "mnist").iterdir()] == []


def test_mnist_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_fetch", lambda url, dest: dest.write_bytes(b"not the file"))
    with pytest.raises(DataError, match=r"expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        rd.load_dataset("mnist", data_dir=tmp_path)


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((_info("cifar-10-batches-bin/../../escape.txt"), b"x"), "outside"),
        ((_info("/tmp/reslab-absolute.txt"), b"x"), "outside"),
        ((_info("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd"), None), "link"),
        ((_info("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "x"), None), "link"),
        ((_info("cifar-10-batches-bin/dev", tarfile.CHRTYPE), None), "device"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    ok = (_info("cifar-10-batches-bin/test_batch.bin"), bytes(3073))
    _tar_with(root / "cifar-10-binary.tar.gz", ok, member)
    with pytest.raises(DataError, match=message):
        rd.load_dataset("cifar10", data_dir=root)
    assert (
        not (tmp_path / "escape.txt").exists() and not (tmp_path / "deep" / "escape.txt").exists()
    )
    assert not Path("/tmp/reslab-absolute.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_oversized_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_MAX_EXTRACT_BYTES", 5000)
    _tar_with(
        tmp_path / "cifar-10-binary.tar.gz",
        (_info("cifar-10-batches-bin/test_batch.bin"), bytes(3073)),
        (_info("cifar-10-batches-bin/data_batch_1.bin"), bytes(3073)),
    )
    with pytest.raises(DataError, match="unpacks to more than"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_corrupt_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz is not a readable"):
        rd.load_dataset("cifar100", data_dir=tmp_path)
    (tmp_path / "cifar-100-python.tar.gz").unlink()
    _tar_with(tmp_path / "cifar-100-python.tar.gz", (_info("other/file"), b"x"))
    with pytest.raises(DataError, match="has no cifar-100-python/ folder"):
        rd.load_dataset("cifar100", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Restricted unpickler


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_safe_unpickle_refuses_code_and_proves_it_did_not_run(tmp_path: Path, proto: int) -> None:
    sentinel = tmp_path / "sentinel"
    payloads = {
        "posix.system": _Evil(f"touch {sentinel}"),
        "_write_sentinel": _EvilWriter(str(sentinel)),
        r"(__builtin__|builtins)\.eval": _reduce(eval, f"open({str(sentinel)!r}, 'w').write('x')"),
    }
    for refused, payload in payloads.items():
        blob = pickle.dumps({b"data": [1, 2], b"evil": payload}, protocol=proto)
        path = tmp_path / "batch"
        path.write_bytes(blob)
        with pytest.raises(UnsafePickleError, match=refused) as info:
            rd.safe_unpickle(path)
        assert str(path) in str(info.value) and isinstance(info.value, DataError)
        with pytest.raises(UnsafePickleError):
            rd.safe_unpickle(blob, "in-memory")
        assert not sentinel.exists()


def _reduce(func: object, arg: str) -> object:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (func, (arg,))

    return Payload()


def test_malicious_cifar_batch_is_refused(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10", "py")
    sentinel = tmp_path / "sentinel"
    evil = {b"data": _images(1, 0).reshape(1, -1), b"labels": _EvilWriter(str(sentinel))}
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(evil))
    with pytest.raises(UnsafePickleError, match=r"data_batch_2.*_write_sentinel"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    assert not sentinel.exists()


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_safe_unpickle_round_trips_plain_data(tmp_path: Path, proto: int) -> None:
    obj = {
        b"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
        "floats": np.linspace(0, 1, 5, dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "scalar": np.int64(7),
        "nested": [1, 2.5, (3, None), {"a": b"bytes", "b": "str"}, {1, 2}, frozenset({3})],
        "big": 2**70,
        "cplx": 1 + 2j,
        "flags": [True, False],
        "ba": bytearray(b"xy"),
    }
    blob = pickle.dumps(obj, protocol=proto)
    path = tmp_path / "ok.pkl"
    path.write_bytes(blob)
    for source in (blob, path, str(path), io.BytesIO(blob)):
        got = rd.safe_unpickle(source)
        assert set(got) == set(obj)
        for key in ("data", "floats", "fortran"):
            k = b"data" if key == "data" else key
            assert np.array_equal(got[k], obj[k]) and got[k].dtype == obj[k].dtype
        assert got["scalar"] == 7 and got["nested"] == obj["nested"] and got["big"] == 2**70
        assert got["cplx"] == 1 + 2j and got["ba"] == bytearray(b"xy")


def test_safe_unpickle_memo_bomb_and_garbage() -> None:
    # LONG_BINPUT with index 2**32-16 would make the C unpickler allocate a 32 GiB memo table.
    bomb = b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."
    with pytest.raises(DataError, match="memo index"):
        rd.safe_unpickle(bomb, "bomb.pkl")
    bytearray_bomb = b"\x80\x05\x96" + struct.pack("<Q", 1 << 60) + b"."
    with pytest.raises(DataError, match="bomb2"):
        rd.safe_unpickle(bytearray_bomb, "bomb2")
    for garbage in (b"", b"\x80\x04", b"not a pickle", b"\x80\x02}q\x00(U\x04datq"):
        with pytest.raises(DataError):
            rd.safe_unpickle(garbage, "garbage")
    codecs_abuse = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match=r"_codecs\.encode is only allowed"):
        rd.safe_unpickle(codecs_abuse, "codecs")
    with pytest.raises(DataError, match="cannot read"):
        rd.safe_unpickle(Path("/nonexistent/file.pkl"))


def test_safe_unpickle_numpy_edge_cases() -> None:
    # One byte flipped (a NONE turned into POP) in a pickle of two numpy scalars gives numpy's
    # dtype.__setstate__ a 7-tuple; fed to numpy's own reconstructors this segfaults (numpy
    # 2.4, found by fuzzing). The stand-ins only read the dtype code and byte order.
    crasher = bytes.fromhex(
        "80037d7100285801000000667101636e756d70792e5f636f72652e6d756c746961727261790a7363616c"
        "61720a7102636e756d70790a64747970650a71035802000000663471048988877105527106284b035801"
        "0000003c71074e4e4e4affffffff4affffffff4b007471086243040000c03f710986710a52710b580100"
        "000069710c6802680358020000006938710d898887710e52710f284b0368074e304e4affffffff4affff"
        "ffff4b0074711062430803000000000000007111867112527113752e"
    )
    assert rd.safe_unpickle(crasher, "crasher") == {"f": 1.5, "i": 3}
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    got = rd.safe_unpickle(pickle.dumps(big_endian, protocol=2))
    assert got.dtype == np.dtype(">f4") and np.array_equal(got, big_endian) and got.flags.writeable
    for proto in (2, 5):
        with pytest.raises(DataError, match="not a plain numeric type"):
            rd.safe_unpickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=proto))
    with pytest.raises(DataError, match="not a plain numeric type"):
        rd.safe_unpickle(pickle.dumps(np.zeros(2, dtype=[("a", "u1"), ("b", "f4")])))
    with pytest.raises(DataError, match="not callable"):
        rd.safe_unpickle(b"\x80\x02cnumpy\nndarray\nK\x03\x85R.")  # numpy.ndarray((3,))
    blob = pickle.dumps(np.arange(4, dtype=np.int32), protocol=2)
    assert blob.count(b"K\x04\x85") == 1  # the shape (4,) in the array's state
    with pytest.raises(DataError, match="needs 20 bytes, the pickle has 16"):
        rd.safe_unpickle(blob.replace(b"K\x04\x85", b"K\x05\x85"))


_VALID_PICKLES = [
    pickle.dumps(obj, protocol=p)
    for p in (2, 4, 5)
    for obj in (
        {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], "s": "x"},
        {"f": np.float32(1.5), "i": np.int64(3), "a": np.ones((2, 2), dtype=">f8")},
    )
]


@st.composite
def _mutated_pickles(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(st.sampled_from(_VALID_PICKLES)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(blob) - 1))
        blob[pos] = draw(st.integers(0, 255))
    return bytes(blob[: draw(st.integers(0, len(blob)))])


@FUZZ
@given(st.one_of(st.binary(max_size=300), _mutated_pickles()))
def test_fuzz_safe_unpickle_only_raises_reslab_errors(blob: bytes) -> None:
    with contextlib.suppress(ReslabError):
        rd.safe_unpickle(blob, "fuzz")


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path / "mnist", gz=gz)
    ds = rd.load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train_images.numpy()[:, 0], _images(12, 1, (28, 28)))
    assert np.array_equal(ds.test_labels.numpy(), _labels(5, 2, 10))
    assert ds.augment == "none" and ds.classes[0] == "0"


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = rd.load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"


def test_idx_errors(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    _write_mnist(folder)
    images = folder / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is 9423 bytes, expected 9424"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    images.write_bytes(struct.pack(">I", 0x801) + good[4:])
    with pytest.raises(DataError, match=r"magic number 0x00000801, expected 0x00000803"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    images.write_bytes(good)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(4), 0x801)
    with pytest.raises(DataError, match=r"has 4 labels but .* has 5 images"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 4, 10]), 0x801)
    with pytest.raises(DataError, match="label 10 at record 4"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    gz = folder / "t10k-labels-idx1-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte").unlink()
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(DataError, match="truncated or corrupt"):
        rd.load_dataset("mnist", data_dir=tmp_path)


@st.composite
def _idx_files(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    expect = draw(st.sampled_from([idx_mod._IDX_IMAGES, idx_mod._IDX_LABELS]))
    magic = draw(st.one_of(st.sampled_from([expect, 0x803, 0x801]), st.integers(0, 2**32 - 1)))
    ndim = min(magic & 0xFF, 4)
    dims = draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim))
    blob = struct.pack(">I", magic) + struct.pack(f">{ndim}I", *dims)
    blob += draw(st.binary(min_size=math.prod(dims), max_size=math.prod(dims)))
    blob = blob[: draw(st.integers(0, len(blob)))] if draw(st.booleans()) else blob
    gz = draw(st.booleans())
    if gz:
        blob = gzip.compress(blob)
        blob = blob[: draw(st.integers(0, len(blob)))] if draw(st.booleans()) else blob
    return blob, expect, gz


@FUZZ
@given(st.one_of(_idx_files(), st.tuples(st.binary(max_size=64), st.just(0x803), st.booleans())))
def test_fuzz_idx_parser(tmp_path: Path, case: tuple[bytes, int, bool]) -> None:
    blob, magic, gz = case
    path = tmp_path / ("file.gz" if gz else "file")
    path.write_bytes(blob)
    try:
        array = idx_mod._read_idx(path, magic)
    except DataError:
        return
    assert array.dtype == np.uint8 and array.ndim == (magic & 0xFF) and array.size > 0


@st.composite
def _cifar_records(draw: st.DrawFn) -> bytes:
    label_bytes = draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    records = rng.integers(0, 256, (n, label_bytes + 3072), dtype=np.uint8)
    records[:, :label_bytes] = np.array(
        draw(st.lists(st.integers(0, 120), min_size=n * label_bytes, max_size=n * label_bytes))
    ).reshape(n, label_bytes)
    blob = records.tobytes()
    return blob[: len(blob) - draw(st.integers(0, 3))]


@FUZZ
@given(st.one_of(st.binary(max_size=7000), _cifar_records()))
def test_fuzz_cifar_binary_parser(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "batch.bin"
    path.write_bytes(blob)
    for spec in cifar._CIFAR.values():
        try:
            images, labels = cifar._read_cifar_binary(path, spec)
        except DataError:
            continue
        record = spec.label_bytes + 3072
        assert images.shape == (len(blob) // record, 3, 32, 32) and len(labels) == len(images)
        assert int(labels.max()) < spec.num_classes


# ---------------------------------------------------------------------------------------------
# Image folders


def test_imagefolder_resizes_and_crops(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "cat" / "a.png", (40, 20), (255, 0, 0))
    _png(tmp_path / "train" / "cat" / "b.jpg", (16, 16), (0, 0, 255))
    _png(tmp_path / "train" / "dog" / "sub" / "c.png", (20, 64), (0, 255, 0))
    _png(tmp_path / "train" / "dog" / "grey.png", (30, 30), (90, 90, 90), mode="L")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    _png(tmp_path / "test" / "cat" / "d.png", (17, 33), (10, 20, 30))
    _png(tmp_path / "test" / "dog" / "e.png", (50, 50), (1, 2, 3))
    ds = rd.load_dataset("imagefolder", data_dir=tmp_path, image_size=16)
    assert ds.classes == ["cat", "dog"] and ds.augment == "flip" and ds.in_channels == 3
    assert ds.train_images.shape == (4, 3, 16, 16) and ds.test_images.shape == (2, 3, 16, 16)
    assert ds.train_labels.tolist() == [0, 0, 1, 1] and ds.test_labels.tolist() == [0, 1]
    red = ds.train_images[0]
    assert red[0].min() >= 250 and red[1:].max() <= 5
    assert ds.train_images[2].unique().tolist() == [90]  # grey.png sorts before sub/c.png
    assert ds.test_images[0, :, 8, 8].tolist() == [10, 20, 30]

    stream = rd.ImageFolderStream(tmp_path, "test", image_size=8)
    assert len(stream) == 2 and stream.classes == ["cat", "dog"]
    image, label = stream[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and label == 1
    batch = next(iter(torch.utils.data.DataLoader(stream, batch_size=2)))
    assert batch[0].shape == (2, 3, 8, 8) and batch[1].tolist() == [0, 1]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train/ folder"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="has no files"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)
    _png(tmp_path / "train" / "cat" / "a.png", (8, 8), (1, 1, 1))
    _png(tmp_path / "test" / "dog" / "a.png", (8, 8), (1, 1, 1))
    with pytest.raises(DataError, match=r"only in train \['cat'\], only in test \['dog'\]"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "cat")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt is not an image"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").unlink()
    good = (tmp_path / "train" / "cat" / "a.png").read_bytes()
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"broken\.png is not an image"):
        rd.load_dataset("imagefolder", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Augmentation and the device loader


def _reference_augment(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    h, w = image.shape[1:]
    crop = padded[:, 4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]
    return crop[:, :, ::-1] if flip else crop


def test_cifar_augmentation_matches_reference_and_covers_range() -> None:
    images = torch.from_numpy(_images(2000, 7, (3, 12, 10)))
    gen = torch.Generator().manual_seed(0)
    out, shifts, flips = rd.augment_batch(images, "cifar", gen, return_params=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert shifts.abs().max() <= 4
    assert set(shifts[:, 0].tolist()) == set(range(-4, 5)) == set(shifts[:, 1].tolist())
    assert 0.4 < flips.double().mean() < 0.6
    for n in range(300):
        dy, dx = shifts[n].tolist()
        expected = _reference_augment(images[n].numpy(), dy, dx, bool(flips[n]))
        assert np.array_equal(out[n].numpy(), expected), n
    again = rd.augment_batch(images, "cifar", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_marker_pixel_moves_by_the_shift() -> None:
    images = torch.zeros(500, 1, 16, 16, dtype=torch.uint8)
    images[:, 0, 7, 9] = 255
    out, shifts, flips = rd.augment_batch(
        images, "cifar", torch.Generator().manual_seed(1), return_params=True
    )
    for n in range(500):
        rows, cols = torch.nonzero(out[n, 0], as_tuple=True)
        dy, dx = shifts[n].tolist()
        col = 9 - dx
        assert (rows.tolist(), cols.tolist()) == ([7 - dy], [15 - col if flips[n] else col])


def test_flip_and_none() -> None:
    images = torch.from_numpy(_images(2000, 3, (2, 5, 6)))
    out, shifts, flips = rd.augment_batch(
        images, "flip", torch.Generator().manual_seed(2), return_params=True
    )
    assert 0.4 < flips.double().mean() < 0.6 and not shifts.any()
    assert torch.equal(out[flips], images[flips].flip(3))
    assert torch.equal(out[~flips], images[~flips])
    assert rd.augment_batch(images, "none", torch.Generator()) is images
    with pytest.raises(DataError, match="unknown augmentation"):
        rd.augment_batch(images, "mixup", torch.Generator())


def _loader(n: int = 50, **kwargs: object) -> rd.DeviceLoader:
    images = torch.from_numpy(_images(n, 11, (3, 12, 12)))
    labels = torch.arange(n)
    options: dict[str, Any] = {"batch_size": 8, "mean": (0.5,) * 3, "std": (0.25,) * 3, **kwargs}
    return rd.DeviceLoader(images, labels, **options)


def test_loader_keeps_labels_with_images() -> None:
    n = 64
    labels = torch.arange(n) % 10
    # Every pixel of image k holds 10 * label + 5; padding is 0, so the max is the code.
    images = (labels * 10 + 5).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    loader = rd.DeviceLoader(
        images, labels, batch_size=16, mean=(0, 0, 0), std=(1, 1, 1), augment="cifar", seed=5
    )
    seen = 0
    for x, y in loader:
        codes = (x * 255).round().to(torch.int64).amax(dim=(1, 2, 3))
        assert torch.equal(codes, y * 10 + 5)
        assert torch.equal((x[:, :, 16, 16] * 255).round().to(torch.int64)[:, 0], y * 10 + 5)
        seen += len(y)
    assert seen == 64


def test_loader_normalises_and_uses_channels_last() -> None:
    ds = rd.load_dataset("synthetic", synthetic_size=(300, 10), seed=1)
    loader = rd.DeviceLoader(
        ds.train_images, ds.train_labels, batch_size=64, mean=ds.mean, std=ds.std, drop_last=False
    )
    batches = list(loader)
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]
    x = torch.cat([b for b, _ in batches])
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    bf16 = rd.DeviceLoader(
        ds.train_images, ds.train_labels, batch_size=64, mean=ds.mean, std=ds.std,
        dtype=torch.bfloat16, channels_last=False,
    )  # fmt: skip
    xb, _ = next(iter(bf16))
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous()


def test_loader_ranks_shard_one_global_batch() -> None:
    n = 101
    single = [y for _, y in _loader(n, batch_size=16, seed=3, augment="cifar")]
    ranks = [[y for _, y in _loader(n, batch_size=8, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 101 // 16
    for step, whole in enumerate(single):
        a, b = ranks[0][step], ranks[1][step]
        assert not set(a.tolist()) & set(b.tolist())
        assert set(a.tolist()) | set(b.tolist()) == set(whole.tolist())
    # Without drop_last each rank gets the same number of batches and together they cover all.
    padded = [[y for _, y in _loader(n, drop_last=False, rank=r, world_size=3)] for r in range(3)]
    assert len({len(p) for p in padded}) == 1
    assert set(torch.cat([torch.cat(p) for p in padded]).tolist()) == set(range(n))
    tiny = [[y for _, y in _loader(2, drop_last=False, rank=r, world_size=5)] for r in range(5)]
    assert [len(t) for t in tiny] == [1] * 5 and [len(t[0]) for t in tiny] == [1] * 5


def test_loader_epochs_differ_and_repeat() -> None:
    loader = _loader()
    epoch0 = torch.cat([y for _, y in loader])
    epoch1 = torch.cat([y for _, y in loader])  # iterating on moves to the next epoch
    assert loader.epoch == 2 and not torch.equal(epoch0, epoch1)
    assert len(epoch0) == 48 and len(set(epoch0.tolist())) == 48
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0)
    unshuffled = _loader(shuffle=False)
    assert torch.equal(torch.cat([y for _, y in unshuffled]), torch.arange(48))


def test_loader_resumes_mid_epoch_bit_identical() -> None:
    options: dict[str, Any] = {"augment": "cifar", "seed": 9}
    reference: list[tuple[torch.Tensor, torch.Tensor]] = []
    straight = _loader(**options)
    for epoch in range(2):
        straight.set_epoch(epoch)
        reference.extend(straight)
    assert len(reference) == 12

    first = _loader(**options)
    got = []
    for x, y in first:
        got.append((x, y))
        if len(got) == 4:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["batch"]) == (0, 4)

    resumed = _loader(**options)
    resumed.load_state_dict(state)
    for epoch in range(state["epoch"], 2):
        resumed.set_epoch(epoch)  # a training loop's usual call keeps the resume position
        got.extend(resumed)
    assert len(got) == 12
    for (x, y), (rx, ry) in zip(got, reference, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)

    # A state taken after the last batch of an epoch resumes at the next epoch.
    end = _loader(**options)
    for _ in zip(range(6), end, strict=False):
        pass
    late = _loader(**options)
    late.load_state_dict(end.state_dict())
    assert torch.equal(next(iter(late))[0], reference[6][0])


class _HostToDeviceCopies(TorchDispatchMode):
    """Records every op that reads a non-scalar CPU tensor and writes a ``meta`` one."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves = pytree.tree_leaves((args, kwargs))
        ins = [t for t in leaves if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" and t.dim() > 0 for t in ins) and any(
            t.device.type == "meta" for t in outs
        ):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("augment", ["cifar", "flip", "none"])
def test_loader_copies_from_host_once_per_epoch_not_per_batch(augment: str) -> None:
    # The meta device stands in for CUDA: every host-to-device copy is seen, and any read of a
    # device value back to the host (.item(), bool(tensor), nonzero) would raise.
    loader = _loader(200, device="meta", augment=augment, drop_last=False)
    assert len(loader) == 25
    with _HostToDeviceCopies() as spy:
        batches = list(loader)
    assert len(batches) == 25 and batches[0][0].device.type == "meta"
    assert len(spy.ops) == 1, spy.ops
    # Mid-epoch resume: still one copy for the rest of the epoch, then one for the next.
    resumed = _loader(200, device="meta", augment=augment, drop_last=False)
    resumed.load_state_dict({**loader.state_dict(), "epoch": 0, "batch": 10})
    with _HostToDeviceCopies() as spy:
        assert len(list(resumed)) == 15 and len(list(resumed)) == 25
    assert len(spy.ops) == 2, spy.ops


def test_eval_batches_and_normalize_copy_from_host_once() -> None:
    images = torch.from_numpy(_images(200, 4, (3, 6, 6)))
    with _HostToDeviceCopies() as spy:
        batches = list(
            rd.eval_batches(images, torch.arange(200), 8, (0.1,) * 3, (0.7,) * 3, "meta")
        )
    assert len(batches) == 25 and len(spy.ops) <= 4, spy.ops  # images, labels, mean, std
    on_device = images.to("meta")
    with _HostToDeviceCopies() as spy:
        for _ in range(5):
            rd.normalize_batch(on_device, (0.2,) * 3, (0.3,) * 3)
    assert len(spy.ops) <= 2, spy.ops  # mean and std, made once


def test_loader_augmentation_is_augment_batch_with_per_batch_seed() -> None:
    # Drawing a whole epoch up front keeps each batch's values those of augment_batch with a
    # CPU generator seeded from (seed, epoch, batch index, rank), as before the change.
    n, seed, rank = 90, 4, 1
    images = torch.from_numpy(_images(n, 11, (3, 12, 12)))
    loader = _loader(n, augment="cifar", seed=seed, rank=rank, world_size=2, drop_last=False)
    loader.set_epoch(3)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8] * 5 + [5]
    for i, (x, idx) in enumerate(batches):
        gen = torch.Generator().manual_seed(loader_mod._seed_from("aug", seed, 3, i, rank))
        expected = rd.normalize_batch(
            rd.augment_batch(images[idx], "cifar", gen), (0.5,) * 3, (0.25,) * 3
        )
        assert torch.equal(x, expected), i


def test_loader_rejects_mismatched_state_and_tiny_data() -> None:
    state = _loader(seed=1).state_dict()
    with pytest.raises(DataError, match=r"seed=1 \(now 2\)"):
        _loader(seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="incomplete"):
        _loader().load_state_dict({"epoch": 0})
    with pytest.raises(DataError, match="no full batch"):
        _loader(n=7)
    with pytest.raises(DataError, match="rank"):
        _loader(rank=2, world_size=2)


def test_eval_batches_keep_order_and_last_partial_batch() -> None:
    ds = rd.load_dataset("digits")
    batches = list(
        rd.eval_batches(ds.test_images, ds.test_labels, 128, ds.mean, ds.std, channels_last=False)
    )
    assert [len(y) for _, y in batches] == [128, 128, 104]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_labels)
    expected = rd.normalize_batch(ds.test_images, ds.mean, ds.std, channels_last=False)
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
