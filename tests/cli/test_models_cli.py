"""`reslab models` and `reslab explain`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.explain import SEED_H, SEED_X, worked_example
from reslab.models import ResNet, list_models


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--filter", "^(resnet20|plain56|resnet50|plain50)$"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet20\s+20\s+269,722\s+0\.270M\s+40\.6M\s+32x32\s+A", out)
    assert re.search(r"plain56\s+56\s+853,018.*none \(plain\)", out)
    assert re.search(r"resnet50\s+50\s+25,557,032.*4,089\.2M\s+224x224\s+B", out)
    assert re.search(r"plain50\s+50\s+22,780,456\s+22\.780M\s+3,729\.5M\s+224x224\s+none", out)


def test_models_lists_every_model_without_building_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Building ResNet-1202 and ResNet-152 took minutes on a busy machine; the table is counted
    # from the layouts, so it must not need a single module.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("reslab models built a network")

    monkeypatch.setattr(ResNet, "__init__", refuse)
    assert main(["models"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows[1:]] == list_models()
    row = next(r for r in rows if r.startswith("preact_plain1001 "))
    assert row.split()[1:4] == ["1001", "10,285,722", "10.286M"]


def test_models_rejects_a_bad_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--filter", "("]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reslab: error: filter '(' is not a regular expression")
    assert len(err.splitlines()) == 1


def test_explain_prints_the_seed_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "x    = [2.00, 1.50, 0.80]" in out
    assert "F(x) = [0.30, -0.10, 0.20]" in out
    assert "y    = [2.30, 1.40, 1.00]" in out
    for step in ["1. Input", "2. Main path", "3. Skip path", "4. Addition", "5. Output", "6. "]:
        assert step in out
    assert "W_s x = [1.75, 1.15]" in out


def test_explain_numbers_come_from_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    # Other inputs give other, correct numbers: nothing is typed in.
    assert main(["explain", "--x", "1,0", "--target", "0.5,0.25"]) == 0
    out = capsys.readouterr().out
    assert "F(x) = [-0.50, 0.25]" in out and "y    = [0.50, 0.25]" in out
    example = worked_example(SEED_X, SEED_H)
    for x, f, y, h in zip(example.x, example.correction, example.y, SEED_H, strict=True):
        assert abs(f - (h - x)) < 1e-9 and abs(y - h) < 1e-9


def test_explain_rejects_bad_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--x", "1,zwei", "--target", "1,2"]) == 2
    assert main(["explain", "--x", "1,2", "--target", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("reslab: error: --x must be numbers")
    assert err[1] == "reslab: error: --x has 2 values but --target has 1"


def test_explain_draws_the_block_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "explain.png"
    assert main(["explain", "--figure", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"block diagram written to {png}" in capsys.readouterr().out
