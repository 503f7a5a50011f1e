"""The learning rate as a function of the step, with He et al.'s warm-up until an error.

:func:`lr_at` is the schedule proper, a pure function of the step. :class:`Schedule` adds the
one piece of state a run has: "warm up at ``warmup_lr`` until the training error falls below
``warmup_until_error``" (He et al. 2015, arXiv:1512.03385, §4.2, for ResNet-110), whose end
step depends on the run and is saved in each checkpoint through :meth:`Schedule.state_dict`.
"""

from __future__ import annotations

import math
from typing import Any

from reslab.train.config import TrainConfig

__all__ = ["WARMUP_CHECK_EVERY", "Schedule", "lr_at"]

# Warm-up until error reads the training error of the last this-many steps: one host sync per
# window, and only while warming up.
WARMUP_CHECK_EVERY = 20


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate for 0-based ``step`` of ``total_steps``: a pure function, so resuming needs
    no scheduler state.

    * a linear warm-up over ``warmup_steps`` reaches ``lr`` at step ``warmup_steps - 1``;
    * ``multistep``: ``lr * gamma**k`` after the k-th milestone (fractions of the total:
      the paper's 32k and 48k of 64k are ``[0.5, 0.75]``);
    * ``cosine``: half a cosine from ``lr`` to 0 over the steps after the warm-up;
    * ``onecycle``: linear up to ``lr`` (over ``warmup_steps``, or 25 % of the run), then
      linearly down to 0;
    * ``constant``: ``lr``.
    """
    base, warm = config.lr, config.warmup_steps
    if config.schedule == "onecycle":
        peak = warm or max(1, round(0.25 * total_steps))
        if step < peak:
            return base * (step + 1) / peak
        return base * max(0.0, (total_steps - step) / max(1, total_steps - peak))
    if step < warm:
        return base * (step + 1) / warm
    if config.schedule == "multistep":
        passed = sum(step >= round(m * total_steps) for m in config.milestones)
        return base * config.gamma**passed
    if config.schedule == "cosine":
        t = (step - warm) / max(1, total_steps - warm)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return base


class Schedule:
    """The learning rate of each step of one run: :func:`lr_at`, or ``warmup_lr`` while warming.

    ``warming`` is on from the start when ``warmup_until_error`` is set and goes off, for good,
    at the first :meth:`observe` whose window error is below it; ``warmup_end`` records that step.
    """

    def __init__(self, config: TrainConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.warming = config.warmup_until_error is not None
        self.warmup_end: int | None = None

    def lr(self, step: int) -> float:
        """The learning rate of 0-based ``step``."""
        if self.warming:
            return self.config.warmup_lr
        return lr_at(self.config, step, self.total_steps)

    def checks_at(self, step: int) -> bool:
        """Whether the warm-up wants the window error after ``step`` steps (a host sync)."""
        return self.warming and step % WARMUP_CHECK_EVERY == 0

    def observe(self, step: int, window_error: float) -> bool:
        """Feed the training error (%) of the last window; True when the warm-up ends now."""
        threshold = self.config.warmup_until_error
        assert threshold is not None, "observe() is called only while warming up"
        if math.isfinite(window_error) and window_error < threshold:
            self.warming, self.warmup_end = False, step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"warming": self.warming, "warmup_end": self.warmup_end}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warming = bool(state["warming"])
        self.warmup_end = state["warmup_end"]
