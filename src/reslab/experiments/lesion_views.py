"""The lesion study's views: its figures, its table, its verdict items and the section of
results.json they read, declared.

The numbers they show are :mod:`reslab.experiments.lesion`'s (``family_means`` and the per-net
summaries the verdict uses too); that module names this one on its ``STUDY`` record
(``views=``) instead of importing it, so imports run one way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.checks import (
    NUMBER,
    NUMBER_OR_NULL,
    NUMBERS,
    TEXT,
    Is,
    ListOf,
    Object,
    at_least,
    is_int,
    maybe,
    objects,
)
from reslab.experiments import run_views, verdict_views
from reslab.experiments.lesion import SECTION, _name, _nets, family_means, mean_deleted_error
from reslab.experiments.registry import Views
from reslab.experiments.verdict_views import number_format, yes_no_format
from reslab.report import html
from reslab.report.figures import (
    FAMILY_COLOURS,
    FigureSpec,
    array,
    colours,
    legend,
    new_figure,
    style_of,
    styled,
)
from reslab.report.schema import LABELLED, is_number
from reslab.report.stats import group, mean_std, nan_mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "PER_BLOCK", "VERDICT_FORMATS", "VS_K", "lesion_section", "tables"]

# --- figures --------------------------------------------------------------------------------------


def _colour(key: tuple[str, int, str | None], keys: Sequence[tuple[str, int, str | None]]) -> str:
    """Family colours when one depth is shown (the default), a depth palette otherwise."""
    depths = sorted({k[1] for k in keys})
    if len(depths) == 1:
        return FAMILY_COLOURS.get(key[0], "0.3")
    return colours(depths)[key[1]]


def _mean_band(ax: Axes, x: np.ndarray, stack: np.ndarray, colour: str, **kw: Any) -> None:
    """The column means of a (repeats × points) array as a line, ±1 std as a band."""
    mean, std = nan_mean_std(stack)
    ax.plot(x, mean, color=colour, linewidth=1.6, markersize=4, **kw)
    if len(stack) > 1:
        ok = np.isfinite(mean)
        ax.fill_between(x, mean - std, mean + std, where=ok, color=colour, alpha=0.13, lw=0)


def _chance(ax: Axes, results: Mapping[str, Any]) -> None:

    chance: Any = (results.get(SECTION) or {}).get("chance_error")
    if is_number(chance):
        ax.axhline(float(chance), color="0.2", linestyle=":", linewidth=1.0, label="chance")


def _positions(stages: Sequence[int]) -> np.ndarray:
    """x of each block: its stage plus its place in the stage, so nets of any depth line up."""
    xs, place = [], dict.fromkeys(stages, 0)
    for s in stages:
        xs.append(s + place[s] / stages.count(s))
        place[s] += 1
    return np.array(xs, dtype=float)


@styled
def per_block_figure(results: Mapping[str, Any]) -> Figure:
    """Error with each block deleted alone (Veit et al. Fig. 3); shape-changing blocks shaded."""

    nets = _nets(results)
    groups = group(nets)
    fig = new_figure(8.5, 4.3)
    ax = fig.subplots()
    for key, members in groups.items():
        colour, dash = _colour(key, list(groups)), style_of(key[0])["linestyle"]
        n = min(len(m["deleted_error"]) for m in members)
        stack = np.vstack([array(m["deleted_error"])[:n] for m in members])
        seeds = f", {len(members)} seeds" if len(members) > 1 else ""
        name, x = _name(key, nets), _positions(members[0]["stage"][:n])
        _mean_band(
            ax, x, stack, colour, label=f"{name}: one block deleted{seeds}", **style_of(key[0])
        )
        intact = mean_std([m.get("intact_error") for m in members])[0]
        if intact is not None:
            ax.axhline(intact, color=colour, lw=1.0, alpha=0.7, ls=dash, label=f"{name}: intact")
    widest = max(nets, key=lambda n: len(n["block"]))
    x, stages = _positions(widest["stage"]), widest["stage"]
    for i, kept in enumerate(widest["shape_preserving"]):
        if not kept:
            half = 0.45 / stages.count(stages[i])
            ax.axvspan(x[i] - half, x[i] + half, color="0.88", linewidth=0, zorder=0)
    ax.text(
        0.5,
        0.97,
        "shaded: blocks that change the shape",
        transform=ax.transAxes,
        fontsize=7.5,
        color="0.35",
        va="top",
        ha="center",
    )
    _chance(ax, results)
    if len({key[1] for key in groups}) == 1:
        ax.set_xticks(x, widest["block"], rotation=90, fontsize=6.5)
    else:  # nets of several depths: one tick per stage
        ax.set_xticks(sorted(set(stages)), [f"stage {s + 1}" for s in sorted(set(stages))])
    ax.set_xlabel("deleted block")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Test error with one block deleted")
    legend(ax, loc="center right", fontsize=7.5)
    return fig


@styled
def vs_k_figure(results: Mapping[str, Any]) -> Figure:
    """Error vs k blocks deleted (left) and k pairs swapped (right), mean ± std (Fig. 4)."""

    nets = _nets(results)
    groups = group(nets)
    fig = new_figure(10.5, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("deleted", "blocks deleted"), ("swapped", "pairs of blocks swapped"))
    for ax, (curve, what) in zip(axes, panels, strict=True):
        for key, members in groups.items():
            ks, mean, std = _k_points(members, curve)
            if not ks:
                continue
            colour = _colour(key, list(groups))
            ax.errorbar(
                ks,
                mean,
                yerr=std,
                color=colour,
                linewidth=1.6,
                markersize=4,
                capsize=2,
                label=_name(key, nets),
                **style_of(key[0]),
            )
        _chance(ax, results)
        ax.set_xlabel(f"k, {what} at random")
        ax.set_title(f"Error vs {what}")
        ax.tick_params(labelleft=True)
        legend(ax, loc="center right")
    axes[0].set_ylabel("test error (%)")
    axes[0].set_ylim(0, 100)
    return fig


def _k_points(
    members: Sequence[Mapping[str, Any]], curve: str
) -> tuple[list[int], list[float], list[float]]:
    """k = 0 (intact) and every measured k: mean and std over draws and seeds together."""
    pooled: dict[int, list[Any]] = {0: [m.get("intact_error") for m in members]}
    for m in members:
        for row in m.get(curve) or []:
            pooled.setdefault(int(row["k"]), []).extend(row["errors"])
    points = [(k, *mean_std(v)) for k, v in sorted(pooled.items())]
    kept = [(k, mu, sd) for k, mu, sd in points if mu is not None]
    if len(kept) < 2:
        return [], [], []
    return [p[0] for p in kept], [float(p[1]) for p in kept], [float(p[2] or 0) for p in kept]


def _draw(
    fn: Callable[[Mapping[str, Any]], Figure],
) -> Callable[[Mapping[str, Any]], Figure | None]:
    def draw(results: Mapping[str, Any]) -> Figure | None:

        return fn(results) if _nets(results) else None

    return draw


PER_BLOCK = FigureSpec(
    "lesion_per_block",
    "Test error with one block deleted at test time, for every block in turn (Veit et al. "
    "2016, Fig. 3). Plain: dashed, squares; residual: solid, circles; horizontal lines: the "
    "intact nets; dotted: chance.",
    "Each point is the test error of the trained net with that one block deleted: a residual "
    "block is replaced by its shortcut, a plain block by the identity (possible only where the "
    "block keeps the shape; the shaded blocks change it, and a plain net has no point there). "
    "A residual net stays close to its intact line for most blocks — no single block is "
    "indispensable, as if the net were an ensemble of shallower paths — and loses more where "
    "its shortcut is a subsample or projection (shaded). Its plain twin falls to or near "
    "chance whichever block goes: it is one deep path, and every block lies on it.",
    _draw(per_block_figure),
)
VS_K = FigureSpec(
    "lesion_vs_k",
    "Test error vs the number of blocks deleted (left) and of pairs of same-stage blocks "
    "swapped (right), mean ± std over random draws and seeds (Veit et al. 2016, Fig. 4); "
    "k = 0 is the intact net.",
    "Deleted blocks are drawn from the blocks that keep the shape, so both families lose the "
    "same blocks; swapped pairs are two such blocks of one stage trading places. A residual "
    "net's error rises smoothly with k, as an ensemble's does when members are removed, and "
    "reordering hurts it only gradually; a plain net is at or near chance from k = 1 on.",
    _draw(vs_k_figure),
)


# --- tables ---------------------------------------------------------------------------------------


def lesion_section(results: Mapping[str, Any]) -> html.Section:
    """Per net: intact error, one block deleted (keeping / changing the shape), k at most."""

    nets = _nets(results)
    if not nets:
        return html.Section(SECTION, "Lesions", "")
    rows = []
    means = {(r["family"], r["depth"], r["shortcut"]): r for r in family_means(results)}
    for key, members in group(nets).items():
        row = means[key]
        n = row["n_seeds"]
        changing = mean_std([mean_deleted_error(m, shape_preserving=False) for m in members])
        rows.append(
            [
                html.e(row["label"]),
                str(n),
                html.mean_pm(row["intact_error_mean"], row["intact_error_std"], n),
                html.mean_pm(row["deleted_error_mean"], row["deleted_error_std"], n),
                html.mean_pm(row["increase_mean"], row["increase_std"], n),
                html.mean_pm(*changing, n) if changing[0] is not None else "cannot delete",
                _at_most(members, "deleted"),
                _at_most(members, "swapped"),
            ]
        )
    headers = ["net", "seeds", "intact error (%)", "one block deleted (%)"]
    headers += ["increase per block (points)", "one shape-changing block deleted (%)"]
    headers += ["most blocks deleted (%)", "most pairs swapped (%)"]
    text = (
        '<section id="lesion"><h2>Lesions</h2><p>Test error in percent, mean ± sample std over '
        "seeds. “One block deleted” and the increase per block average over the blocks that "
        "keep the shape, each deleted alone; the last two columns are the largest k measured "
        "(mean over draws and seeds, k in brackets).</p>"
        + html.table(headers, rows, set(range(1, 8)))
        + "</section>"
    )
    return html.Section(SECTION, "Lesions", text)


def _at_most(members: Sequence[Mapping[str, Any]], curve: str) -> str:
    ks, mean, _ = _k_points(members, curve)
    return f"{html.num(mean[-1], 1)} (k = {ks[-1]})" if ks else "—"


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    return [lesion_section(results), run_views.results_section(results)]


FIGURES = (PER_BLOCK, VS_K, run_views.ERROR_CURVES)


# --- the verdict's items --------------------------------------------------------------------------

VERDICT_FORMATS: dict[str, html.ItemFormat] = {
    "residual_loses_less": yes_no_format("residual nets lose clearly less per deleted block"),
    "plain_at_chance": yes_no_format("plain nets fall to chance with one block deleted"),
    "residual_increase": number_format("residual: mean error increase per deleted block"),
    "plain_increase": number_format("plain: mean error increase per deleted block"),
    "increase_gap": number_format("plain minus residual increase"),
    "increase_gap_noise": number_format("its seed noise (one std)", ".2f"),
    "plain_deleted_error": number_format("plain: mean error with one block deleted", ".1f", " %"),
    "chance_error": number_format("chance", ".1f", " %"),
    "chance_gap": number_format("chance minus that error"),
    "chance_gap_noise": number_format("its seed noise (one std)", ".2f"),
    "tolerance": verdict_views.tolerance_format,
}


# --- what the report reads: the section of results.json, declared -------------------------------

#: The ``lesion`` section, as the report reads it (documented in the README).
RESULTS = Object({"lesion": maybe(Object({
    "chance_error": maybe(NUMBER),
    "precision": maybe(Is(lambda v: v in ("fp32", "bf16"), "must be fp32 or bf16")),
    "nets": objects({
        **LABELLED,
        "intact_error": maybe(NUMBER),
        "block": ListOf(TEXT, "must be a list of block names"),
        "stage": ListOf(Is(is_int, ""), "must be a list of integers", length="block",
                        length_problem="block, stage and shape_preserving must have one length"),
        "shape_preserving": ListOf(
            Is(lambda v: isinstance(v, bool), ""), "must be a list of true/false", length="block",
            length_problem="block, stage and shape_preserving must have one length"),
        "deleted_error": ListOf(NUMBER_OR_NULL, "must be a list of numbers", length="block",
                                length_problem="must have one entry per block ({n})"),
        **{curve: objects({"k": at_least(1, "must be a positive integer"), "errors": NUMBERS})
           for curve in ("deleted", "swapped")},
    }),
}))})  # fmt: skip

#: What the registry shows of the study (reslab.experiments.registry.Views).
VIEWS = Views(figures=FIGURES, tables=tables, verdict_formats=VERDICT_FORMATS, results=RESULTS)
