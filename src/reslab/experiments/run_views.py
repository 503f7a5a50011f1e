"""The report parts of studies that train nets and compare their errors (degradation, shortcuts).

Figures (He et al. 2015 style): error vs iterations (Fig. 6), final error vs depth, and the
final errors per shortcut variant; the results table (mean ± std over seeds) and the per-run
tables; the mean training curve of a study's variants. Each figure is a function of results.json
data. The verdict's items are :mod:`reslab.experiments.verdict_views`'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.report import html
from reslab.report.figures import (
    FAMILY_COLOURS,
    OKABE_ITO,
    FigureSpec,
    array,
    colours,
    finite,
    has_values,
    legend,
    markevery,
    new_figure,
    style_of,
    styled,
)
from reslab.report.schema import FAMILIES, is_number
from reslab.report.stats import (
    GroupKey,
    group,
    group_key,
    label,
    nan_mean_std,
    several_shortcuts,
    sort_key,
    summarize_runs,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ERROR_CURVES",
    "ERROR_VS_DEPTH",
    "error_curves",
    "error_vs_depth",
    "mean_curve",
    "results_section",
    "shortcut_errors",
    "shortcut_errors_spec",
    "summary_of",
    "variant_runs_table",
]


def summary_of(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The results' summary rows, computed from its runs if the file has none."""
    runs = results.get("runs") or []
    return list(results.get("summary") or (summarize_runs(runs) if runs else []))


def _colour_key(key: GroupKey, several: bool) -> Any:
    """Colour by depth, or by (depth, shortcut) when shortcut options are being compared."""
    return (key[1], key[2] or "") if several else key[1]


# --- error vs iterations -------------------------------------------------------------------------


@styled
def error_curves(
    runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]] | None = None
) -> Figure:
    """Error vs iterations, one panel per family (He et al. 2015, Fig. 6).

    Thin lines are the clean training error, bold lines the test error, each the mean over
    seeds with a ±1 std band when there are several. Colour marks the depth (or the shortcut
    option when several are compared). ``summary`` supplies the labels, if given.
    """
    groups = group([r for r in runs if isinstance(r.get("curves"), Mapping)])
    if not groups:
        raise ValueError("error_curves needs runs with curves")
    several = several_shortcuts(runs)
    labels = {group_key(r): str(r["label"]) for r in summary or () if r.get("label")}
    palette = colours([_colour_key(k, several) for k in groups])
    families = [f for f in FAMILIES if any(k[0] == f for k in groups)]
    fig = new_figure(5.6 * len(families), 4.4)
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)[0]
    top = 0.0
    # One x axis for the whole figure: iterations if every run has them, else epochs.
    with_steps = all(has_values(m["curves"].get("step")) for g in groups.values() for m in g)
    x_name, x_label = (
        ("step", "iterations (optimiser steps)") if with_steps else ("epoch", "epochs")
    )
    # Runs with a validation split (--val-split) record validation error per epoch instead.
    with_test = all(has_values(m["curves"].get("test_error")) for g in groups.values() for m in g)
    eval_key, eval_name = ("test_error", "test error") if with_test else ("val_error", "val error")
    for ax, family in zip(axes, families, strict=True):
        style = style_of(family)
        handles: list[Any] = []
        train_name = "training error (clean)"
        for key, members in groups.items():
            if key[0] != family:
                continue
            colour = palette[_colour_key(key, several)]
            curves = [m["curves"] for m in members]
            train_key = (
                "clean_train_error"
                if all(has_values(c.get("clean_train_error")) for c in curves)
                else "train_error"
            )
            if train_key == "train_error":
                train_name = "training error (running, augmented)"
            lines = ((train_key, 1.0, 3.0), (eval_key, 2.6, 5.0))
            top = max(top, _curve_lines(ax, curves, x_name, lines, colour, style))
            handles.append(_handle(key, members, labels, several, colour, style))
        ls = style["linestyle"]
        handles += [
            _line(color="0.35", linewidth=1.0, linestyle=ls, label=f"thin: {train_name}"),
            _line(color="0.35", linewidth=2.6, linestyle=ls, label=f"bold: {eval_name}"),
        ]
        legend(ax, handles, loc="upper right")
        ax.set_title(f"{family} networks")
        ax.set_xlabel(x_label)
        ax.set_ylabel("error (%)")
        ax.tick_params(labelleft=True)
    if top > 0:
        axes[0].set_ylim(0, min(100.0, top * 1.08))
    return fig


