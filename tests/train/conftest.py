"""Fixtures of the trainer's tests: a small real run configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reslab.train import TrainConfig, resolve

SmallConfig = Callable[..., TrainConfig]


@pytest.fixture
def small(tmp_path: Path) -> SmallConfig:
    """resnet20 at quarter width on digits: a real net that trains in about a second.

    ``small(name="run", **fields)`` resolves a config whose run folder is ``tmp_path / name``.
    """

    def make(name: str = "run", **kw: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "model": "resnet20",
            "width": 0.25,
            "dataset": "digits",
            "epochs": 2,
            "batch_size": 64,
            "threads": 1,
            "quiet": True,
            "out": str(tmp_path / name),
            **kw,
        }
        return resolve(values)

    return make
