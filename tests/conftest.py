"""Shared test settings: small, deterministic, and quiet."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep each test process to one intra-op thread so pytest-xdist workers don't fight.
torch.set_num_threads(1)
os.environ.setdefault("RESLAB_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
