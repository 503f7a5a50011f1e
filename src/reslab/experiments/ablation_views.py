"""The ablation study's views: its figures, its tables (HTML and console), its verdict items
and the part of results.json they read, declared.

They read :mod:`reslab.experiments.ablation`'s summary rows and variants; that module names
this one on its ``STUDY`` record (``views=``) instead of importing it, so imports run one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reslab.checks import NUMBER, TEXT, ListOf, Object, at_least, maybe, objects, one_of
from reslab.experiments import run_views, verdict_views
from reslab.experiments.ablation import REFERENCE, VARIANTS, _row
from reslab.experiments.registry import Views
from reslab.experiments.verdict_views import yes_no_format
from reslab.report import html
from reslab.report.figures import FAMILY_COLOURS, OKABE_ITO, FigureSpec, legend, new_figure, styled
from reslab.report.schema import is_number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["CURVES", "ERRORS", "FIGURES", "VERDICT_FORMATS", "console_table", "tables"]


# --- figures -------------------------------------------------------------------------------------

_PANELS = ((1, "Table 1: what the shortcut carries"), (2, "Table 2: where BN and ReLU sit"))


def _panels(summary: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """(title, rows) of each table that has rows, rows in the study's order."""
    out = []
    for table, title in _PANELS:
        rows = [r for r in summary if table in (r.get("tables") or [])]
        if rows:
            out.append((title, rows))
    return out


def _colour(i: int, row: Mapping[str, Any]) -> str:

    if row.get("family") == "plain":
        return FAMILY_COLOURS["plain"]
    colours = [c for c in OKABE_ITO if c != "#000000"]  # black is the identity's (near-)colour
    return "0.15" if row.get("variant") == REFERENCE else colours[(i - 1) % len(colours)]


