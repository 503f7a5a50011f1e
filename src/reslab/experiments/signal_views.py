"""The forward signal through depth: signal propagation plots of the ``signal_propagation``
probe entries (Brock, De & Smith 2021, arXiv:2101.08692, Fig. 1), plain vs residual.

Three panels per time (initialisation, trained): the average channel squared mean, the average
channel variance, and the residual branch's variance, each against the block index. A line per
net (seeds of one net: their mean), plain nets dashed, residual nets solid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.report.figures import FigureSpec, array, colours, legend, new_figure, style_of, styled
from reslab.report.stats import nan_mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SIGNAL_PROPAGATION", "signal_figure"]

KIND = "signal_propagation"
_PANELS = (
    ("squared_mean", "average channel squared mean"),
    ("variance", "average channel variance"),
    ("residual_variance", "residual branch variance"),
)
_WHEN = {"init": "at initialisation", "trained": "after training"}


def _lines(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The entries of each net (its seeds), by label, in first-seen order."""
    nets: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        nets.setdefault(str(entry.get("label")), []).append(entry)
    return nets


def _mean(members: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    rows = [array(m.get(key)) for m in members]
    n = min(len(r) for r in rows)
    if n == 0:
        return np.array([], dtype=float)
    mean, _ = nan_mean_std(np.vstack([r[:n] for r in rows]))
    return np.asarray(mean, dtype=float)


@styled
def signal_figure(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """One row per time measured (init, trained), one column per statistic."""
    whens = [w for w in _WHEN if any(e.get("when") == w for e in entries)]
    fig = new_figure(13.5, 3.9 * len(whens))
    axes = fig.subplots(len(whens), 3, squeeze=False)
    palette = colours(list(_lines(entries)))
    for row, when in zip(axes, whens, strict=True):
        nets = _lines([e for e in entries if e.get("when") == when])
        for ax, (key, title) in zip(row, _PANELS, strict=True):
            positive = []
            for name, members in nets.items():
                ys = _mean(members, key)
                if not np.isfinite(ys).any():
                    continue  # a plain net has no residual branch
                style = style_of(str(members[0].get("family")))
                ax.plot(np.arange(1, len(ys) + 1), ys, color=palette[name], label=name,
                        linewidth=1.4, markersize=3, **style)  # fmt: skip
                positive.append(ys[np.isfinite(ys) & (ys > 0)])
            values = np.concatenate(positive) if positive else np.array([])
            if len(values) and values.max() / max(values.min(), 1e-30) > 30:
                ax.set_yscale("log")  # unnormalised nets grow by orders of magnitude
            else:
                ax.set_ylim(bottom=0)  # a variance of 1 ± 1e-5 must not look like a slope
            ax.set_title(f"{title} {_WHEN[when]}", fontsize=9)
            ax.set_xlabel("block (input → output)")
        legend(row[0], loc="best", fontsize=7)
    return fig


def _draw(results: Mapping[str, Any]) -> Figure | None:
    entries = (results.get("probes") or {}).get(KIND) or []
    return signal_figure(entries) if entries else None


SIGNAL_PROPAGATION = FigureSpec(
    "signal_propagation",
    "Signal propagation plots (Brock, De & Smith 2021, Fig. 1): the forward signal's statistics "
    "at the output of every block, on one batch of training images.",
    "Left: the average over channels of each channel's squared mean; middle: of each channel's "
    "variance; right: the variance of the residual branch F(x) before it is added (residual "
    "nets only). In a BN-ReLU residual net each block adds a normalised branch to its "
    "shortcut, so the variance grows steadily through a stage and falls back where the shape "
    "changes; in its plain twin every block's BN resets the signal, so the variance stays "
    "flat — the shortcut carries the signal forward instead of rebuilding it at every block. "
    "Nets without BN show whether their initialisation keeps the signal bounded at depth.",
    _draw,
)
