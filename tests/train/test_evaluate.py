"""The one evaluation: every image counted once, confusion matrix and per-class errors."""

from __future__ import annotations

import math

import pytest
import torch

from reslab.models import create_model
from reslab.train import (
    evaluate,
)


def test_evaluate_counts_every_image() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25, num_classes=10, in_channels=1)
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37) % 10
    result = evaluate(model, images, labels, mean=(0.5,), std=(0.25,), batch_size=8)
    assert result.n == 37 and int(result.confusion.sum()) == 37
    assert result.confusion.shape == (10, 10)
    correct = int(result.confusion.diagonal().sum())
    assert result.error == pytest.approx(100 * (37 - correct) / 37)
    assert math.isfinite(result.loss)
    per_class = result.per_class_error()
    assert len(per_class) == 10 and all(0 <= e <= 100 for e in per_class)
    assert model.training  # evaluate() restores the mode
