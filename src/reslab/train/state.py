"""What a run carries from step to step: the running sums and the checkpointed state.

:class:`Running` sums one epoch's loss and errors on the device (no host sync per step).
:class:`TrainState` is everything ``checkpoints/last.json`` records besides the tensors, with
``state_dict``/``load_state_dict`` as the one place that says what a checkpoint holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reslab.data import DeviceLoader
from reslab.train.distributed import Dist
from reslab.train.run_folder import get_rng_state, now, set_rng_state
from reslab.train.schedule import Schedule

__all__ = ["Running", "TrainState"]


class Running:
    """Sums of one epoch's training loss and errors, kept on the device: no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.errors = torch.zeros((), dtype=torch.int64, device=device)
        self.window_errors = torch.zeros((), dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # global step on device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.count = 0  # images this epoch (host int: known without a sync)
        self.window_count = 0

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        loss = loss.detach().float()
        wrong = (logits.argmax(1) != y).sum()
        self.loss += loss * y.shape[0]
        self.errors += wrong
        self.window_errors += wrong
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.step += 1
        self.count += y.shape[0]
        self.window_count += y.shape[0]

    def totals(self, dist: Dist | None) -> tuple[float, int, int, int]:
        """(loss sum, errors, images, first non-finite step or -1): one sync.

        Summed over all ranks when ``dist`` is given (every rank must call it then); this
        rank's alone when it is None.
        """
        packed = torch.stack(
            [
                self.loss,
                self.errors.double(),
                torch.tensor(float(self.count), dtype=torch.float64, device=self.device),
            ]
        )
        bad = self.first_bad.clone()
        if dist is not None and dist.enabled:
            torch.distributed.all_reduce(packed)
            # -1 means none: reduce max over (step if bad else -1) misses earlier bad steps on
            # other ranks only by at most one step, as NaN gradients spread to every rank.
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        loss, errors, count = packed.tolist()
        return loss, int(errors), int(count), int(bad)

    def take_window(self, dist: Dist) -> float:
        """Training error (%) over the steps since the last call, all ranks; resets the window."""
        packed = torch.stack(
            [
                self.window_errors.double(),
                torch.tensor(float(self.window_count), dtype=torch.float64, device=self.device),
            ]
        )
        if dist.enabled:
            torch.distributed.all_reduce(packed)
        errors, count = packed.tolist()
        self.window_errors.zero_()
        self.window_count = 0
        return 100.0 * errors / max(count, 1.0)

    def reset_epoch(self) -> None:
        self.loss.zero_()
        self.errors.zero_()
        self.count = 0

    def state(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "errors": int(self.errors),
            "count": self.count,
            "window_errors": int(self.window_errors),
            "window_count": self.window_count,
        }

    def load(self, state: dict[str, Any], step: int) -> None:
        self.loss.fill_(state["loss"])
        self.errors.fill_(state["errors"])
        self.count = int(state["count"])
        self.window_errors.fill_(state["window_errors"])
        self.window_count = int(state["window_count"])
        self.step.fill_(step)


@dataclass
class TrainState:
    """The progress of one run: step, history, best error, and the stateful parts it drives."""

    schedule: Schedule  # learning rate, and the warm-up-until-error switch
    loader: DeviceLoader  # epoch and batch position, augmentation seeds
    running: Running  # this epoch's sums so far
    step: int = 0  # optimizer steps taken
    best_error: float | None = None  # lowest held-out error so far
    records: list[dict[str, Any]] = field(default_factory=list)  # one per finished epoch
    wall_before: float = 0.0  # wall time of earlier sessions of this run (before a resume)
    started: float = field(default_factory=time.perf_counter)  # this session's start

    def wall_time(self) -> float:
        """Seconds this run has trained, over every session."""
        return self.wall_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        """The JSON state of ``last.json`` (the run folder adds step, files and hashes)."""
        return {
            "epoch": self.loader.epoch,
            "loader": self.loader.state_dict(),
            "rng": get_rng_state(),
            **self.schedule.state_dict(),
            "best_error": self.best_error,
            "records": self.records,
            "running": self.running.state(),
            "wall_time": self.wall_time(),
            "saved": now(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a committed checkpoint's state (RNGs included)."""
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.schedule.load_state_dict(state)
        self.best_error, self.records = state["best_error"], list(state["records"])
        self.wall_before = float(state["wall_time"])
        self.running.load(state["running"], self.step)
