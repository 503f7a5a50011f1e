"""The figures of trained runs: labelled, styled without colour alone, robust to gaps."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
from matplotlib.container import ErrorbarContainer

from conftest import fake_run, synthetic_results
from reslab.experiments.probe_views import gradient_norm, layer_responses, residual_ratio
from reslab.experiments.run_views import error_curves, error_vs_depth, shortcut_errors
from reslab.report.figures import figure_png


def _check_axes(fig: matplotlib.figure.Figure) -> None:
    """Every axes is labelled on both axes and has a legend."""
    assert fig.axes
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        legend = ax.get_legend()
        assert legend is not None and legend.get_texts(), ax.get_title()


def test_figures_are_labelled_and_styled_without_colour_alone() -> None:
    results = synthetic_results(epochs=5)
    rc_before = dict(matplotlib.rcParams)
    probes = results["probes"]
    figures = [
        error_curves(results["runs"], results["summary"]),
        error_vs_depth(results["summary"]),
        shortcut_errors(results["summary"]),
        gradient_norm(probes["gradient_flow"]),
        residual_ratio(probes["residual_magnitude"]),
        layer_responses(probes["layer_responses"]),
    ]
    assert dict(matplotlib.rcParams) == rc_before  # no global state changed
    for fig in figures:
        _check_axes(fig)
    assert figures[0].axes[0].get_xlabel().startswith("iterations")
    assert figures[1].axes[0].get_xlabel() == "depth (layers)"
    assert figures[3].axes[0].get_yscale() == "log"
    styles = {
        bars.get_label(): (bars.lines[0].get_linestyle(), bars.lines[0].get_marker())
        for bars in figures[1].axes[0].containers
        if isinstance(bars, ErrorbarContainer)
    }
    assert styles == {"plain nets": ("--", "s"), "residual nets": ("-", "o")}
    for line in figures[0].axes[0].get_lines():  # the plain panel
        assert (line.get_linestyle(), line.get_marker()) == ("--", "s")
    for line in figures[0].axes[1].get_lines():  # the residual panel
        assert (line.get_linestyle(), line.get_marker()) == ("-", "o")
    widths = {line.get_linewidth() for line in figures[0].axes[0].get_lines()}
    assert len(widths) == 2  # thin training error, bold test error


def test_error_curves_cope_with_missing_measurements() -> None:
    runs = [fake_run("plain", 20, 0, None, 6), fake_run("residual", 20, 0, "A", 6)]
    runs[0]["curves"]["clean_train_error"] = [None] * 6  # not tracked: running error instead
    runs[0]["curves"]["test_error"] = [None, 20.0, None, 10.0, None, 8.0]  # every other epoch
    runs[1]["curves"]["step"] = [None] * 6  # no iteration counts: x falls back to epochs
    fig = error_curves(runs)
    _check_axes(fig)
    plain, residual = fig.axes
    assert [np.size(line.get_xdata()) for line in plain.get_lines()] == [6, 3]
    assert plain.get_xlabel() == residual.get_xlabel() == "epochs"
    legend = plain.get_legend()
    assert legend is not None
    assert "running, augmented" in " ".join(t.get_text() for t in legend.get_texts())


def test_error_curves_average_the_seeds() -> None:
    runs = [fake_run("plain", 20, seed, None, 4) for seed in range(3)]
    fig = error_curves(runs)
    thin = fig.axes[0].get_lines()[0]
    expected = np.mean([r["curves"]["clean_train_error"] for r in runs], axis=0)
    assert np.allclose(np.asarray(thin.get_ydata()), expected)
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend.get_texts()[0].get_text() == "plain-20 (3 seeds)"


def test_same_data_gives_same_png_bytes() -> None:
    summary = synthetic_results(epochs=3)["summary"]
    assert figure_png(error_vs_depth(summary)) == figure_png(error_vs_depth(copy.deepcopy(summary)))
