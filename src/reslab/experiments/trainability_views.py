"""The trainability study's views: the final errors of every variant against the plain and
residual references, the training curves, the forward signal and the gradient flow; the
variants table (HTML and console), the verdict items, and the part of results.json they read.

They read :mod:`reslab.experiments.trainability`'s summary rows; that module names this one
on its ``STUDY`` record (``views=``) instead of importing it, so imports run one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reslab.checks import NUMBER, TEXT, Object, maybe, objects
from reslab.experiments import probe_views, run_views, signal_views, verdict_views
from reslab.experiments.registry import Views
from reslab.experiments.trainability import PLAIN, RESIDUAL, VARIANTS
from reslab.report import html
from reslab.report.figures import (
    FAMILY_COLOURS,
    FigureSpec,
    colours,
    legend,
    new_figure,
    style_of,
    styled,
)
from reslab.report.schema import is_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["VIEWS"]

_CLASS = {"closes": "closes the gap", "partly": "closes part", "fails": "fails"}


def _rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in results.get("summary") or [] if isinstance(r, Mapping)]


def _ref(rows: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r.get("variant") == key), None)


# --- figures -------------------------------------------------------------------------------------


@styled
def errors_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Final clean training error per variant (bars, ± std), plain and residual as lines."""
    fig = new_figure(8.5, 1.0 + 0.42 * len(rows))
    ax = fig.add_subplot()
    palette = colours([str(r.get("variant")) for r in rows])
    for i, row in enumerate(rows):
        mean: Any = row.get("clean_train_error_mean")
        std: Any = row.get("clean_train_error_std")
        if not is_number(mean):
            ax.text(1, i, "diverged", va="center", fontsize=8, color="0.3")
            continue
        ax.barh(i, float(mean), xerr=float(std) if is_number(std) else None, height=0.6,
                color=palette[str(row.get("variant"))], alpha=0.85, capsize=2)  # fmt: skip
    for key, name in ((PLAIN, "plain"), (RESIDUAL, "residual")):
        ref = _ref(rows, key)
        if ref is not None and is_number(ref.get("clean_train_error_mean")):
            ax.axvline(float(ref["clean_train_error_mean"]), color=FAMILY_COLOURS[name],
                       label=f"{ref['label']}", **style_of(name), linewidth=1.2)  # fmt: skip
    ax.set_yticks(range(len(rows)), [str(r.get("label")) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("final clean training error (%)")
    ax.set_title("Which variants train as well as the residual net?")
    legend(ax, loc="lower right", fontsize=8)
    return fig


@styled
def curves_figure(results: Mapping[str, Any]) -> Figure:
    """Clean training error vs iterations per variant, the mean over seeds."""
    rows, runs = _rows(results), results.get("runs") or []
    fig = new_figure(8.5, 4.4)
    ax = fig.add_subplot()
    palette = colours([str(r.get("variant")) for r in rows])
    for row in rows:
        line = run_views.mean_curve([r for r in runs if r.get("variant") == row.get("variant")])
        if line is None:
            continue
        bold = row.get("variant") in (PLAIN, RESIDUAL)
        ax.plot(*line, color=palette[str(row.get("variant"))], label=str(row.get("label")),
                linewidth=2.4 if bold else 1.3, **style_of(str(row.get("family"))),
                markersize=3)  # fmt: skip
    ax.set_ylim(0, 100)
    ax.set_xlabel("iteration")
    ax.set_ylabel("clean training error (%)")
    ax.set_title("Training error of every variant (bold: the plain and residual references)")
    legend(ax, loc="upper right", fontsize=7)
    return fig


def _draw_errors(results: Mapping[str, Any]) -> Figure | None:
    return errors_figure(_rows(results)) if _rows(results) else None


def _draw_curves(results: Mapping[str, Any]) -> Figure | None:
    return curves_figure(results) if run_views.mean_curve(results.get("runs") or []) else None


ERRORS = FigureSpec(
    "trainability_errors",
    "Final clean training error of every variant (± std over seeds); the plain (dashed) and "
    "residual (solid) twins' errors as vertical lines.",
    "All nets share one depth, one recipe and one budget. A bar that reaches the residual "
    "line closes the degradation gap without what the residual net has (a shortcut, or BN); "
    "one between the lines closes part of it; one at or past the plain line does not help. "
    "The verdict applies the one rule (tolerance and twice the seed noise) to these numbers.",
    _draw_errors,
)
CURVES = FigureSpec(
    "trainability_curves",
    "Clean training error vs iterations of every variant, the mean over seeds.",
    "How fast each variant fits its training set. Nets that start as the identity — the "
    "residual net, SkipInit, Fixup, Dirac — usually fall fastest; plain nets without BN or "
    "with the default initialisation can stay near chance, or diverge.",
    _draw_curves,
)
FIGURES = (ERRORS, CURVES, signal_views.SIGNAL_PROPAGATION, probe_views.GRADIENT_NORM)


# --- tables --------------------------------------------------------------------------------------


def _class(results: Mapping[str, Any], key: str) -> str:
    verdict = results.get("verdict") or {}
    if key in (PLAIN, RESIDUAL):
        return "reference"
    return next((name for c, name in _CLASS.items() if key in (verdict.get(c) or [])), "—")


def _cells(row: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    variant = VARIANTS.get(str(row.get("variant")))
    options = ", ".join(f"{k}={v}" for k, v in (variant.options if variant else {}).items())
    n = row.get("n_seeds")
    return [
        str(row.get("label")),
        "yes" if row.get("family") == "residual" else "no",
        options or "—",
        str(row.get("paper", "")),
        str(row.get("recipe", "")),
        html.mean_pm(row.get("clean_train_error_mean"), row.get("clean_train_error_std"), n),
        html.mean_pm(row.get("test_error_mean"), row.get("test_error_std"), n),
        _class(results, str(row.get("variant"))),
    ]


_HEADERS = ["variant", "shortcut", "options", "paper", "recipe", "train error (%)",
            "test error (%)", "verdict"]  # fmt: skip


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    rows = _rows(results)
    body = html.table(_HEADERS, [[html.e(c) for c in _cells(r, results)] for r in rows], {5, 6})
    text = (
        '<section id="trainability"><h2>Variants</h2><p>Final clean training and test error in '
        "percent, mean ± sample std over seeds (± ?: one seed, its spread unknown). "
        "Options are the model options that make each variant (<code>create_model(name, "
        "**options)</code>); the recipe column says where the paper's own differs.</p>"
        + body
        + run_views.variant_runs_table(results.get("runs") or [])
        + "</section>"
    )
    return [html.Section("trainability", "Variants", text)]


def console_table(results: Mapping[str, Any]) -> str:
    """The variants, their errors and their class, as text."""
    cells = [["variant", "seeds", "train error (%)", "test error (%)", "verdict"]]
    for row in _rows(results):
        full = _cells(row, results)
        cells.append([full[0], str(row.get("n_seeds")), full[5], full[6], full[7]])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _named(values: Any) -> str | None:
    if not isinstance(values, list):
        return None
    # " · " between names: a variant's label has commas of its own ("plain, no BN")
    return " · ".join(VARIANTS[v].label if v in VARIANTS else str(v) for v in values) or "none"


VERDICT_FORMATS: dict[str, html.ItemFormat] = {
    "closes": lambda v: None if _named(v) is None else f"close the gap: <b>{html.e(_named(v))}</b>",
    "partly": lambda v: None if _named(v) is None else f"close part: <b>{html.e(_named(v))}</b>",
    "fails": lambda v: None if _named(v) is None else f"fail: <b>{html.e(_named(v))}</b>",
    "gap": verdict_views.gap_format("plain", "plain minus residual"),
    "gap_noise": verdict_views.noise_format,
    "gaps": verdict_views.gaps_format("the residual net's"),
    "tolerance": verdict_views.tolerance_format,
}


# --- what the report reads: the section of results.json, declared -------------------------------

#: The summary rows' own keys (the common ones are report/schema.py's).
RESULTS = Object({
    "summary": objects({
        **{key: TEXT for key in ("variant", "label", "paper", "recipe")},
        "diverged": maybe(NUMBER),
    }),
})  # fmt: skip

VIEWS = Views(
    figures=FIGURES,
    tables=tables,
    verdict_formats=VERDICT_FORMATS,
    results=RESULTS,
    text_table=console_table,
)