def _curve_lines(
    ax: Axes,
    curves: Sequence[Mapping[str, Any]],
    x_name: str,
    lines: Sequence[tuple[str, float, float]],
    colour: str,
    style: Mapping[str, Any],
) -> float:
    """One group's (metric, width, marker size) lines over seeds; returns their top (mean+sd)."""
    top = 0.0
    x = array(curves[0].get(x_name))
    for metric, width, size in lines:
        arrays = [array(c.get(metric)) for c in curves if has_values(c.get(metric))]
        if not arrays:
            continue
        n = min(len(x), *(len(a) for a in arrays))
        mean, std = nan_mean_std(np.vstack([a[:n] for a in arrays]))
        xs, ys = finite(x[:n], mean)
        if not len(xs):
            continue
        _, sd = finite(x[:n], np.where(np.isfinite(mean), std, np.nan))
        top = max(top, float(np.max(ys + sd)))
        ax.plot(
            xs,
            ys,
            color=colour,
            linewidth=width,
            markersize=size,
            markevery=markevery(len(xs)),
            **style,
        )
        if len(arrays) > 1:
            ax.fill_between(xs, ys - sd, ys + sd, color=colour, alpha=0.13, linewidth=0)
    return top


def _line(**kw: Any) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], **kw)


def _handle(
    key: GroupKey,
    members: Sequence[Any],
    labels: Mapping[GroupKey, str],
    several: bool,
    colour: str,
    style: Mapping[str, Any],
) -> Any:
    seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
    name = labels.get(key, label(key, several)) + seeds
    return _line(color=colour, linewidth=2.0, label=name, **style)


# --- final error vs depth, and per shortcut variant ----------------------------------------------


