"""The figure toolkit: a fixed style that leaks nowhere, deterministic PNGs, lines over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from conftest import png_size
from reslab.report.figures import (
    FAMILY_STYLE,
    entry_lines,
    figure_png,
    new_figure,
    save_figure,
    style,
    styled,
)


@styled
def _figure(values: list[float]) -> matplotlib.figure.Figure:
    fig = new_figure(4.0, 3.0)
    fig.add_subplot().plot(values)
    return fig


def test_style_applies_inside_only() -> None:
    before = dict(matplotlib.rcParams)
    with style():
        assert matplotlib.rcParams["font.family"] == ["DejaVu Sans"]
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert dict(matplotlib.rcParams) == before
    _figure([1.0, 2.0])
    assert dict(matplotlib.rcParams) == before


def test_same_figure_gives_same_png_bytes(tmp_path: Path) -> None:
    first = figure_png(_figure([1.0, 3.0, 2.0]))
    assert first == figure_png(_figure([1.0, 3.0, 2.0]))
    assert first != figure_png(_figure([1.0, 3.0, 2.5]))
    assert png_size(first) == (440, 330)  # figsize × 110 dpi
    path = save_figure(_figure([1.0, 3.0, 2.0]), tmp_path / "sub" / "f.png")
    assert path.read_bytes() == first


def test_entry_lines_style_by_family_and_seeds_as_mean() -> None:
    fig = new_figure(4.0, 3.0)
    ax = fig.add_subplot()
    entries = [
        {"label": "plain-8", "family": "plain", "depth": 8, "v": [1.0, 2.0, 3.0]},
        {"label": "plain-8", "family": "plain", "depth": 8, "v": [3.0, 4.0, 5.0]},
        {"label": "resnet-8", "family": "residual", "depth": 8, "v": [1.0, None, 0.5]},
    ]
    assert entry_lines(ax, entries, lambda e: e["v"], log=False) == 2
    plain, residual = ax.get_lines()
    assert plain.get_label() == "plain-8 (2 seeds)" and residual.get_label() == "resnet-8"
    assert np.asarray(plain.get_ydata()).tolist() == [2.0, 3.0, 4.0]  # the mean of the seeds
    assert np.asarray(residual.get_xdata()).tolist() == [0.0, 2.0]  # the gap is left out
    for line, family in ((plain, "plain"), (residual, "residual")):
        assert (line.get_linestyle(), line.get_marker()) == tuple(FAMILY_STYLE[family].values())
    assert len(ax.collections) == 1  # one ±1 std band, for the net with two seeds


def test_entry_lines_log_axis_drops_non_positive_values() -> None:
    ax = new_figure(4.0, 3.0).add_subplot()
    entries = [{"label": "a", "family": "plain", "depth": 8, "v": [1.0, 0.0, -1.0, 10.0]}]
    assert entry_lines(ax, entries, lambda e: e["v"], log=True) == 1
    assert ax.get_yscale() == "log"
    assert np.asarray(ax.get_lines()[0].get_ydata()).tolist() == [1.0, 10.0]
