"""The report parts of the probes: gradient flow, residual branch size and layer responses.

Figures, tables and one-line readings of the entries :mod:`reslab.experiments.probing` writes.
Entries of one net at several seeds (same ``label``) are shown as their mean ± std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reslab.report import html
from reslab.report.figures import (
    FigureSpec,
    array,
    entry_lines,
    legend,
    new_figure,
    styled,
    wide_range,
)
from reslab.report.stats import group_key, label, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GRADIENT_NORM",
    "LAYER_RESPONSES",
    "RESIDUAL_RATIO",
    "gradient_norm",
    "gradient_readings",
    "layer_responses",
    "magnitude_readings",
    "probes_section",
    "residual_ratio",
    "response_readings",
]

_WHEN_TITLES = {"init": "gradients at initialisation", "trained": "gradients after training"}
_GRAD_LABEL = r"$\|\partial L / \partial x_l\|$ (log scale)"


def _get(key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda entry: entry.get(key)


def _name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("label") or label(group_key(entry), False))


def _nets(entries: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Entries grouped by (net, time), in first-seen order: the seeds of one measurement."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((_name(entry), str(entry.get("when", ""))), []).append(entry)
    return list(groups.values())


# --- figures -------------------------------------------------------------------------------------


@styled
def gradient_norm(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """‖∂L/∂x_l‖ at each block's input, log scale; one panel per ``when`` (init, trained, ...)."""
    if not entries:
        raise ValueError("gradient_norm needs gradient_flow entries")
    whens = list(dict.fromkeys(str(e.get("when", "")) for e in entries))
    fig = new_figure(min(5.6 * len(whens), 16.0), 4.3)
    axes = fig.subplots(1, len(whens), sharey=True, squeeze=False)[0]
    for ax, when in zip(axes, whens, strict=True):
        entry_lines(
            ax,
            [e for e in entries if str(e.get("when", "")) == when],
            _get("input_grad_norm"),
            True,
        )
        ax.set_title(_WHEN_TITLES.get(when, f"gradients at {when}") if when else "gradients")
        ax.set_xlabel("block index (input → output)")
        ax.set_ylabel(_GRAD_LABEL)
        ax.tick_params(labelleft=True)
        legend(ax, loc="best")
    return fig


@styled
def residual_ratio(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """‖F(x)‖/‖x‖ per block: how big each block's correction is next to its input."""
    if not entries:
        raise ValueError("residual_ratio needs residual_magnitude entries")
    fig = new_figure(8.0, 4.3)
    ax = fig.add_subplot()
    log = wide_range(entries, "ratio")
    entry_lines(ax, entries, _get("ratio"), log)
    if not log:
        ax.set_ylim(bottom=0)
    ax.set_title("size of the residual branch relative to its input")
    ax.set_xlabel("block index (input → output)")
    ax.set_ylabel(r"$\|F(x)\| \,/\, \|x\|$ (ratio, dimensionless)" + (", log" if log else ""))
    legend(ax, loc="best")
    return fig


def _sorted_std(entry: Mapping[str, Any]) -> Any:
    if entry.get("std_sorted"):
        return entry["std_sorted"]
    values = [v for v in entry.get("std") or [] if v is not None]
    return sorted(values, reverse=True)


@styled
def layer_responses(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """Std of each 3×3 layer's response in network order (top) and sorted (bottom), Fig. 7."""
    if not entries:
        raise ValueError("layer_responses needs layer_responses entries")
    fig = new_figure(9.0, 7.2)
    top, bottom = fig.subplots(2, 1)
    entry_lines(top, entries, _get("std"), False)
    entry_lines(bottom, entries, _sorted_std, False)
    top.set_title("layer responses in network order")
    top.set_xlabel("layer index (input → output)")
    bottom.set_title("layer responses sorted by magnitude")
    bottom.set_xlabel("layer rank (sorted by std, largest first)")
    for ax in (top, bottom):
        ax.set_ylabel("std of response (a.u.)")
        ax.set_ylim(bottom=0)
        legend(ax, loc="upper right")
    return fig


def _probe_figure(kind: str, draw: Callable[[Any], Figure]) -> Callable[..., Figure | None]:
    def build(results: Mapping[str, Any]) -> Figure | None:
        entries = (results.get("probes") or {}).get(kind) or []
        return draw(entries) if entries else None

    return build


GRADIENT_NORM = FigureSpec(
    "gradient_norm",
    "Gradient norm ‖∂L/∂x_l‖ at the input of each block (log scale).",
    "The norm of the loss gradient with respect to each block's input, from the output "
    "(right) back to the input (left), on a log scale. A line that falls steeply towards "
    "the left means gradients shrink on their way back (vanishing); identity shortcuts "
    "give them a direct path, so residual lines stay flatter. With batch normalisation, "
    "plain nets usually keep healthy gradients at initialisation — He et al. argue that "
    "degradation is not caused by vanishing gradients — so compare init with trained.",
    _probe_figure("gradient_flow", gradient_norm),
)
RESIDUAL_RATIO = FigureSpec(
    "residual_ratio",
    "Relative size of the residual branch, ‖F(x)‖/‖x‖, per block.",
    "Each point is ‖F(x)‖/‖x‖ for one block: the size of what the block's layers add, "
    "relative to the signal arriving through the shortcut. Values well below 1 mean each "
    "block only makes a small correction to the identity, which is what residual learning "
    "expects when the optimal mapping is close to the identity. For plain nets there is no "
    "shortcut and the ratio compares a block's output with its input.",
    _probe_figure("residual_magnitude", residual_ratio),
)
LAYER_RESPONSES = FigureSpec(
    "layer_responses",
    "Standard deviation of layer responses, in order (top) and sorted "
    "(bottom), He et al. 2015, Fig. 7 style.",
    "The standard deviation of each 3×3 layer's output (after batch normalisation, before "
    "the addition and ReLU) on a batch of training images; top in network order, bottom "
    "sorted from largest to smallest. Residual nets have smaller responses than plain "
    "nets, and deeper residual nets smaller ones still: the residual functions are closer "
    "to zero than non-residual ones, and each layer modifies the signal less "
    "(He et al. 2015, Fig. 7).",
    _probe_figure("layer_responses", layer_responses),
)


# --- tables --------------------------------------------------------------------------------------


def _finite(values: Any) -> np.ndarray:
    a = array(values)
    return a[np.isfinite(a)]


def _cell(values: Sequence[float]) -> str:
    """One number over seeds: the value for one seed, mean ± std for several."""
    xs = [v for v in values if math.isfinite(v)]
    if len(xs) < 2:
        return html.sci(xs[0] if xs else math.nan)
    mean, std = mean_std(xs)
    return f"{html.sci(mean or 0.0)} ± {html.sci(std or 0.0)}"


def _stat(entry: Mapping[str, Any], key: str, fn: Callable[[np.ndarray], float]) -> float:
    a = _finite(entry.get(key))
    return float(fn(a)) if len(a) else math.nan


def _first_last(entry: Mapping[str, Any]) -> tuple[float, float, float]:
    g = _finite(entry.get("input_grad_norm"))
    first, last = (float(g[0]), float(g[-1])) if len(g) else (math.nan, math.nan)
    return first, last, (first / last if len(g) and last > 0 else math.nan)


def _gradient_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for net in _nets(entries):
        ends = [_first_last(e) for e in net]
        rows.append(
            [
                html.e(_name(net[0])),
                html.e(net[0].get("when", "—")),
                str(len(_finite(net[0].get("input_grad_norm")))),
                *(_cell([end[i] for end in ends]) for i in range(3)),
            ]
        )
    headers = ["model", "when", "blocks", "‖∂L/∂x‖ first block", "‖∂L/∂x‖ last block"]
    return "<h3>Gradient flow</h3>" + html.table([*headers, "first / last"], rows, {2, 3, 4, 5})


def _magnitude_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            html.e(_name(net[0])),
            str(len(_finite(net[0].get("ratio")))),
            *(_cell([_stat(e, "ratio", fn) for e in net]) for fn in (np.mean, np.min, np.max)),
        ]
        for net in _nets(entries)
    ]
    return "<h3>Residual branch size ‖F(x)‖/‖x‖</h3>" + html.table(
        ["model", "blocks", "mean", "min", "max"], rows, {1, 2, 3, 4}
    )


