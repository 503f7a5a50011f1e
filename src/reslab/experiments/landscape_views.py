"""The landscape study's views: its figures, its table, its verdict items and the section of
results.json they read, declared.

They read :mod:`reslab.experiments.landscape`'s section; that module names this one on its
``STUDY`` record (``views=``) instead of importing it, so imports run one way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.checks import NUMBER, NUMBER_OR_NULL, NUMBERS, ListOf, Object, maybe, objects
from reslab.experiments import run_views
from reslab.experiments.landscape import SECTION, _nets
from reslab.experiments.registry import Views
from reslab.experiments.verdict_views import yes_no_format
from reslab.report import html
from reslab.report.figures import (
    FAMILY_COLOURS,
    FigureSpec,
    array,
    legend,
    new_figure,
    style_of,
    styled,
)
from reslab.report.schema import FAMILIES, LABELLED, is_number
from reslab.report.stats import group, mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "VERDICT_FORMATS", "tables"]


# --- figures --------------------------------------------------------------------------------------


def _first_seed(nets: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One net per (family, depth): the first seed's, in plain-then-residual, depth order."""
    return [members[0] for members in group(nets).values()]


def _grid(net: Mapping[str, Any]) -> np.ndarray:
    return np.vstack([array(row) for row in net.get("loss") or [[]]])


def _log_loss(values: np.ndarray) -> np.ndarray:
    """log10 of the loss; a null (overflowed) loss as the largest value drawn."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.where(values > 0, values, np.nan))
    top = np.nanmax(out) if np.isfinite(out).any() else 0.0
    return np.where(np.isfinite(out), out, top)


@styled
def curves_figure(nets: Sequence[Mapping[str, Any]]) -> Figure:
    """The 1-D curves ``L(θ + α d1)``: one panel per depth, loss (log) above, error below."""
    depths = sorted({int(n["depth"]) for n in nets})
    fig = new_figure(3.6 * len(depths) + 0.6, 5.6)
    axes = fig.subplots(2, len(depths), squeeze=False, sharex=True)
    for col, depth in enumerate(depths):
        top, bottom = axes[0][col], axes[1][col]
        for net in nets:
            if int(net["depth"]) != depth:
                continue
            fam = str(net["family"])
            kw = {"color": FAMILY_COLOURS.get(fam), "markersize": 3, "linewidth": 1.5}
            alpha = array(net.get("curve_alpha"))
            seed = f" (seed {net.get('seed')})" if _several_seeds(nets) else ""
            top.plot(
                alpha,
                array(net.get("curve_loss")),
                label=f"{net['label']}{seed}",
                **kw,
                **style_of(fam),
            )
            bottom.plot(alpha, array(net.get("curve_error")), **kw, **style_of(fam))
        top.set_yscale("log")
        top.set_title(f"depth {depth}")
        top.set_ylabel("training loss (log)")
        bottom.set_ylabel("training error (%)")
        bottom.set_xlabel("α (filter-normalised)")
        legend(top, loc="upper center")
    return fig


def _several_seeds(nets: Sequence[Mapping[str, Any]]) -> bool:
    return len({n.get("seed") for n in nets}) > 1


def _panels(nets: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[str]]:
    return sorted({int(n["depth"]) for n in nets}), [
        f for f in FAMILIES if any(n["family"] == f for n in nets)
    ]


def _levels(nets: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Shared contour levels in log10 loss, so every panel reads on the same scale."""
    values = np.concatenate([_log_loss(_grid(n)).ravel() for n in nets])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return np.linspace(lo, max(hi, lo + 1e-3), 25)


