"""The figures' common ground: one fixed style, colour-blind-safe colours, deterministic PNGs.

Figure functions elsewhere take plain data (lists of dicts from results.json) and return a
:class:`matplotlib.figure.Figure`; they never touch pyplot or the global backend, and build
their figure inside :func:`style` (or under the :func:`styled` decorator), so the user's
matplotlibrc changes nothing. :func:`figure_png` writes PNG bytes without metadata, so the same
data gives the same bytes. Plain nets are dashed lines with square markers, residual nets solid
lines with circle markers (:data:`FAMILY_STYLE`), and colour (Okabe & Ito 2008) marks the
depth, so the two families stay apart in greyscale too.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.fileio import atomic_write_bytes
from reslab.report.schema import is_number
from reslab.report.stats import group_key, label, nan_mean_std

# matplotlib is imported where a figure is drawn, not here: the study registry (and with it
# every `reslab` command's start-up) imports this module but draws nothing.
if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FAMILY_COLOURS",
    "FAMILY_STYLE",
    "FIGURES_DIR",
    "OKABE_ITO",
    "FigureSpec",
    "array",
    "colours",
    "entry_lines",
    "figure_png",
    "finite",
    "has_values",
    "legend",
    "markevery",
    "new_figure",
    "save_figure",
    "style",
    "style_of",
    "styled",
    "wide_range",
]

FIGURES_DIR = "figures"
DPI = 110
#: Okabe & Ito (2008) colour-blind-safe palette, yellow left out (too pale on white).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
)
FAMILY_COLOURS = {"plain": "#D55E00", "residual": "#0072B2"}
#: Plain = dashed + squares, residual = solid + circles: readable in greyscale.
FAMILY_STYLE: dict[str, dict[str, Any]] = {
    "plain": {"linestyle": "--", "marker": "s"},
    "residual": {"linestyle": "-", "marker": "o"},
}
_OTHER_STYLE: dict[str, Any] = {"linestyle": ":", "marker": "^"}

# Fixed style for every figure, applied only while a figure is built or saved, so results do
# not depend on the user's matplotlibrc and nothing global changes.
_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "legend.framealpha": 0.9,
}


@dataclass(frozen=True)
class FigureSpec:
    """One figure a report may show: ``figures/NAME.png`` with its caption and reading guide.

    ``draw(results)`` builds the figure from a results dict, or returns ``None`` when the
    results hold no data for it (the report then leaves it out and removes a stale PNG).
    """

    name: str
    caption: str
    how_to: str
    draw: Callable[[Mapping[str, Any]], Figure | None]


# --- style and output ----------------------------------------------------------------------------


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The fixed report style, for the duration of the ``with`` block only."""
    import matplotlib

    rc: Any = _RC
    with matplotlib.rc_context(rc):
        yield


def styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the decorated function's figure under :func:`style`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style():
            return fn(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global state), laid out with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`, without metadata, so equal figures give equal bytes."""
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a deterministic PNG (atomically) and return the path."""
    return atomic_write_bytes(path, figure_png(fig))


# --- helpers for plotting results data -----------------------------------------------------------


def style_of(family: str) -> dict[str, Any]:
    """Line style and marker of a family (:data:`FAMILY_STYLE`; dotted triangles otherwise)."""
    return FAMILY_STYLE.get(family, _OTHER_STYLE)


def colours(keys: Sequence[Any]) -> dict[Any, str]:
    """A palette colour per distinct key, in sorted order, cycling past seven."""
    distinct = sorted(set(keys), key=lambda k: (str(type(k)), k))
    return {k: OKABE_ITO[i % len(OKABE_ITO)] for i, k in enumerate(distinct)}


def array(values: Any) -> np.ndarray:
    """A float array of a JSON list, ``None`` as NaN; empty if ``values`` is not a list."""
    if not isinstance(values, Sequence):
        return np.array([], dtype=float)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def has_values(values: Any) -> bool:
    """True if ``values`` is a list with at least one number (not all null)."""
    return isinstance(values, list) and any(is_number(v) for v in values)


def finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points where both coordinates are finite, ``x`` and ``y`` cut to one length."""
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def legend(ax: Axes, handles: Sequence[Any] | None = None, **kw: Any) -> None:
    """A legend of ``handles``, or of the drawn lines if there are any (every run may diverge)."""
    if handles is None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kw)
    else:
        ax.legend(handles=list(handles), **kw)


def markevery(n: int) -> int:
    """About eight markers per line: enough to tell the styles apart, few enough to read."""
    return max(1, n // 8)


def wide_range(entries: Sequence[Mapping[str, Any]], key: str) -> bool:
    """True if the positive values under ``key`` span more than a factor 30 (use a log axis)."""
    ys = np.concatenate([array(e.get(key)) for e in entries] or [np.array([])])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    return bool(len(ys)) and float(ys.max() / ys.min()) > 30


def entry_lines(
    ax: Axes,
    entries: Sequence[Mapping[str, Any]],
    values: Callable[[Mapping[str, Any]], Any],
    log: bool,
) -> int:
    """One line per entry against its index, colour by depth and style by family.

    Entries with the same ``label`` (seeds of one net) are drawn as their mean with a ±1 std
    band. Returns the number of lines drawn; a log axis leaves out values that are not positive.
    """
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        name = str(entry.get("label") or label(group_key(entry), False))
        by_label.setdefault(name, []).append(entry)
    palette = colours([int(e["depth"]) for e in entries])
    drawn = 0
    for name, members in by_label.items():
        ys = [array(values(m)) for m in members]
        if log:
            ys = [np.where(y > 0, y, np.nan) for y in ys]
        n = min(len(y) for y in ys)
        mean, std = nan_mean_std(np.vstack([y[:n] for y in ys])) if len(ys) > 1 else (ys[0], None)
        x, y = finite(np.arange(len(mean), dtype=float), mean)
        if not len(x):
            continue
        colour = palette[int(members[0]["depth"])]
        seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
        ax.plot(
            x,
            y,
            color=colour,
            linewidth=1.6,
            markersize=4,
            markevery=max(1, len(x) // 30),
            label=name + seeds,
            **style_of(str(members[0]["family"])),
        )
        if std is not None:
            sd = std[np.isfinite(mean)]
            low = np.maximum(y - sd, y * 0.1) if log else y - sd  # a log axis stays positive
            ax.fill_between(x, low, y + sd, color=colour, alpha=0.13, linewidth=0)
        drawn += 1
    if log and drawn:
        ax.set_yscale("log")
    return drawn
