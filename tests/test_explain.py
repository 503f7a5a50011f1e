"""``reslab explain --figure``: the worked example drawn as a block diagram."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import png_size
from reslab.explain import SEED_H, SEED_X, explain_figure, worked_example


def test_explain_figure_writes_a_png(tmp_path: Path) -> None:
    x, f = [2.0, 1.5, 0.8], [0.3, -0.1, 0.2]
    y = [a + b for a, b in zip(x, f, strict=True)]
    path = explain_figure(x, [2.3, 1.4, 1.0], f, y, tmp_path / "sub" / "explain.png")
    assert path == tmp_path / "sub" / "explain.png"
    width, height = png_size(path.read_bytes())
    assert width > 500 and height > 200
    explain_figure(x, None, f, y, tmp_path / "no_h.png")
    assert png_size((tmp_path / "no_h.png").read_bytes())[0] > 500
    assert (tmp_path / "no_h.png").read_bytes() != path.read_bytes()  # H(x) is drawn or not
    with pytest.raises(ValueError, match="one length"):
        explain_figure(x, None, f[:2], y, tmp_path / "bad.png")


def test_the_figure_is_a_function_of_the_example(tmp_path: Path) -> None:
    example = worked_example(SEED_X, SEED_H)
    args = (example.x, example.target, example.correction, example.y)
    first = explain_figure(*args, tmp_path / "a.png").read_bytes()
    assert explain_figure(*args, tmp_path / "b.png").read_bytes() == first
