"""``reslab report``: figures and report.html rebuilt from results.json alone, per study."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import fake_probes, fake_run, png_size, synthetic_results
from reslab.errors import ReslabError
from reslab.experiments import build_report
from reslab.report import RESULTS_NAME, summarize_runs, write_results

FIXTURES = Path(__file__).parents[1] / "fixtures"
IMG_RE = re.compile(r'<img\s[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DEGRADATION_FIGURES = {
    "error_curves",
    "error_vs_depth",
    "gradient_norm",
    "residual_ratio",
    "layer_responses",
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
    assert "degradation in plain nets: <b>yes</b>" in html
    assert "(final clean training error, deepest minus shallowest)" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "Content-Security-Policy" in html
    assert "<details>" in html and "Per-run results (8 runs)" in html
    assert '"epochs": 12' in html  # pretty-printed config
    for version in ("2.13.0", "3.12.0", "2025-01-31T12:00:00+00:00", "test machine, 2 CPUs"):
        assert version in html
    assert html.count("How to read this.") == len(DEGRADATION_FIGURES)
    order = [html.index(f'id="{a}"') for a in ("verdict", "results", "figures", "probes")]
    assert order == sorted(order)


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


def test_shortcuts_report_has_bar_chart_and_curves(tmp_path: Path) -> None:
    runs = [fake_run("plain", 20, s, None, 6) for s in range(2)]
    runs += [fake_run("residual", 20, s, opt, 6) for opt in "ABC" for s in range(2)]
    results = {
        "schema": 1,
        "experiment": "shortcuts",
        "title": "Shortcut options <A|B|C>",
        "verdict": {"text": "A, B and C all beat plain-20 & fix it", "plain_gap": 2.0},
        "config": {},
        "runs": runs,
        "summary": summarize_runs(runs),
    }
    write_results(tmp_path, results)
    html = build_report(tmp_path).read_text()
    names = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert names == {"error_curves", "shortcut_errors"}
    assert "Shortcut options &lt;A|B|C&gt;" in html
    assert "A, B and C all beat plain-20 &amp; fix it" in html
    assert "resnet-20 (B)" in html
    assert "(final clean training error, plain minus the best shortcut option)" in html


def test_probe_only_report(tmp_path: Path) -> None:
    results = {
        "schema": 1,
        "experiment": "gradients",
        "title": "Gradient flow",
        "verdict": {"text": "gradients reach the input of every net"},
        "probes": {"gradient_flow": fake_probes((8, 14))["gradient_flow"]},
    }
    write_results(tmp_path, results)
    html = build_report(tmp_path).read_text()
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"gradient_norm"}
    assert 'id="results"' not in html and "Gradient flow</h3>" in html
    assert len(IMG_RE.findall(html)) == 1


@pytest.mark.parametrize("study", ["shortcuts", "responses"])
def test_a_file_from_before_the_redesign_gives_the_same_page(tmp_path: Path, study: str) -> None:
    # The expected page is the one reslab 0.1.0 built from the same file, with the PNG data and
    # the builder's versions masked (PNG bytes depend on the matplotlib version).
    shutil.copy(FIXTURES / f"results_v1_{study}.json", tmp_path / RESULTS_NAME)
    html = build_report(tmp_path).read_text(encoding="utf-8")
    html = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,PNG", html)
    html = re.sub(r"<td>reslab [^<]*, matplotlib [^<]*</td>", "<td>REPORT BUILDER</td>", html)
    assert html == (FIXTURES / f"report_v1_{study}.html").read_text(encoding="utf-8")


def test_an_unknown_study_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / RESULTS_NAME).write_text(json.dumps({"schema": 1, "experiment": "no-such-study"}))
    with pytest.raises(ReslabError, match="experiment must be one of degradation, shortcuts"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
