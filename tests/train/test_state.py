"""TrainState: what a checkpoint records besides tensors, saved and restored in one place."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from reslab.data import DeviceLoader
from reslab.train import Schedule, resolve
from reslab.train.state import Running, TrainState


def _state() -> TrainState:
    config = resolve({"warmup_until_error": 50.0})
    images = torch.zeros(8, 1, 4, 4, dtype=torch.uint8)
    loader = DeviceLoader(
        images, torch.arange(8) % 2, batch_size=2, mean=(0.5,), std=(0.5,), device="cpu", seed=1
    )
    return TrainState(Schedule(config, 100), loader, Running(torch.device("cpu")))


def test_state_dict_round_trips_through_json() -> None:
    a = _state()
    a.loader.set_epoch(2)
    next(iter(a.loader))
    a.running.add(torch.tensor(0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    a.step, a.best_error, a.records = 7, 12.5, [{"epoch": 1, "step": 4}]
    a.schedule.observe(7, 10.0)
    saved = json.loads(json.dumps({"step": a.step, **a.state_dict()}))  # as last.json holds it
    expected_draws = (torch.rand(3), np.random.rand(), random.random())

    b = _state()
    torch.manual_seed(99)  # other RNG states: load_state_dict must bring the saved ones back
    b.load_state_dict(saved)
    assert (b.step, b.best_error, b.records) == (7, 12.5, [{"epoch": 1, "step": 4}])
    assert (b.schedule.warming, b.schedule.warmup_end) == (False, 7)
    assert b.loader.state_dict() == a.loader.state_dict()
    assert b.running.state() == a.running.state() and int(b.running.step) == 7
    assert b.wall_time() >= saved["wall_time"]
    draws = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