@styled
def error_bars(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Final clean training error (hatched) and test error (solid) per variant, per table."""
    from matplotlib.patches import Patch

    panels = _panels(summary)
    height = 1.2 + 0.55 * max(len(rows) for _, rows in panels)
    fig = new_figure(5.2 * len(panels), height)
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
    for ax, (title, rows) in zip(axes, panels, strict=True):
        for i, row in enumerate(rows):
            for offset, metric, hatch in (
                (-0.2, "clean_train_error", "///"),
                (0.2, "test_error", ""),
            ):
                mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
                if mean is not None and is_number(mean):
                    _bar(ax, i + offset, float(mean), float(std or 0.0), _colour(i, row), hatch)
        ref = _row(rows, REFERENCE)
        if ref is not None and is_number(ref.get("clean_train_error_mean")):
            ax.axvline(float(ref["clean_train_error_mean"]), color="0.3", linestyle=":", lw=1)
        ax.set_yticks(range(len(rows)), [str(r["label"]) for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_title(title)
        ax.set_xlabel("final error (%)")
        ax.set_xlim(left=0)
    legend(
        axes[-1],
        [
            Patch(facecolor="white", edgecolor="0.3", hatch="///", label="training error (clean)"),
            Patch(facecolor="0.45", edgecolor="0.3", label="test error"),
        ],
        loc="lower right",
    )
    return fig


def _bar(ax: Axes, y: float, mean: float, std: float, colour: str, hatch: str) -> None:
    errors = {"elinewidth": 1.0, "ecolor": "0.2"}
    face = "white" if hatch else colour
    ax.barh(y, mean, 0.38, xerr=std, color=face, edgecolor=colour, hatch=hatch, error_kw=errors)
    ax.annotate(
        f"{mean:.1f}",
        (mean + std, y),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=7,
    )


@styled
def training_curves(
    runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]
) -> Figure:
    """Clean training error vs iterations per variant (mean over seeds), per table."""

    panels = _panels(summary)
    fig = new_figure(5.4 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, rows) in zip(axes, panels, strict=True):
        for i, row in enumerate(rows):
            line = run_views.mean_curve([r for r in runs if r.get("variant") == row.get("variant")])
            if line is not None:
                width = 2.4 if row.get("variant") == REFERENCE else 1.4
                dash = "-" if i <= 6 else "--"  # more rows than colours: dashes tell them apart
                ax.plot(
                    *line,
                    color=_colour(i, row),
                    label=str(row["label"]),
                    linewidth=width,
                    linestyle=dash,
                    marker="o",
                    markersize=3,
                )
        ax.set_title(title)
        ax.set_xlabel("iterations (optimiser steps)")
        ax.set_ylabel("training error, clean (%)")
        ax.set_ylim(bottom=0)
        ax.tick_params(labelleft=True)
        legend(ax, loc="lower left", fontsize=7)
    return fig


def _draw_bars(results: Mapping[str, Any]) -> Figure | None:
    summary = results.get("summary") or []
    return error_bars(summary) if _panels(summary) else None


def _draw_curves(results: Mapping[str, Any]) -> Figure | None:
    runs, summary = results.get("runs") or [], results.get("summary") or []
    return (
        training_curves(runs, summary) if run_views.mean_curve(runs) and _panels(summary) else None
    )


ERRORS = FigureSpec(
    "ablation_errors",
    "Final errors of each shortcut variant (Table 1, left) and activation placement "
    "(Table 2, right); dotted line: the identity shortcut's training error.",
    "Hatched bars are the final error on the training set itself (no augmentation), solid "
    "bars the test error, ± one std over seeds. All nets share one depth, one recipe and one "
    "budget, so a longer hatched bar than the identity's means that variant is harder to "
    "optimise. He et al. (2016) find every multiplicative change of the shortcut (scaling, "
    "gating, 1×1 convolutions, dropout) trains worse than the identity, and full "
    "pre-activation the best placement.",
    _draw_bars,
)
CURVES = FigureSpec(
    "ablation_curves",
    "Training error vs iterations of each variant (He et al. 2016, Fig. 3 and Fig. 6 style).",
    "Each line is a variant's clean training error during training, the mean over seeds; the "
    "bold dark line is the identity shortcut. A line that stays above it is slower to "
    "optimise: the paper's gated and scaled shortcuts, and BN after the addition, do that.",
    _draw_curves,
)
FIGURES = (ERRORS, CURVES)


# --- tables in the paper's layout ----------------------------------------------------------------


def _columns(table: int) -> list[str]:
    first = ["case", "Fig."] + (["on shortcut", "on F"] if table == 1 else [])
    paper = "paper, ResNet-110" if table == 1 else "paper, ResNet-110 / 164"
    return [*first, "train error (%)", "test error (%)", f"{paper} (%)", "params"]


def _cells(row: Mapping[str, Any], table: int, fmt: Any) -> list[str]:
    first = [str(row["label"]), str(row.get("fig", ""))]
    if table == 1:
        first += [str(row.get("on_shortcut", "")), str(row.get("on_f", ""))]
    n = row.get("n_seeds")
    errors = [
        fmt(row.get(f"{m}_mean"), row.get(f"{m}_std"), n)
        for m in ("clean_train_error", "test_error")
    ]
    params = f"{row['params']:,}" if is_number(row.get("params")) else "—"
    return [*first, *errors, str(row.get("paper_error", "")), params]


def _text_error(mean: Any, std: Any, n: Any) -> str:
    if not is_number(mean):
        return "n/a"
    return f"{mean:.1f}" + (f" ± {std:.1f}" if is_number(n) and n > 1 and is_number(std) else "")


def console_table(results: Mapping[str, Any]) -> str:
    """Table 1 and Table 2 as text, in the paper's columns."""
    lines = []
    for table, title in _PANELS:
        rows = [r for r in results.get("summary") or [] if table in (r.get("tables") or [])]
        if not rows:
            continue
        cells = [_columns(table)] + [_cells(r, table, _text_error) for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
        lines.append(title)
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        lines.append("")
    return "\n".join(lines).rstrip()


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    section = results.get("ablation") or {}
    summary = results.get("summary") or []
    parts = [
        '<section id="results"><h2>Results in the paper\'s layout</h2>',
        f"<p>Every net: depth {html.e(section.get('depth', '—'))}, shortcut option "
        f"{html.e(section.get('shortcut', '—'))} where the shape changes (the 1×1-conv row: "
        "C), one recipe and budget. Errors in percent, mean ± sample std over seeds; "
        "training error is measured on the whole training set without augmentation. The "
        "paper's column is its CIFAR-10 test error (fail: above 20 %).</p>",
    ]
    for table, title in _PANELS:
        rows = [r for r in summary if table in (r.get("tables") or [])]
        if rows:
            body = [[html.e(c) for c in _cells(r, table, _html_error)] for r in rows]
            numeric = set(range(len(body[0]) - 4, len(body[0])))
            parts += [f"<h3>{html.e(title)}</h3>", html.table(_columns(table), body, numeric)]
    parts.append(run_views.variant_runs_table(results.get("runs") or []))
    parts.append("</section>")
    return [html.Section("results", "Results", "\n".join(parts))]


def _html_error(mean: Any, std: Any, n: Any) -> str:
    return _text_error(mean, std, n).replace("n/a", "—")


# --- the verdict's items --------------------------------------------------------------------------


def _names(keys: Any) -> str | None:

    if not isinstance(keys, list):
        return None
    return ", ".join(html.e(VARIANTS[k].label if k in VARIANTS else k) for k in keys) or "none"


VERDICT_FORMATS: dict[str, html.ItemFormat] = {
    "worse": lambda v: f"train worse than the identity shortcut: <b>{_names(v)}</b>",
    "as_well": lambda v: f"train as well as the identity shortcut: <b>{_names(v)}</b>",
    "better": lambda v: f"train better than the identity shortcut: <b>{_names(v)}</b>",
    "identity_best": yes_no_format("no shortcut variant trains better than the identity"),
    "best_placement": lambda v: f"lowest test error of the placements: <b>{_names([v])}</b>",
    "preact_best": yes_no_format("no placement beats full pre-activation's test error"),
    "gaps": verdict_views.gaps_format("the identity's"),
    "tolerance": verdict_views.tolerance_format,
}


# --- what the report reads: the section of results.json, declared -------------------------------

#: The ablation's parts of results.json: its section and the summary rows' extra keys.
RESULTS = Object({
    "ablation": Object({"depth": at_least(1, "must be a positive integer")},
                       "must be an object with the study's depth and shortcut option"),
    "summary": objects({
        **{key: TEXT for key in ("variant", "label", "fig", "on_shortcut", "on_f", "paper_error")},
        "tables": ListOf(one_of((1, 2)), "must be a list of table numbers, 1 and/or 2",
                         nonempty=True),
        "params": maybe(NUMBER),
    }),
})  # fmt: skip

#: What the registry shows of the study (reslab.experiments.registry.Views).
VIEWS = Views(
    figures=FIGURES,
    tables=tables,
    verdict_formats=VERDICT_FORMATS,
    results=RESULTS,
    text_table=console_table,
)