@styled
def error_vs_depth(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Final clean training error (left) and test error (right) vs depth, mean ± std over seeds.

    Plain nets: dashed, squares; residual nets: solid, circles (one line per shortcut option
    if several are present).
    """
    several = several_shortcuts(summary)
    series: dict[tuple[str, str | None], list[Mapping[str, Any]]] = {}
    for row in sorted(summary, key=lambda r: sort_key(group_key(r))):
        series.setdefault((row["family"], row.get("shortcut")), []).append(row)
    if not series:
        raise ValueError("error_vs_depth needs summary rows")
    palette = iter(OKABE_ITO[2:])
    depths = sorted({int(r["depth"]) for r in summary})
    fig = new_figure(10.5, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (
        ("clean_train_error", "final training error (clean)"),
        ("test_error", "final test error"),
    )
    line_colours: dict[tuple[str, str | None], str] = {}
    for family, shortcut in series:
        if family in FAMILY_COLOURS and family not in {f for f, _ in line_colours}:
            line_colours[(family, shortcut)] = FAMILY_COLOURS[family]
        else:
            line_colours[(family, shortcut)] = next(palette, "0.3")
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for (family, shortcut), rows in series.items():
            pts = [
                (int(r["depth"]), r.get(f"{metric}_mean"), r.get(f"{metric}_std") or 0.0)
                for r in rows
                if r.get(f"{metric}_mean") is not None
            ]
            if not pts:
                continue
            name = "residual" if family == "residual" else family
            if family == "residual" and several and shortcut:
                name += f" ({shortcut})"
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                color=line_colours[(family, shortcut)],
                linewidth=1.8,
                markersize=6,
                capsize=3,
                label=f"{name} nets",
                **style_of(family),
            )
        ax.set_xticks(depths)
        ax.set_title(title)
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("error (%)")
        ax.tick_params(labelleft=True)
        legend(ax, loc="best")
    axes[0].set_ylim(bottom=0)
    return fig


@styled
def shortcut_errors(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Final training (hatched) and test (solid) error per variant, error bars = std."""
    from matplotlib.patches import Patch

    rows = sorted(summary, key=lambda r: sort_key(group_key(r)))
    if not rows:
        raise ValueError("shortcut_errors needs summary rows")
    several = several_shortcuts(rows)
    fig = new_figure(max(5.5, 1.5 * len(rows) + 2.5), 4.3)
    ax = fig.add_subplot()
    top = 0.0
    for i, row in enumerate(rows):
        colour = (
            FAMILY_COLOURS["plain"]
            if row["family"] == "plain"
            else OKABE_ITO[(i + 1) % len(OKABE_ITO)]
        )
        top = max(top, _variant_bars(ax, i, row, colour))
    names = [str(r.get("label") or label(group_key(r), several)) for r in rows]
    ax.set_xticks(range(len(rows)), names)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(0, max(1.0, top * 1.3))  # headroom for the labels and the legend
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("network (shortcut option: A zero-pad, B projection where shape changes, C all)")
    ax.set_ylabel("final error (%)")
    legend(
        ax,
        [
            Patch(facecolor="white", edgecolor="0.3", hatch="///", label="training error (clean)"),
            Patch(facecolor="0.45", edgecolor="0.3", label="test error"),
        ],
        loc="upper center",
        ncols=2,
    )
    return fig


def _variant_bars(ax: Axes, i: int, row: Mapping[str, Any], colour: str) -> float:
    """The training and test bars of one variant, labelled; returns their top (mean + std)."""
    width = 0.38
    top = 0.0
    for offset, metric, hatch, face in (
        (-width / 2, "clean_train_error", "///", "white"),
        (width / 2, "test_error", "", colour),
    ):
        mean = row.get(f"{metric}_mean")
        if mean is None:
            continue
        std = row.get(f"{metric}_std") or 0.0
        ax.bar(
            i + offset,
            mean,
            width,
            yerr=std,
            color=face,
            edgecolor=colour,
            hatch=hatch,
            linewidth=1.5,
            capsize=3,
            error_kw={"elinewidth": 1.0, "ecolor": "0.2"},
        )
        ax.annotate(
            f"{mean:.1f}",
            (i + offset, mean + std),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
        top = max(top, mean + std)
    return top


# --- the figures as a report shows them ----------------------------------------------------------


def _draw_error_curves(results: Mapping[str, Any]) -> Figure | None:
    runs = results.get("runs") or []
    if not any(isinstance(r.get("curves"), dict) and r["curves"] for r in runs):
        return None
    return error_curves(runs, summary_of(results))


def _draw_error_vs_depth(results: Mapping[str, Any]) -> Figure | None:
    summary = summary_of(results)
    return error_vs_depth(summary) if len({r["depth"] for r in summary}) >= 2 else None


ERROR_CURVES = FigureSpec(
    "error_curves",
    "Error vs iterations for plain (left) and residual (right) networks "
    "(He et al. 2015, Fig. 6 style). Thin: training error; bold: test error; colour: depth.",
    "Thin lines are the error on the training set itself (measured without augmentation), "
    "bold lines the test error, both against training iterations; sudden drops are "
    "learning-rate decays. Compare the colours within a panel. If the deeper plain net's "
    "thin line lies above the shallower one's, that is the degradation problem: an "
    "optimisation failure, not overfitting — the deeper plain net fits its own training "
    "set worse, although it could copy the shallower net and add identity layers. In the "
    "residual panel the deeper net should reach the same or a lower training error.",
    _draw_error_curves,
)
ERROR_VS_DEPTH = FigureSpec(
    "error_vs_depth",
    "Final clean training error and test error vs depth. Plain: dashed, "
    "squares; residual: solid, circles; error bars: ± 1 std over seeds.",
    "Each point is a final error averaged over seeds; bars are ± one standard deviation. "
    "If training error rises with depth for plain nets (dashed, squares), that is the "
    "degradation problem: an optimisation failure, not overfitting — the deeper plain net "
    "fits its own training set worse. Residual nets (solid, circles) should stay level or "
    "improve with depth. Overfitting would look different: low training error with a "
    "rising test error.",
    _draw_error_vs_depth,
)


def shortcut_errors_spec(always: bool) -> FigureSpec:
    """The per-variant bar chart: ``always`` when variants are the study's point, else only
    when the runs happen to use several shortcut options."""

    def draw(results: Mapping[str, Any]) -> Figure | None:
        summary = summary_of(results)
        if summary and (always or several_shortcuts(summary)):
            return shortcut_errors(summary)
        return None

    return FigureSpec(
        "shortcut_errors",
        "Final errors of the plain net and the shortcut options A, B and C.",
        "Final training error (hatched) and test error (solid) for each variant, ± one "
        "standard deviation over seeds. A: identity shortcuts, zero-padded where the shape "
        "changes (no extra parameters); B: projection shortcuts only where the shape changes; "
        "C: projections on every block. He et al. (2015, Table 3) find all three far better "
        "than the plain net and B, C only marginally better than A: projections are not what "
        "solves degradation, the identity path is.",
        draw,
    )


# --- tables --------------------------------------------------------------------


def results_section(results: Mapping[str, Any]) -> html.Section:
    """The results table (mean ± std per net) and the per-run table, folded."""
    runs = results.get("runs") or []
    summary = summary_of(results)
    if not summary and not runs:
        return html.Section("results", "Results", "")
    several = several_shortcuts(summary)
    params = {group_key(r): r.get("params") for r in runs if is_number(r.get("params"))}
    rows = [
        [
            html.e(r.get("label") or label(group_key(r), several)),
            html.e(r["family"]),
            str(int(r["depth"])),
            html.e(r.get("shortcut") or "—"),
            html.e(r.get("n_seeds", "—")),
            html.mean_pm(
                r.get("clean_train_error_mean"), r.get("clean_train_error_std"), r.get("n_seeds")
            ),
            html.mean_pm(r.get("test_error_mean"), r.get("test_error_std"), r.get("n_seeds")),
            html.params(params.get(group_key(r))),
        ]
        for r in sorted(summary, key=lambda r: sort_key(group_key(r)))
    ]
    headers = ["model", "family", "depth", "shortcut", "seeds"]
    headers += ["clean train error (%)", "test error (%)", "params"]
    parts = [
        '<section id="results"><h2>Results</h2>',
        "<p>Final errors in percent, mean ± sample standard deviation over seeds. Clean "
        "training error is measured on the whole training set without augmentation.</p>",
        html.table(headers, rows, {2, 4, 5, 6, 7}),
    ]
    if runs:
        parts.append(_runs_table(runs))
    parts.append("</section>")
    return html.Section("results", "Results", "\n".join(parts))


def _runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            html.e(r.get("name", "—")),
            html.e(r.get("model", "—")),
            html.e(r["family"]),
            str(int(r["depth"])),
            html.e(r.get("shortcut") or "—"),
            html.e(r.get("seed", "—")),
            html.params(r.get("params")),
            html.num(r.get("final_clean_train_error")),
            html.num(r.get("final_test_error")),
            html.num(r.get("wall_time"), 1),
        ]
        for r in sorted(runs, key=lambda r: (sort_key(group_key(r)), str(r.get("seed"))))
    ]
    headers = ["run", "model", "family", "depth", "shortcut", "seed", "params"]
    headers += ["clean train error (%)", "test error (%)", "wall time (s)"]
    return (
        f"<details><summary>Per-run results ({len(runs)} runs)</summary>"
        + html.table(headers, rows, {3, 5, 6, 7, 8, 9})
        + "</details>"
    )


