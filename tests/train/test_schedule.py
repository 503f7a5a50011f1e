"""The learning-rate schedule, the paper's warm-up until error included."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from reslab.train import (
    Schedule,
    TrainConfig,
    fit,
    lr_at,
    resolve,
)
from reslab.train.schedule import WARMUP_CHECK_EVERY


def test_multistep_is_the_papers_schedule() -> None:
    c = resolve({"dataset": "cifar10", "recipe": "paper-cifar"})
    total = c.steps
    assert total == 64_000
    assert lr_at(c, 0, total) == pytest.approx(0.1)
    assert lr_at(c, 31_999, total) == pytest.approx(0.1)
    assert lr_at(c, 32_000, total) == pytest.approx(0.01)
    assert lr_at(c, 47_999, total) == pytest.approx(0.01)
    assert lr_at(c, 48_000, total) == pytest.approx(0.001)
    assert lr_at(c, 63_999, total) == pytest.approx(0.001)


def test_cosine_with_warmup() -> None:
    c = TrainConfig(lr=0.2, schedule="cosine", warmup_steps=10)
    assert lr_at(c, 0, 110) == pytest.approx(0.02)
    assert lr_at(c, 4, 110) == pytest.approx(0.1)
    assert lr_at(c, 9, 110) == pytest.approx(0.2)
    assert lr_at(c, 10, 110) == pytest.approx(0.2)  # cosine starts at the peak
    assert lr_at(c, 60, 110) == pytest.approx(0.1)  # half-way down
    assert lr_at(c, 110, 110) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_and_constant() -> None:
    c = TrainConfig(lr=0.4, schedule="onecycle")
    assert lr_at(c, 0, 100) == pytest.approx(0.4 / 25)
    assert lr_at(c, 24, 100) == pytest.approx(0.4)  # peak at 25 % of the run
    assert lr_at(c, 25, 100) == pytest.approx(0.4)
    assert lr_at(c, 62, 100) == pytest.approx(0.4 * 38 / 75)
    assert lr_at(c, 100, 100) == 0.0
    c = TrainConfig(lr=0.4, schedule="onecycle", warmup_steps=10)
    assert lr_at(c, 9, 100) == pytest.approx(0.4)
    assert lr_at(c, 55, 100) == pytest.approx(0.2)
    c = TrainConfig(lr=0.3, schedule="constant", warmup_steps=3)
    assert [lr_at(c, s, 50) for s in (0, 1, 2, 3, 49)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


@pytest.mark.slow
def test_warmup_until_error_switches_back(
    small: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    config = small(
        epochs=4,
        schedule="constant",
        warmup_steps=0,
        lr=0.1,
        warmup_until_error=80.0,
        warmup_lr=0.01,
    )
    history = fit(config)
    end = history.final["warmup_end_step"]
    steps_per_epoch = 1437 // 64
    assert end is not None and end % WARMUP_CHECK_EVERY == 0
    first = history.records[0]
    assert first["lr"] == (0.01 if end > steps_per_epoch else 0.1)
    assert history.records[-1]["lr"] == 0.1
    # A threshold no net reaches keeps the warm-up learning rate to the end.
    history = fit(dataclasses.replace(config, out=str(tmp_path / "never"), warmup_until_error=0.01))
    assert history.final["warmup_end_step"] is None
    assert {r["lr"] for r in history.records} == {0.01}


def test_schedule_warms_up_until_the_error_then_follows_lr_at() -> None:
    config = resolve({"warmup_until_error": 80.0, "warmup_lr": 0.01, "schedule": "constant"})
    sched = Schedule(config, 1000)
    assert sched.lr(0) == 0.01 and sched.checks_at(WARMUP_CHECK_EVERY)
    assert not sched.checks_at(WARMUP_CHECK_EVERY + 1)
    assert not sched.observe(20, float("nan"))  # an unknown error never ends the warm-up
    assert not sched.observe(20, 85.0)
    assert sched.observe(40, 79.0)
    assert (sched.warming, sched.warmup_end) == (False, 40)
    assert sched.lr(41) == lr_at(config, 41, 1000) == config.lr
    assert not sched.checks_at(60)
    again = Schedule(config, 1000)
    again.load_state_dict(sched.state_dict())
    assert again.lr(41) == sched.lr(41) and again.warmup_end == 40
    # Without warmup_until_error the schedule is lr_at itself.
    plain = Schedule(resolve({}), 500)
    assert [plain.lr(s) for s in (0, 250, 499)] == [
        lr_at(plain.config, s, 500) for s in (0, 250, 499)
    ]
