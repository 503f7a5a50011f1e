"""One rule for every verdict: a difference counts only beyond the tolerance and the seed noise.

Every study compares means over seeds — training errors, lesion errors, sharpness, gradient
correlations. A gap between two means counts only when it is larger than the study's tolerance
*and* larger than twice its seed noise: the two means' seed standard deviations added in
quadrature (the spread of the gap if the two are independent), doubled for a band that one
unlucky seed does not cross. With a single seed the noise is unknown: the gap is judged by the
tolerance alone, and the verdict says so. Each verdict names what it compared and the numbers.

And a comparison of nets that have not learned says nothing about the nets, only about the
budget: with ``--lr 1e-7`` every net stays at chance, and the gap between two of them is noise
(one seed and one epoch once "showed" degradation as 88.8 vs 89.9 % training error). A net has
learned when its error is below chance by more than :data:`CHANCE_MARGIN`; a verdict whose
reference nets have not is inconclusive, says why and what to do (:func:`not_learned`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reslab.report.stats import mean_std

__all__ = [
    "CHANCE_MARGIN",
    "NOISE_WIDTHS",
    "Gap",
    "chance_error",
    "gap_of_rows",
    "gap_of_values",
    "not_learned",
]

# How many noise widths a gap must clear: twice the seed noise (a ~95 % band for a normal spread).
NOISE_WIDTHS = 2.0
# Points of error below chance a net must reach to count as having learned anything (on ten
# classes: below 80 %). A net stuck within it is not a result about its architecture.
CHANCE_MARGIN = 10.0


def chance_error(classes: int) -> float:
    """The error, in percent, of guessing among ``classes`` classes."""
    return 100.0 * (1.0 - 1.0 / max(1, classes))


def not_learned(
    rows: Sequence[Mapping[str, Any]],
    chance: float | None,
    key: str = "clean_train_error",
    what: str = "training error",
) -> dict[str, Any] | None:
    """The inconclusive verdict when a net of ``rows`` (summary rows with ``{key}_mean``) has
    not learned: its mean error is within :data:`CHANCE_MARGIN` of ``chance``; None when every
    one has (or ``chance`` is unknown). Pass the nets the verdict must trust: its references
    (a deep plain net stuck at chance while the shallow one learned *is* degradation)."""
    if chance is None:
        return None
    stuck = [
        r
        for r in rows
        if isinstance(r.get(f"{key}_mean"), int | float)
        and float(r[f"{key}_mean"]) >= chance - CHANCE_MARGIN
    ]
    if not stuck:
        return None
    names = ", ".join(f"{r.get('label')} ({float(r[f'{key}_mean']):.1f} %)" for r in stuck)
    one = len(stuck) == 1
    has, them = ("has", "it") if one else ("have", "them")
    return {
        "text": f"inconclusive: {names} {has} not learned ({what} within {CHANCE_MARGIN:g} "
        f"points of chance, {chance:.1f} %), so comparing {them} says nothing about the nets; "
        "train longer (--epochs or --steps), check --lr, and use two or more --seeds",
        "inconclusive": True,
        "chance_error": round(chance, 4),
        "chance_margin": CHANCE_MARGIN,
    }


@dataclass(frozen=True)
class Gap:
    """``a - b`` for two means over seeds, and whether that difference counts."""

    a: float  # the first mean (e.g. the deep net's training error)
    b: float  # the second mean
    a_std: float | None  # seed standard deviation of ``a``; None with one seed
    b_std: float | None
    tolerance: float  # the smallest difference that means anything, in the numbers' unit
    unit: str = "points"  # how to name the difference in text
    digits: int = 1  # decimals shown for the gap and the noise (2 for correlations)

    @property
    def value(self) -> float:
        return self.a - self.b

    @property
    def seed_noise(self) -> float | None:
        """The gap's seed noise (the two stds in quadrature); None when a side has one seed."""
        if self.a_std is None or self.b_std is None:
            return None
        return math.hypot(self.a_std, self.b_std)

    @property
    def noise(self) -> float | None:
        """What the gap must clear besides the tolerance: twice its seed noise."""
        one = self.seed_noise
        return None if one is None else NOISE_WIDTHS * one

    @property
    def bar(self) -> float:
        """What the gap must exceed: the tolerance and, when known, twice the seed noise."""
        return max(self.tolerance, self.noise or 0.0)

    def exceeds(self) -> bool:
        """``a`` is larger than ``b`` by more than the bar (e.g. "trains worse")."""
        return self.value > self.bar

    def differs(self) -> bool:
        """``a`` and ``b`` differ, either way, by more than the bar."""
        return abs(self.value) > self.bar

    def why(self) -> str:
        """The numbers behind the judgement, e.g. "a gap of 62.0 points, beyond the
        tolerance (1.0) and twice the seed noise (30.2)"."""
        d = self.digits
        gap = f"a gap of {self.value:.{d}f} {self.unit}"
        noise = self.noise
        unknown = "; one seed, so the seed noise is unknown"
        tolerance = f"the tolerance ({self.tolerance:g})"
        if abs(self.value) <= self.tolerance:
            return f"{gap}, within {tolerance}" + ("" if noise is not None else unknown)
        if noise is None:
            return f"{gap}, beyond {tolerance}{unknown}"
        if abs(self.value) <= noise:
            return f"{gap}, within twice the seed noise ({noise:.{d}f})"
        return f"{gap}, beyond {tolerance} and twice the seed noise ({noise:.{d}f})"

    def as_json(self, prefix: str) -> dict[str, Any]:
        """``{prefix}_gap``, ``{prefix}_gap_noise`` (one noise width; None with one seed)."""
        one = self.seed_noise
        return {
            f"{prefix}_gap": round(self.value, 4),
            f"{prefix}_gap_noise": None if one is None else round(one, 4),
        }


def gap_of_values(
    a: Sequence[float],
    b: Sequence[float],
    tolerance: float,
    unit: str = "points",
    digits: int = 1,
) -> Gap:
    """The gap between the means of two lists of per-seed values (finite ones only)."""

    def stats(values: Sequence[float]) -> tuple[float, float | None]:
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        mean, std = mean_std(finite)
        if mean is None:
            raise ValueError("a gap needs at least one finite value on each side")
        return mean, std if len(finite) > 1 else None

    (ma, sa), (mb, sb) = stats(a), stats(b)
    return Gap(ma, mb, sa, sb, tolerance, unit, digits)


def gap_of_rows(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    key: str,
    tolerance: float,
    unit: str = "points",
    digits: int = 1,
) -> Gap:
    """The gap between two summary rows' ``{key}_mean``, their noise from ``{key}_std`` (a row
    of one seed, ``n_seeds`` < 2, has no noise)."""

    def std(row: Mapping[str, Any]) -> float | None:
        value = row.get(f"{key}_std")
        if int(row.get("n_seeds") or 1) < 2 or value is None:
            return None
        return float(value)

    mean_a, mean_b = float(a[f"{key}_mean"]), float(b[f"{key}_mean"])
    return Gap(mean_a, mean_b, std(a), std(b), tolerance, unit, digits)
