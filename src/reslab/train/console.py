"""What a run prints and logs: a progress bar on a terminal, one line per epoch, TensorBoard.

Every line goes through :mod:`reslab.output`, the one writer: a closed pipe or a stream that
cannot encode ``×`` stops or narrows what is shown, never the run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from reslab.checks import printable
from reslab.output import bar_stream, say

__all__ = ["Reporter", "fmt", "tensorboard_writer"]


class Reporter:
    """Console output: a rich progress bar on a terminal, else one plain line per epoch."""

    def __init__(self, quiet: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        if not self.enabled or self.quiet or not _isatty(sys.stderr):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            transient=True,
            console=Console(file=bar_stream(), markup=False, highlight=False),
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, stats="")

    @property
    def wants_stats(self) -> bool:
        return self.bar is not None

    def step(self, step: int, epoch: int, stats: str | None = None) -> None:
        if self.bar is not None:
            fields = {"stats": stats} if stats is not None else {}
            self.bar.update(self.task, completed=step, description=f"epoch {epoch}", **fields)

    def line(self, text: str, always: bool = False) -> None:
        if not self.enabled or (self.quiet and not always):
            return
        if self.bar is not None:
            # markup=False: a "[/]" in a path is text, not rich markup (a MarkupError)
            self.bar.console.print(printable(text), markup=False, highlight=False)
        else:
            say(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _isatty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (OSError, ValueError):  # a closed stream
        return False


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tensorboard_writer(path: Path, wanted: bool, report: Reporter) -> Any:
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        report.line(
            "tensorboard is not installed (pip install 'reslab[tensorboard]'); "
            "logging to metrics.jsonl/csv only",
            always=True,
        )
        return None
    return SummaryWriter(log_dir=str(path / "tb"))
