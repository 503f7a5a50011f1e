"""Tests for reslab.data.idx: MNIST and Fashion-MNIST IDX files, plain and gzipped, in reslab's
and torchvision's layouts, and the IDX parser's checks (including a fuzzer)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reslab.data as rd
from conftest import random_images, random_labels, write_idx, write_mnist
from reslab.data import idx
from reslab.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path / "mnist", gz=gz)
    ds = rd.load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train_images.numpy()[:, 0], random_images(12, 1, (28, 28)))
    assert np.array_equal(ds.test_labels.numpy(), random_labels(5, 2, 10))
    assert ds.augment == "none" and ds.classes[0] == "0"


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = rd.load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"


def test_idx_errors(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_mnist(folder)
    images = folder / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-1])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is 9423 bytes, expected 9424"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    images.write_bytes(struct.pack(">I", 0x801) + good[4:])
    with pytest.raises(DataError, match=r"magic number 0x00000801, expected 0x00000803"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    images.write_bytes(good)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(4), 0x801)
    with pytest.raises(DataError, match=r"has 4 labels but .* has 5 images"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 4, 10]), 0x801)
    with pytest.raises(DataError, match="label 10 at record 4"):
        rd.load_dataset("mnist", data_dir=tmp_path)
    gz = folder / "t10k-labels-idx1-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte").unlink()
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(DataError, match="truncated or corrupt"):
        rd.load_dataset("mnist", data_dir=tmp_path)


@st.composite
def _idx_files(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    expect = draw(st.sampled_from([idx._IDX_IMAGES, idx._IDX_LABELS]))
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


@given(st.one_of(_idx_files(), st.tuples(st.binary(max_size=64), st.just(0x803), st.booleans())))
def test_fuzz_idx_parser(tmp_path: Path, case: tuple[bytes, int, bool]) -> None:
    blob, magic, gz = case
    path = tmp_path / ("file.gz" if gz else "file")
    path.write_bytes(blob)
    try:
        array = idx._read_idx(path, magic)
    except DataError:
        return
    assert array.dtype == np.uint8 and array.ndim == (magic & 0xFF) and array.size > 0
