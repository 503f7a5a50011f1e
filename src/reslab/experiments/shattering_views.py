"""The shattering study's views: its figures, its table and the section of results.json
they read, by the kinds of net (``KINDS``) :mod:`reslab.experiments.shattering` measures; that
module names this one on its ``STUDY`` record (``views=``) instead of importing it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from reslab.checks import NUMBER, NUMBERS, SPREAD, Object, at_least, maybe, objects, one_of
from reslab.experiments.registry import Views
from reslab.experiments.shattering import KIND_NAMES, KINDS
from reslab.report import html
from reslab.report.figures import (
    FAMILY_COLOURS,
    FigureSpec,
    array,
    colours,
    finite,
    legend,
    new_figure,
    style_of,
    styled,
)
from reslab.report.schema import FAMILIES, LABELLED, is_number

__all__ = ["FIGURES", "tables"]


# --- figures -------------------------------------------------------------------------------------


def _nets(results: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    return list(((results.get("shattering") or {}).get(kind) or {}).get("nets") or [])


def _rows(results: Mapping[str, Any], kind: str | None = None) -> list[Mapping[str, Any]]:
    rows = (results.get("shattering") or {}).get("summary") or []
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _gradients_figure(kind: str) -> Callable[[Mapping[str, Any]], Any]:
    @styled
    def draw(results: Mapping[str, Any]) -> Any:
        nets = [n for n in _nets(results, kind) if n.get("gradients")]
        depths = sorted({int(n["depth"]) for n in nets})
        families = [f for f in FAMILIES if any(n["family"] == f for n in nets)]
        if not depths:
            return None
        fig = new_figure(1.9 * len(depths) + 0.6, 1.7 * len(families) + 0.5)
        axes = fig.subplots(len(families), len(depths), squeeze=False, sharex=True)
        positions = array(((results.get("shattering") or {}).get(kind) or {}).get("positions"))
        for (i, family), (j, depth) in itertools.product(enumerate(families), enumerate(depths)):
            ax = axes[i, j]
            title = ""
            for net in (n for n in nets if n["family"] == family and int(n["depth"]) == depth):
                title = str(net["label"])
                g = array(net["gradients"])
                sd = float(np.nanstd(g))
                x, y = finite(positions, g / sd if sd > 0 else g)
                ax.plot(x, y, color=FAMILY_COLOURS.get(family), linewidth=0.8)
                title += f", r₁ {net['lag1']:.2f}" if is_number(net.get("lag1")) else ""
            ax.set_title(title, fontsize=9.5)
        for ax in axes[-1]:
            ax.set_xlabel("input x" if kind == "mlp" else "t along the path a → b")
        for ax in axes[:, 0]:
            ax.set_ylabel("df/dx / std" if kind == "mlp" else "df(x_t)/dt / std")
        return fig

    return draw


def _correlation_figure(kind: str) -> Callable[[Mapping[str, Any]], Any]:
    @styled
    def draw(results: Mapping[str, Any]) -> Any:

        rows = [r for r in _rows(results, kind) if r.get("correlation_mean")]
        if not rows:
            return None
        fig = new_figure(6.4, 3.6)
        ax = fig.add_subplot()
        palette = colours([int(r["depth"]) for r in rows])
        for row in rows:
            y = array(row["correlation_mean"])
            x, y = finite(np.arange(len(y), dtype=float), y)
            ax.plot(
                x,
                y,
                color=palette[int(row["depth"])],
                linewidth=1.5,
                markersize=3.5,
                markevery=max(1, len(x) // 8),
                label=row["label"],
                **style_of(str(row["family"])),
            )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("lag k (steps along the line)")
        ax.set_ylabel("autocorrelation" if kind == "mlp" else "mean correlation at lag k")
        ax.set_title(KIND_NAMES[kind])
        legend(ax, ncols=2, fontsize=7)
        return fig

    return draw


@styled
def _draw_lag1(results: Mapping[str, Any]) -> Any:

    kinds = [k for k in KINDS if any(is_number(r.get("lag1_mean")) for r in _rows(results, k))]
    if not kinds:
        return None
    fig = new_figure(4.0 * len(kinds) + 0.4, 3.4)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        for family in FAMILIES:
            rows = [r for r in _rows(results, kind) if r["family"] == family]
            rows = [r for r in rows if is_number(r.get("lag1_mean"))]
            if not rows:
                continue
            ax.errorbar(
                [r["depth"] for r in rows],
                [r["lag1_mean"] for r in rows],
                yerr=[r.get("lag1_std") or 0.0 for r in rows],
                capsize=3,
                color=FAMILY_COLOURS[family],
                linewidth=1.6,
                markersize=5,
                label=family,
                **style_of(family),
            )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("depth (rectifier layers)" if kind == "mlp" else "depth (weighted layers)")
        ax.set_ylabel("lag-1 correlation")
        ax.set_title(KIND_NAMES[kind])
        legend(ax)
    return fig


_HOW_SEQUENCES = (
    "Each panel is one depth, one seed: the gradient of the output at every point of the "
    "line, divided by its standard deviation so that both families share an axis. A smooth, "
    "wandering curve (brown noise) is a gradient that still means something a step away; a "
    "jagged one that looks like white noise is shattered. r₁ in a title is that net's lag-1 "
    "correlation (for the conv nets, of the whole gradient images; the curve is their "
    "projection on b - a)."
)
_HOW_CORRELATION = (
    "The correlation of gradients k steps apart, mean over seeds; colour marks the depth, "
    "dashed lines with squares are plain nets, solid lines with circles residual nets. Plain "
    "nets' curves collapse toward 0 (white noise) as they get deeper; residual nets' stay up."
)
FIGURES = (
    FigureSpec(
        "shattering_mlp_gradients",
        "Gradients of fully connected nets along the 1-D input, at initialisation "
        "(Balduzzi et al. 2017 Fig. 1).",
        _HOW_SEQUENCES,
        _gradients_figure("mlp"),
    ),
    FigureSpec(
        "shattering_mlp_correlation",
        "Autocorrelation of the 1-D gradients by lag, fully connected nets.",
        _HOW_CORRELATION,
        _correlation_figure("mlp"),
    ),
    FigureSpec(
        "shattering_cnn_gradients",
        "Derivative of a fixed logit along the path between two images, CIFAR-family nets.",
        _HOW_SEQUENCES,
        _gradients_figure("cnn"),
    ),
    FigureSpec(
        "shattering_cnn_correlation",
        "Correlation of gradient images k steps apart along the path, CIFAR-family nets.",
        _HOW_CORRELATION,
        _correlation_figure("cnn"),
    ),
    FigureSpec(
        "shattering_lag1",
        "Lag-1 gradient correlation against depth, plain vs residual (mean ± std over seeds).",
        "The study's number: 1 means gradients at neighbouring inputs agree, 0 that they are "
        "unrelated. The verdict compares how far each family falls from its shallowest to its "
        "deepest net.",
        _draw_lag1,
    ),
)


# --- table ----------------------------------------------------------------------------------------


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    """Per kind of net: lag-1 correlation mean ± std over seeds, and the mean at lag 4."""

    body = []
    for kind in KINDS:
        rows = [
            [
                html.e(r["label"]),
                str(r["n_seeds"]),
                html.mean_pm(r.get("lag1_mean"), r.get("lag1_std"), r.get("n_seeds")),
                html.num(dict(enumerate(r.get("correlation_mean") or [])).get(4)),
            ]
            for r in _rows(results, kind)
        ]
        if rows:
            headers = ["net", "seeds", "lag-1 correlation", "lag 4 (mean)"]
            body.append(
                f"<h3>{html.e(KIND_NAMES[kind])}</h3>" + html.table(headers, rows, {1, 2, 3})
            )
    if not body:
        return []
    text = '<section id="shattering"><h2>Gradient correlation</h2>' + "".join(body) + "</section>"
    return [html.Section("shattering", "Gradient correlation", text)]


# --- what the report reads: the section of results.json, declared -------------------------------

#: results.json's ``shattering`` section, as the figures and the table read it.
RESULTS = Object({"shattering": maybe(Object({
    **{kind: maybe(Object({
        "positions": NUMBERS,
        "nets": objects({**LABELLED, "lag1": maybe(NUMBER), "correlation": NUMBERS,
                         "gradients": maybe(NUMBERS)}),
    })) for kind in KINDS},
    "summary": objects({
        "kind": one_of(KINDS),
        **LABELLED,
        "n_seeds": at_least(1),
        "lag1_mean": maybe(NUMBER),
        "lag1_std": SPREAD,
        "correlation_mean": NUMBERS,
    }),
}))})  # fmt: skip

#: What the registry shows of the study (reslab.experiments.registry.Views).
VIEWS = Views(figures=FIGURES, tables=tables, results=RESULTS)
