"""Tests for reslab.data.cifar: both CIFARs in both official versions (binary and python
batches), from folders and archives, with every structural check on small files written here."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reslab.data as rd
from conftest import random_images, tar_folder, write_cifar
from reslab.data import cifar
from reslab.errors import DataError


@pytest.mark.parametrize(
    ("name", "fmt"), [(n, f) for n in ("cifar10", "cifar100") for f in ("bin", "py")]
)
def test_cifar_round_trip(tmp_path: Path, name: str, fmt: str) -> None:
    tr_i, tr_l, te_i, te_l = write_cifar(tmp_path, name, fmt)
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
    write_cifar(tmp_path / "a", "cifar10", "bin")
    names = [f"c{i}" for i in range(10)]
    (tmp_path / "a" / "cifar-10-batches-bin" / "batches.meta.txt").write_text(
        "\n".join(names) + "\n\n"
    )
    assert rd.load_dataset("cifar10", data_dir=tmp_path / "a").classes == names

    write_cifar(tmp_path / "b", "cifar100", "py", proto=4)
    fine = [f"fine{i}".encode() for i in range(100)]
    meta = {b"fine_label_names": fine, b"coarse_label_names": [b"x"] * 20}
    (tmp_path / "b" / "cifar-100-python" / "meta").write_bytes(pickle.dumps(meta))
    ds = rd.load_dataset("cifar100", data_dir=tmp_path / "b")
    assert ds.classes == [f"fine{i}" for i in range(100)]

    write_cifar(tmp_path / "c", "cifar10", "py")
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

    images = random_images(3, 5)
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
    write_cifar(tmp_path, "cifar10", "bin")
    victim = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is 61360 bytes.*3073-byte"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    victim.write_bytes(b"")
    with pytest.raises(DataError, match=r"data_batch_3\.bin is 0 bytes"):
        rd.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_labels_out_of_range(tmp_path: Path) -> None:
    write_cifar(tmp_path / "a", "cifar10", "bin")
    batch = tmp_path / "a" / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(batch.read_bytes())
    raw[3073 * 2] = 10  # record 2's label
    batch.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin: label 10 at record 2 is outside 0\.\.9"):
        rd.load_dataset("cifar10", data_dir=tmp_path / "a")

    write_cifar(tmp_path / "b", "cifar100", "py")
    bad = {b"data": random_images(2, 0).reshape(2, -1), b"fine_labels": [3, 100]}
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
    write_cifar(tmp_path, "cifar10", "py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        rd.load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar_reads_archive_in_data_dir(tmp_path: Path, fmt: str) -> None:
    tr_i, _, _, te_l = write_cifar(tmp_path / "src", "cifar10", fmt)
    spec = cifar._CIFAR["cifar10"]
    folder, archive = (
        (spec.py_dir, spec.py_archive) if fmt == "py" else (spec.bin_dir, spec.bin_archive)
    )
    root = tmp_path / "root"
    root.mkdir()
    tar_folder(root / archive, tmp_path / "src" / folder)
    ds = rd.load_dataset("cifar10", data_dir=root, download=False)
    assert np.array_equal(ds.train_images.numpy(), tr_i)
    assert np.array_equal(ds.test_labels.numpy(), te_l)
    assert sorted(p.name for p in root.iterdir()) == sorted([archive, folder])  # no temp left


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
