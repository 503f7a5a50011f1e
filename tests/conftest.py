"""Shared test settings: small, deterministic, and quiet."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

from reslab.train import TrainConfig, resolve

# Two cores: keep each test process to one intra-op thread so pytest-xdist workers don't fight.
torch.set_num_threads(1)
os.environ.setdefault("RESLAB_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- hypothesis: one profile for every fuzz test ----------------------------------------------
# RESLAB_FUZZ_EXAMPLES=500 for a longer hunt; 40 keeps the default run quick. Function-scoped
# fixtures (tmp_path) are shared by a test's examples on purpose: each example cleans up.
settings.register_profile(
    "reslab",
    max_examples=int(os.environ.get("RESLAB_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("reslab")


# --- the CLI as a user meets it ---------------------------------------------------------------

ONE_LINE = re.compile(r"^reslab( [a-z-]+)?: error: \S")


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """``cli_error(argv)`` runs ``reslab`` in-process and returns its one error line.

    It asserts what every user error must look like: exit code 2, no traceback, exactly one
    line on stderr, ``reslab: error: ...`` (or argparse's ``reslab <command>: error: ...``).
    """

    def run(argv: list[str]) -> str:
        from reslab.cli import main

        code: int | str | None
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert ONE_LINE.match(lines[0]), lines[0]
        return lines[0]

    return run


# --- the trainer's tests: a small real run ------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Callable[..., TrainConfig]:
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
