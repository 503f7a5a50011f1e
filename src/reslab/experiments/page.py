"""``reslab report``: a study's figures and report.html, rebuilt from its results.json alone.

Nothing is trained or measured again: the page is a pure function of the results file, and the
same file gives the same PNG bytes. The study named in the file decides which figures and
tables appear (:class:`reslab.experiments.registry.Study`); :mod:`reslab.report` draws them.
"""

from __future__ import annotations

from pathlib import Path

from reslab.experiments.registry import get_study, list_studies
from reslab.fileio import atomic_write_bytes, atomic_write_text
from reslab.report.figures import FIGURES_DIR, figure_png
from reslab.report.html import REPORT_NAME, RenderedFigure, render_page, verdict_items
from reslab.report.schema import load_results

__all__ = ["build_report"]


def build_report(study_dir: str | Path) -> Path:
    """Rebuild ``figures/*.png`` and ``report.html`` in ``study_dir`` from its results.json.

    Only the saved results are read, parsed with bounds and checked against the schema whole
    before anything is drawn; nothing is trained or measured again. Figures this
    results file has no data for are not drawn (and stale copies of them are removed). Returns
    the path of ``report.html``. Raises :class:`ReslabError` if results.json is missing or
    invalid.
    """
    studies = {name: get_study(name) for name in list_studies()}
    looks = {name: s.look() for name, s in studies.items()}
    checks = {name: v.results for name, v in looks.items() if v.results}
    folder = Path(study_dir)
    results = load_results(folder, experiments=tuple(studies), checks=checks)
    if folder.is_file():
        folder = folder.parent
    study, views = studies[results["experiment"]], looks[results["experiment"]]
    # Everything is drawn in memory first: a value that breaks a figure or the page leaves
    # nothing half-written. Then the figures, and last report.html, which embeds them all and
    # is the commit point: each file is replaced atomically, never seen half-written.
    rendered = []
    for spec in views.figures:
        fig = spec.draw(results)
        if fig is not None:
            png = figure_png(fig)
            rendered.append(RenderedFigure(spec.name, spec.caption, spec.how_to, png))
    page = render_page(
        results,
        intro=study.intro,
        verdict=verdict_items(results.get("verdict") or {}, views.verdict_formats),
        sections=views.tables(results),
        figures=rendered,
    )
    fig_dir = folder / FIGURES_DIR
    for figure in rendered:
        atomic_write_bytes(fig_dir / f"{figure.name}.png", figure.png)
    # A figure that has no data now (e.g. probes dropped from a rerun) must not linger; files
    # no study draws are the user's and stay.
    drawn = {r.name for r in rendered}
    for name in {spec.name for v in looks.values() for spec in v.figures} - drawn:
        (fig_dir / f"{name}.png").unlink(missing_ok=True)
    return atomic_write_text(folder / REPORT_NAME, page)
