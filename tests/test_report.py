"""The report is rebuilt from results.json alone: figures, embedded PNGs, tables, no network."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from reslab.errors import ReslabError
from reslab.experiments import build_report, list_studies
from reslab.experiments.degradation import degradation_verdict
from reslab.experiments.probe_views import gradient_norm, layer_responses, residual_ratio
from reslab.experiments.run_views import error_curves, error_vs_depth, shortcut_errors
from reslab.explain import explain_figure
from reslab.report import RESULTS_NAME, figure_png, summarize_runs, write_results
from reslab.report import load_results as _load_results


def load_results(path: Path) -> dict[str, Any]:
    return _load_results(path, experiments=list_studies())


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img\s[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DEGRADATION_FIGURES = {
    "error_curves",
    "error_vs_depth",
    "gradient_norm",
    "residual_ratio",
    "layer_responses",
}


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if ``data`` is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    assert data[12:16] == b"IHDR", "first chunk is not IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _run(family: str, depth: int, seed: int, shortcut: str | None, epochs: int) -> dict[str, Any]:
    """A fake run whose errors fall with a learning-rate drop; deep plain nets train worse."""
    rng = np.random.default_rng(depth * 10 + seed + (100 if family == "plain" else 0))
    floor = 2.0 + (0.08 * (depth - 20) if family == "plain" else -0.02 * (depth - 20))
    t = np.arange(1, epochs + 1)
    drop = np.where(t > epochs * 2 // 3, 0.5, 1.0)
    train = floor + 40.0 * np.exp(-t / 3.0) * drop + rng.normal(0, 0.2, epochs)
    test = train + 4.0 + rng.normal(0, 0.3, epochs)
    tag = "plain" if family == "plain" else "resnet"
    return {
        "name": f"{tag}{depth}{shortcut or ''}-s{seed}",
        "model": f"{tag}{depth}",
        "family": family,
        "depth": depth,
        "shortcut": shortcut,
        "seed": seed,
        "params": 270_000 if depth == 20 else 850_000,
        "final_clean_train_error": float(train[-1]),
        "final_test_error": float(test[-1]),
        "wall_time": 12.5,
        "curves": {
            "epoch": t.tolist(),
            "step": (t * 50).tolist(),
            "clean_train_error": train.tolist(),
            "train_error": (train + 1.0).tolist(),
            "test_error": test.tolist(),
            "train_loss": (train / 20).tolist(),
            "lr": (0.1 * drop).tolist(),
        },
    }


def _probes(depths: tuple[int, ...]) -> dict[str, Any]:
    gradient_flow, magnitude, responses = [], [], []
    for family in ("plain", "residual"):
        for depth in depths:
            label = f"{'plain' if family == 'plain' else 'resnet'}-{depth}"
            blocks = (depth - 2) // 2
            idx = np.arange(blocks)
            common = {"label": label, "family": family, "depth": depth}
            for when in ("init", "trained"):
                decay = 0.9 if family == "plain" and when == "trained" else 0.99
                gradient_flow.append(
                    {
                        **common,
                        "when": when,
                        "block": [f"block{i}" for i in idx],
                        "input_grad_norm": (1e-2 * decay ** (blocks - idx)).tolist(),
                        "layer": [f"conv{i}" for i in range(depth - 1)],
                        "weight_grad_norm": [0.01] * (depth - 1),
                    }
                )
            ratio = (0.2 + 0.1 * np.sin(idx)) if family == "residual" else (1.0 + 0 * idx)
            magnitude.append(
                {
                    **common,
                    "block": [f"block{i}" for i in idx],
                    "ratio": ratio.tolist(),
                    "f_norm": (ratio * 10).tolist(),
                    "shortcut_norm": [10.0] * blocks if family == "residual" else None,
                }
            )
            std = (1.5 if family == "plain" else 0.6) * (1 + 0.3 * np.cos(np.arange(depth - 2)))
            responses.append(
                {
                    **common,
                    "layer": [f"conv{i}" for i in range(depth - 2)],
                    "std": std.tolist(),
                    "std_sorted": sorted(std.tolist(), reverse=True),
                }
            )
    return {
        "gradient_flow": gradient_flow,
        "residual_magnitude": magnitude,
        "layer_responses": responses,
    }


def synthetic_results(
    depths: tuple[int, ...] = (20, 56), seeds: int = 2, epochs: int = 12
) -> dict[str, Any]:
    """A degradation-study results dict: plain and residual nets × depths × seeds, and probes."""
    runs = [
        _run(family, depth, seed, None if family == "plain" else "A", epochs)
        for family in ("plain", "residual")
        for depth in depths
        for seed in range(seeds)
    ]
    summary = summarize_runs(runs)
    return {
        "schema": 1,
        "experiment": "degradation",
        "title": "Degradation: plain vs residual nets (synthetic)",
        "reslab_version": "0.1.0",
        "torch_version": "2.13.0",
        "python_version": "3.12.0",
        "created": "2025-01-31T12:00:00+00:00",
        "machine": "test machine, 2 CPUs",
        "config": {"depths": list(depths), "seeds": seeds, "epochs": epochs, "lr": 0.1},
        "verdict": degradation_verdict(summary),
        "runs": runs,
        "summary": summary,
        "probes": _probes(depths),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    study = tmp_path_factory.mktemp("study")
    results = synthetic_results()
    write_results(study, results)
    report = build_report(study)
    return study, results, report.read_text(encoding="utf-8")


def test_build_report_writes_self_contained_html(built: tuple[Path, dict[str, Any], str]) -> None:
    study, results, html = built
    assert (study / "report.html").is_file()
    assert html.startswith("<!DOCTYPE html>")
    assert results["verdict"]["text"] in html
    assert "plain-56 trains worse than plain-20 (degradation)" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "Content-Security-Policy" in html
    assert "<details>" in html and "Per-run results (8 runs)" in html
    assert '"epochs": 12' in html  # pretty-printed config
    for version in ("2.13.0", "3.12.0", "2025-01-31T12:00:00+00:00", "test machine, 2 CPUs"):
        assert version in html
    assert html.count("How to read this.") == len(DEGRADATION_FIGURES)


def test_embedded_images_are_valid_pngs_matching_the_files(
    built: tuple[Path, dict[str, Any], str],
) -> None:
    study, _, html = built
    embedded = [base64.b64decode(m, validate=True) for m in IMG_RE.findall(html)]
    assert html.count("<img") == len(embedded) == len(DEGRADATION_FIGURES)
    files = {p.stem: p.read_bytes() for p in (study / "figures").glob("*.png")}
    assert set(files) == DEGRADATION_FIGURES
    for data in embedded:
        width, height = png_size(data)
        assert width > 100 and height > 100
        assert data in files.values()


def test_rebuild_gives_same_figures_and_html(built: tuple[Path, dict[str, Any], str]) -> None:
    study, _, html = built
    before = {p.name: p.read_bytes() for p in (study / "figures").glob("*.png")}
    assert build_report(study).read_text(encoding="utf-8") == html
    after = {p.name: p.read_bytes() for p in (study / "figures").glob("*.png")}
    assert after == before


def test_stale_figures_are_removed_and_unknown_files_kept(tmp_path: Path) -> None:
    results = synthetic_results(epochs=4)
    write_results(tmp_path, results)
    build_report(tmp_path)
    (tmp_path / "figures" / "mine.png").write_bytes(b"user file")
    del results["probes"]
    write_results(tmp_path, results)
    build_report(tmp_path)
    names = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert names == {"error_curves", "error_vs_depth", "mine"}


def test_missing_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReslabError, match=r"no results\.json in .*reslab degradation --out"):
        build_report(tmp_path)
    with pytest.raises(ReslabError, match=r"no results\.json"):
        load_results(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"experiment": "degradation"}', "schema is missing"),
        ('{"schema": 7, "experiment": "degradation"}', "newer reslab"),
        ('{"schema": 1, "experiment": "bogus"}', "experiment must be one of"),
        (
            '{"schema": 1, "experiment": "degradation", "runs": [{"family": "x", "depth": 2}]}',
            r"runs\[0\]\.family must be 'plain' or 'residual'",
        ),
        (
            '{"schema": 1, "experiment": "gradients", "probes": {"gradient_flow": '
            '[{"family": "plain", "depth": 8, "input_grad_norm": "big"}]}}',
            r"probes\.gradient_flow\[0\]\.input_grad_norm must be a list of numbers",
        ),
    ],
)
def test_invalid_results_are_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / RESULTS_NAME).write_text(text)
    with pytest.raises(ReslabError, match=match) as info:
        load_results(tmp_path)
    assert "\n" not in str(info.value)


def test_write_results_converts_arrays_and_non_finite_values(tmp_path: Path) -> None:
    results = synthetic_results(depths=(20, 32), seeds=1, epochs=3)
    results["runs"][0]["curves"]["train_loss"] = np.array([1.0, math.nan, math.inf])
    results["runs"][0]["params"] = np.int64(123)
    path = write_results(tmp_path, results)
    assert path == tmp_path / RESULTS_NAME
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_results(tmp_path)
    assert loaded["runs"][0]["curves"]["train_loss"] == [1.0, None, None]
    assert loaded["runs"][0]["params"] == 123
    json.loads(path.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN/Infinity
    with pytest.raises(ReslabError, match="depth"):
        write_results(tmp_path, {**results, "summary": [{"family": "plain", "depth": "deep"}]})
    assert load_results(tmp_path)["runs"][0]["params"] == 123  # the good file is untouched


def test_shortcuts_report_has_bar_chart_and_curves(tmp_path: Path) -> None:
    runs = [_run("plain", 20, s, None, 6) for s in range(2)]
    runs += [_run("residual", 20, s, opt, 6) for opt in "ABC" for s in range(2)]
    summary = summarize_runs(runs)
    assert [r["label"] for r in summary] == [
        "plain-20",
        "resnet-20 (A)",
        "resnet-20 (B)",
        "resnet-20 (C)",
    ]
    results = {
        "schema": 1,
        "experiment": "shortcuts",
        "title": "Shortcut options <A|B|C>",
        "verdict": {"text": "A, B and C all beat plain-20 & fix it"},
        "config": {},
        "runs": runs,
        "summary": summary,
    }
    write_results(tmp_path, results)
    html = build_report(tmp_path).read_text()
    names = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert names == {"error_curves", "shortcut_errors"}
    assert "Shortcut options &lt;A|B|C&gt;" in html
    assert "A, B and C all beat plain-20 &amp; fix it" in html
    assert "resnet-20 (B)" in html


def test_probe_only_report(tmp_path: Path) -> None:
    probes = _probes((8, 14))
    results = {
        "schema": 1,
        "experiment": "gradients",
        "title": "Gradient flow",
        "verdict": {"text": "gradients reach the input of every net"},
        "probes": {"gradient_flow": probes["gradient_flow"]},
    }
    write_results(tmp_path, results)
    html = build_report(tmp_path).read_text()
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"gradient_norm"}
    assert 'id="results"' not in html and "Gradient flow</h3>" in html
    assert len(IMG_RE.findall(html)) == 1


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
    runs = [_run("plain", 20, 0, None, 6), _run("residual", 20, 0, "A", 6)]
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


def test_same_data_gives_same_png_bytes() -> None:
    summary = synthetic_results(epochs=3)["summary"]
    assert figure_png(error_vs_depth(summary)) == figure_png(error_vs_depth(copy.deepcopy(summary)))


def test_explain_figure_writes_a_png(tmp_path: Path) -> None:
    x, f = [2.0, 1.5, 0.8], [0.3, -0.1, 0.2]
    y = [a + b for a, b in zip(x, f, strict=True)]
    path = explain_figure(x, [2.3, 1.4, 1.0], f, y, tmp_path / "sub" / "explain.png")
    assert path == tmp_path / "sub" / "explain.png"
    width, height = png_size(path.read_bytes())
    assert width > 500 and height > 200
    explain_figure(x, None, f, y, tmp_path / "no_h.png")
    assert png_size((tmp_path / "no_h.png").read_bytes())[0] > 500
    with pytest.raises(ValueError, match="one length"):
        explain_figure(x, None, f[:2], y, tmp_path / "bad.png")


def test_degradation_verdict_gaps() -> None:
    summary = [
        {"family": "plain", "depth": 20, "label": "plain-20", "clean_train_error_mean": 5.0},
        {"family": "plain", "depth": 56, "label": "plain-56", "clean_train_error_mean": 8.0},
        {"family": "residual", "depth": 20, "shortcut": "A", "clean_train_error_mean": 5.0},
        {"family": "residual", "depth": 56, "shortcut": "A", "clean_train_error_mean": 4.0},
    ]
    verdict = degradation_verdict(summary)
    assert verdict["text"] == (
        "plain-56 trains worse than plain-20 (degradation): 8.0 % vs 5.0 % training error; "
        "resnet-56 trains as well as resnet-20: 4.0 % vs 5.0 % training error"
    )
    assert verdict["degradation"] is True and verdict["residual_ok"] is True
    assert verdict["plain_gap"] == 3.0 and verdict["residual_gap"] == -1.0
    with pytest.raises(ReslabError, match="two or more depths"):
        degradation_verdict(summary[:1] + summary[2:])
