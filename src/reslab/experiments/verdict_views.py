"""How a verdict's items read in the report: one line per key of results.json's ``verdict``.

Every study's :class:`~reslab.experiments.registry.Views` maps its verdict keys to these
formatters (a gap in points, the gaps of many variants, a seed noise, the tolerance, a yes/no
question, a number); each returns None for a value it cannot show, and the item is left out.
"""

from __future__ import annotations

from typing import Any

from reslab.report import html
from reslab.report.schema import is_number

__all__ = [
    "gap_format",
    "gaps_format",
    "noise_format",
    "number_format",
    "tolerance_format",
    "yes_no_format",
]


def gap_format(family: str, how: str) -> html.ItemFormat:
    """A verdict item for ``plain_gap``/``residual_gap``: signed points, and what was compared."""

    def item(value: Any) -> str | None:
        if not is_number(value):
            return None
        return (
            f"{family} gap: <b>{value:+.2f}</b> percentage points "
            f"(final clean training error, {how})"
        )

    return item


def gaps_format(reference: str) -> html.ItemFormat:
    """A verdict item for ``gaps`` (per variant: its training error minus ``reference``'s, and
    one seed-noise width, null with one seed)."""

    def item(gaps: Any) -> str | None:
        if not isinstance(gaps, dict):
            return None
        listed = ", ".join(
            f"{html.e(k)} {g['gap']:+.1f}"
            + (f" ± {g['noise']:.1f}" if is_number(g.get("noise")) else "")
            for k, g in gaps.items()
            if isinstance(g, dict) and is_number(g.get("gap"))
        )
        return f"training error minus {reference}, points (± one seed-noise width): {listed}"

    return item


def noise_format(value: Any) -> str | None:
    """A verdict item for a gap's seed noise: its one width, or unknown with one seed."""
    if is_number(value):
        return f"its seed noise (one std): {value:.2f} points"
    return "its seed noise: <b>unknown</b> (one seed; --seeds 0,1 measures it)"


def tolerance_format(value: Any) -> str | None:
    return f"tolerance: {value:.2f} percentage points" if is_number(value) else None


def yes_no_format(question: str) -> html.ItemFormat:
    """A verdict item for a true/false key: ``question: yes`` (or no); None for a non-bool."""

    def item(value: Any) -> str | None:
        return f"{question}: <b>{'yes' if value else 'no'}</b>" if isinstance(value, bool) else None

    return item


def number_format(what: str, spec: str = "+.2f", unit: str = " points") -> html.ItemFormat:
    """A verdict item for a number: ``what: value`` in ``spec``, then ``unit``."""

    def item(value: Any) -> str | None:
        return f"{what}: <b>{value:{spec}}</b>{unit}" if is_number(value) else None

    return item
