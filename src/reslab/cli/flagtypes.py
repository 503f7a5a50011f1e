"""The ``type=`` of the generated flags that are lists: torch-free, so a parser built from
:mod:`reslab.cli.index` checks a flag's text without importing the trainer."""

from __future__ import annotations

import argparse
import math

from reslab.checks import shown


def floats(text: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]``; argparse reports anything else in one line."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {shown(text)}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {shown(text)}")
    return values


def ints(text: str) -> list[int]:
    """``"30,60"`` -> ``[30, 60]``; argparse reports anything else in one line."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {shown(text)}"
        ) from None
