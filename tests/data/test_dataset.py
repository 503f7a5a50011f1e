"""Tests for reslab.data.dataset: the Dataset container, holdout, the data folder, the
synthetic dataset and load_dataset's dispatch and argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import reslab.data as rd
from reslab.errors import DataError


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
