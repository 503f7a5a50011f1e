"""Tests for reslab.data.imagefolder: class folders read with Pillow, resized and centre-cropped,
eagerly (load_dataset) and lazily (ImageFolderStream), and every folder or file problem named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import reslab.data as rd
from conftest import write_png
from reslab.errors import DataError


def test_imagefolder_resizes_and_crops(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "cat" / "a.png", (40, 20), (255, 0, 0))
    write_png(tmp_path / "train" / "cat" / "b.jpg", (16, 16), (0, 0, 255))
    write_png(tmp_path / "train" / "dog" / "sub" / "c.png", (20, 64), (0, 255, 0))
    write_png(tmp_path / "train" / "dog" / "grey.png", (30, 30), (90, 90, 90), mode="L")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    write_png(tmp_path / "test" / "cat" / "d.png", (17, 33), (10, 20, 30))
    write_png(tmp_path / "test" / "dog" / "e.png", (50, 50), (1, 2, 3))
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
    write_png(tmp_path / "train" / "cat" / "a.png", (8, 8), (1, 1, 1))
    write_png(tmp_path / "test" / "dog" / "a.png", (8, 8), (1, 1, 1))
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
