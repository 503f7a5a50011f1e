"""Tests for reslab.data.digits: the bundled UCI digits load offline, split per class."""

from __future__ import annotations

import torch

import reslab.data as rd


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