@styled
def contours_figure(nets: Sequence[Mapping[str, Any]]) -> Figure:
    """2-D contours of log10 loss per net (rows: depth, columns: family), the paper's Fig. 5."""
    depths, families = _panels(nets)
    fig = new_figure(3.3 * len(families) + 1.0, 3.0 * len(depths))
    axes = fig.subplots(len(depths), len(families), squeeze=False)
    levels = _levels(nets)
    filled = None
    for net in nets:
        ax = axes[depths.index(int(net["depth"]))][families.index(str(net["family"]))]
        g = array(net.get("grid"))
        z = _log_loss(_grid(net))
        filled = ax.contourf(g, g, z.T, levels=levels, cmap="viridis", extend="both")
        ax.contour(g, g, z.T, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        _ring(ax, net)
        ax.set_title(f"{net['label']}: rise {html.sci(_num(net.get('rise')))}")
        ax.set_aspect("equal")
        ax.set_xlabel("α (d1)")
        ax.set_ylabel("β (d2)")
        ax.grid(False)
    if filled is not None:
        fig.colorbar(filled, ax=axes, label="log10 training loss", shrink=0.8)
    return fig


def _num(value: Any) -> float:
    return float(value) if is_number(value) else math.inf


def _ring(ax: Axes, net: Mapping[str, Any]) -> None:
    r = _num(net.get("ring_radius"))
    if math.isfinite(r):
        t = np.linspace(0, 2 * np.pi, 100)
        ax.plot(r * np.cos(t), r * np.sin(t), color="white", linestyle="--", linewidth=1)
    ax.plot([0], [0], marker="+", color="white", markersize=9)


@styled
def surfaces_figure(nets: Sequence[Mapping[str, Any]]) -> Figure:
    """The same surfaces in 3-D, log10 loss on a shared vertical scale."""
    depths, families = _panels(nets)
    fig = new_figure(3.4 * len(families), 3.1 * len(depths))
    levels = _levels(nets)
    for net in nets:
        row, col = depths.index(int(net["depth"])), families.index(str(net["family"]))
        ax: Any = fig.add_subplot(
            len(depths), len(families), row * len(families) + col + 1, projection="3d"
        )
        g = array(net.get("grid"))
        a, b = np.meshgrid(g, g, indexing="ij")
        z = _log_loss(_grid(net))
        ax.plot_surface(
            a,
            b,
            z,
            cmap="viridis",
            vmin=levels[0],
            vmax=levels[-1],
            linewidth=0,
            antialiased=False,
            rcount=len(g),
            ccount=len(g),
        )
        ax.set_zlim(levels[0], levels[-1])
        ax.set_title(f"{net['label']}: log10 loss")  # a z label would be clipped
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.view_init(elev=30, azim=-60)
    return fig


@styled
def sharpness_figure(nets: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss rise at the ring radius and the non-convex share of the grid, against depth."""
    fig = new_figure(8.4, 3.4)
    ax_rise, ax_bent = fig.subplots(1, 2)
    for family in FAMILIES:
        members = [n for n in nets if n["family"] == family]
        if not members:
            continue
        by_depth: dict[int, list[Mapping[str, Any]]] = {}
        for n in members:
            by_depth.setdefault(int(n["depth"]), []).append(n)
        depths = sorted(by_depth)
        kw = {"color": FAMILY_COLOURS[family], "label": family, **style_of(family)}
        rise = [mean_std([n.get("rise") for n in by_depth[d]]) for d in depths]
        bent = [mean_std([n.get("nonconvex") for n in by_depth[d]]) for d in depths]
        ax_rise.errorbar(depths, [m for m, _ in rise], [s or 0 for _, s in rise], capsize=3, **kw)
        ax_bent.errorbar(
            depths,
            [100 * (m or 0) for m, _ in bent],
            [100 * (s or 0) for _, s in bent],
            capsize=3,
            **kw,
        )
    radius = next((n.get("ring_radius") for n in nets), None)
    ax_rise.set_yscale("log")
    ax_rise.set_title(f"loss rise at radius {radius}")
    ax_rise.set_ylabel("mean loss on the circle − loss at θ")
    ax_bent.set_title("non-convex share of the grid")
    ax_bent.set_ylabel("grid points bending down (%)")
    for ax in (ax_rise, ax_bent):
        ax.set_xticks(sorted({int(n["depth"]) for n in nets}))
        ax.set_xlabel("depth")
        legend(ax)
    return fig


def _draw(fn: Any, first_only: bool) -> Any:
    def draw(results: Mapping[str, Any]) -> Figure | None:

        nets = [n for n in _nets(results) if n.get("loss")]
        return fn(_first_seed(nets) if first_only else nets) if nets else None

    return draw


FIGURES = (
    FigureSpec(
        "landscape_curves",
        "The loss and error along one filter-normalised random direction d1, "
        "L(θ + α d1), for each net.",
        "α = 0 is the trained net. A flat, wide dip is a well-conditioned minimum; a curve that "
        "leaves the dip within a small α, or climbs by orders of magnitude, is a sharp one. Plain "
        "(dashed) and residual (solid) twins at the same depth share the random draw.",
        _draw(curves_figure, False),
    ),
    FigureSpec(
        "landscape_contours",
        "Contours of log10 training loss on the plane through θ spanned by two "
        "filter-normalised random directions (Li et al. 2018, Fig. 5), one panel per net.",
        "The centre (+) is the trained net, the dashed circle the radius at which the "
        "sharpness number is measured. Same colours mean the same loss in every panel. Round, "
        "widely spaced contours: a wide convex basin; crowded or fragmented ones: a sharp, "
        "chaotic surface.",
        _draw(contours_figure, True),
    ),
    FigureSpec(
        "landscape_surfaces",
        "The same surfaces in 3-D (log10 loss, shared vertical scale).",
        "A smooth bowl is what the paper finds for residual nets at every depth; the plain "
        "net's surface should get steeper and rougher as depth grows.",
        _draw(surfaces_figure, True),
    ),
    FigureSpec(
        "landscape_sharpness",
        "The numbers behind the verdict: mean loss rise on the circle around θ, and the share "
        "of grid points where the surface bends down (a negative curvature).",
        "Higher is sharper (left, log scale) and more chaotic (right). Error bars: seed std "
        "where there are several seeds.",
        _draw(sharpness_figure, False),
    ),
)


# --- table ----------------------------------------------------------------------------------------


def tables(results: Mapping[str, Any]) -> list[html.Section]:

    nets = sorted(
        _nets(results), key=lambda n: (FAMILIES.index(n["family"]), n["depth"], n.get("seed", 0))
    )
    hess = any(is_number(n.get("hessian_ratio")) for n in nets)
    rows = []
    for n in nets:
        row = [
            html.e(n.get("label", "—")),
            html.e(n.get("seed", "—")),
            html.sci(_num(n.get("loss_origin"))),
            html.num(n.get("error_origin")),
            html.sci(_num(n.get("rise"))),
            html.sci(_num(n.get("curvature"))),
            html.num(100 * _num(n.get("nonconvex")), 1),
            html.num(n.get("cosine"), 3),
        ]
        if hess:
            row += [html.sci(_num(n.get(k))) for k in ("lambda_max", "hessian_ratio")]
        rows.append([*row, html.num(n.get("scan_time"), 1)])
    headers = [
        "net",
        "seed",
        "loss at θ",
        "error at θ (%)",
        "rise at r",
        "curvature at θ",
        "non-convex (%)",
        "cos(d1, d2)",
    ]
    headers += ["λmax", "|λmin/λmax|"] if hess else []
    settings = (results.get(SECTION) or {}).get("settings") or {}
    text = (
        f"<p>On {html.e(settings.get('images', '—'))} training images, eval mode; grid "
        f"{html.e(settings.get('grid', '—'))}² over [−{html.e(settings.get('radius', '—'))}, "
        f"{html.e(settings.get('radius', '—'))}]²; rise = mean loss on "
        f"{html.e(settings.get('ring_points', '—'))} points of the circle of radius r = "
        f"{html.e(settings.get('ring_radius', '—'))} minus the loss at θ.</p>"
    )
    body = html.table([*headers, "scan (s)"], rows, set(range(1, len(headers) + 1)))
    section = f'<section id="landscape"><h2>Landscape numbers</h2>{text}{body}</section>'
    return [
        run_views.results_section(results),
        html.Section("landscape", "Landscape numbers", section),
    ]


# --- the verdict's items --------------------------------------------------------------------------

VERDICT_FORMATS: dict[str, html.ItemFormat] = {
    "sharper": yes_no_format("plain net sharper than its twin"),
    "rise_gap_noise": lambda v: None if v is not None else "seed noise: <b>unknown</b>",
}


# --- what the report reads: the section of results.json, declared -------------------------------

_ROWS = ListOf(
    ListOf(NUMBER_OR_NULL, "must be a list of numbers", length="grid",
           length_problem="must have one value per grid value"),
    "must be a list of rows, one per grid value", length="grid",
)  # fmt: skip
_SCALARS = "loss_origin error_origin ring_radius rise curvature nonconvex cosine scan_time"
#: The ``landscape`` section: settings, and per net the grid, surface, curve and numbers.
RESULTS = Object({"landscape": maybe(Object({
    "settings": maybe(Object({}), null=False),
    "nets": objects({
        **LABELLED,
        **{key: NUMBERS for key in ("grid", "curve_alpha", "curve_loss", "curve_error")},
        "ring_loss": NUMBERS,
        "loss": _ROWS,
        "error": _ROWS,
        **{key: maybe(NUMBER) for key in _SCALARS.split()},
        **{key: maybe(NUMBER) for key in ("hessian_ratio", "lambda_max", "lambda_min")},
    }),
}))})  # fmt: skip

#: What the registry shows of the study (reslab.experiments.registry.Views).
VIEWS = Views(figures=FIGURES, tables=tables, verdict_formats=VERDICT_FORMATS, results=RESULTS)
