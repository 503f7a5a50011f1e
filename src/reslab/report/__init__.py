"""The report toolkit: results.json, summary statistics, figures and a self-contained page.

It knows no study. :mod:`~reslab.report.schema` owns results.json (its declared schema, the one
validator, write and load, provenance), :mod:`~reslab.report.stats` the mean ± std over seeds,
:mod:`~reslab.report.figures` the fixed style, colours and deterministic PNGs, and
:mod:`~reslab.report.html` the page. The studies in :mod:`reslab.experiments` decide which
figures and tables a report shows; :func:`reslab.experiments.build_report` puts them together.
"""

from reslab.report.figures import FigureSpec, figure_png, save_figure
from reslab.report.html import REPORT_NAME, Section
from reslab.report.schema import (
    RESULTS_NAME,
    SCHEMA_VERSION,
    load_results,
    new_results,
    provenance,
    validate_results,
    write_results,
)
from reslab.report.stats import summarize_runs

__all__ = [
    "REPORT_NAME",
    "RESULTS_NAME",
    "SCHEMA_VERSION",
    "FigureSpec",
    "Section",
    "figure_png",
    "load_results",
    "new_results",
    "provenance",
    "save_figure",
    "summarize_runs",
    "validate_results",
    "write_results",
]