def _responses_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            html.e(_name(net[0])),
            str(len(_finite(net[0].get("std")))),
            *(_cell([_stat(e, "std", fn) for e in net]) for fn in (np.mean, np.max)),
        ]
        for net in _nets(entries)
    ]
    return "<h3>Layer responses</h3>" + html.table(
        ["model", "layers", "mean std", "max std"], rows, {1, 2, 3}
    )


def probes_section(results: Mapping[str, Any]) -> html.Section:
    """The probes' tables, after the figures."""
    probes = results.get("probes") or {}
    tables = (
        ("gradient_flow", _gradient_table),
        ("residual_magnitude", _magnitude_table),
        ("layer_responses", _responses_table),
    )
    parts = [build(probes[kind]) for kind, build in tables if probes.get(kind)]
    body = '<section id="probes"><h2>Probes</h2>\n' + "\n".join(parts) + "</section>"
    return html.Section("probes", "Probes", body if parts else "", after_figures=True)


# --- one-line readings, for the verdicts ---------------------------------------------------------


def _over_seeds(values: Sequence[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{format(mean, fmt)} ± {format(std or 0.0, fmt)} over {len(values)} seeds"


def gradient_readings(probes: Mapping[str, Any]) -> list[str]:
    """How much the gradient shrinks from the last block back to the first, at init."""
    parts = []
    for net in _nets([e for e in probes.get("gradient_flow", []) if e["when"] == "init"]):
        ratios = []
        for entry in net:
            norms = entry["input_grad_norm"]
            ratios.append(norms[0] / norms[-1] if norms[-1] else float("inf"))
        parts.append(
            f"{net[0]['label']}: ‖∂L/∂x‖ first/last block = {_over_seeds(ratios, '.2g')} at init"
        )
    return parts


def magnitude_readings(probes: Mapping[str, Any]) -> list[str]:
    """The mean ‖F(x)‖/‖x‖ of each residual net."""
    entries = [e for e in probes.get("residual_magnitude", []) if e["family"] == "residual"]
    parts = []
    for net in _nets([e for e in entries if e["ratio"]]):
        means = [sum(e["ratio"]) / len(e["ratio"]) for e in net]
        parts.append(f"{net[0]['label']}: mean ‖F(x)‖/‖x‖ = {_over_seeds(means, '.2f')}")
    return parts


def response_readings(probes: Mapping[str, Any]) -> list[str]:
    """The mean layer-response std of each net."""
    parts = []
    for net in _nets(probes.get("layer_responses", [])):
        means = [sum(e["std"]) / len(e["std"]) for e in net]
        parts.append(f"{net[0]['label']}: mean layer response std = {_over_seeds(means, '.2f')}")
    return parts