# --- studies of variants at one depth (ablation, trainability) ------------------------------------


def mean_curve(runs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Clean training error vs iterations, the mean over seeds; None without curves."""
    curves = [
        r["curves"] for r in runs if has_values((r.get("curves") or {}).get("clean_train_error"))
    ]
    if not curves:
        return None
    n = min(len(c["clean_train_error"]) for c in curves)
    mean, _ = nan_mean_std(np.vstack([array(c["clean_train_error"])[:n] for c in curves]))
    return finite(array(curves[0].get("step"))[:n], mean)


def variant_runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """The per-run table of a study of variants, folded (one row per run)."""
    rows = [
        [
            html.e(r.get("name", "—")),
            html.e(r.get("variant", "—")),
            html.e(r.get("seed", "—")),
            html.e(r.get("status", "—")),
            html.num(r.get("final_clean_train_error")),
            html.num(r.get("final_test_error")),
            html.num(r.get("wall_time"), 1),
        ]
        for r in runs
    ]
    headers = [
        "run",
        "variant",
        "seed",
        "status",
        "clean train error (%)",
        "test error (%)",
        "wall time (s)",
    ]
    return (
        f"<details><summary>Per-run results ({len(runs)} runs)</summary>"
        + html.table(headers, rows, {2, 4, 5, 6})
        + "</details>"
    )
