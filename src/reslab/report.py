"""Figures and a self-contained HTML report, rebuilt from a study's saved ``results.json`` alone.

Every experiment (``reslab degradation``, ``shortcuts``, ``gradients``, ``responses``) writes one
``results.json`` into its study folder with :func:`write_results`. :func:`build_report` reads it
back and writes ``figures/*.png`` and one ``report.html``: figures embedded as base64 PNG data
URIs, inline CSS, no JavaScript, no fonts or anything else fetched from the network, so the file
can be mailed, archived or opened offline. Nothing is re-run: the report is a pure function of
the results file, and the same file gives the same PNG bytes.

results.json, schema 1
======================

Errors are in **percent** (0–100). Times are in seconds. ``null`` means "not measured" (a
non-finite float such as a diverged loss is also written as ``null``). Keys not listed here are
allowed and ignored by the report.

Common top level (every experiment)::

    {
      "schema": 1,                      # int, required; a newer schema is refused
      "experiment": "degradation",      # required: degradation | shortcuts | gradients | responses
      "title": "Degradation: plain vs residual nets on CIFAR-10",
      "reslab_version": "0.1.0", "torch_version": "2.13.0", "python_version": "3.12.1",
      "created": "2025-01-31T12:00:00+00:00",   # ISO 8601
      "machine": "Linux-6.1-x86_64, 16 CPUs, CUDA: NVIDIA H100",
      "config": {...},                  # the experiment's configuration, shown as JSON
      "verdict": {"text": "...", ...}   # one-sentence conclusion, shown at the top
    }

:func:`provenance` returns the five version/date/machine fields and :func:`new_results` the whole
skeleton.

``degradation`` and ``shortcuts`` add ``runs`` and ``summary``::

    "runs": [{
      "name": "plain56-s0", "model": "plain56",
      "family": "plain",            # plain | residual
      "depth": 56,                  # weighted layers
      "shortcut": null,             # A | B | C for residual nets, null for plain ones
      "seed": 0, "params": 855770,
      "final_clean_train_error": 9.1,  # % on the training set, no augmentation, eval mode
      "final_test_error": 12.3,        # %
      "wall_time": 1234.5,             # s
      "curves": {                   # parallel lists, one entry per evaluation (usually an epoch)
        "epoch": [...], "step": [...],   # step = optimiser iterations so far (x axis)
        "clean_train_error": [...],      # %, as final_clean_train_error
        "train_error": [...],            # %, running error on augmented batches
        "test_error": [...], "train_loss": [...], "lr": [...]
      }
    }],
    "summary": [{                   # one row per (family, depth, shortcut), over seeds
      "family": "plain", "depth": 56, "shortcut": null,
      "label": "plain-56",          # or "resnet-56", "resnet-20 (B)"
      "n_seeds": 2,
      "clean_train_error_mean": 9.1, "clean_train_error_std": 0.4,
      "test_error_mean": 12.3, "test_error_std": 0.3
    }],

Standard deviations are sample standard deviations over seeds (``ddof=1``; 0 for one seed).
:func:`summarize_runs` computes ``summary`` from ``runs``; the report does the same when
``summary`` is missing. The degradation verdict (see :func:`degradation_verdict`)::

    "verdict": {
      "text": "plain-56 trains worse than plain-20 (degradation); resnet-56 trains as well as ...",
      "degradation": true,          # plain_gap > max(tolerance, 2 * plain_gap_noise)
      "residual_ok": true,          # residual_gap <= tolerance
      "plain_gap": 2.1,             # percentage points: final clean training error of the
      "residual_gap": -0.8,         # deepest minus the shallowest net of that family (mean)
      "tolerance": 1.0              # percentage points
    }

Probes (``gradients`` and ``responses``; the degradation study may add any of them too) live
under ``"probes"``, each a list with one entry per (model, time)::

    "probes": {
      "gradient_flow": [{
        "label": "plain-56", "family": "plain", "depth": 56,
        "when": "init",                 # init | trained | "step N"
        "block": [names], "input_grad_norm": [...],  # ‖∂L/∂x_l‖ at each block's input
        "layer": [names], "weight_grad_norm": [...]  # ‖∂L/∂W‖ per conv/linear layer
      }],
      "residual_magnitude": [{
        "label": "resnet-56", "family": "residual", "depth": 56,
        "block": [names], "ratio": [...],            # ‖F(x)‖/‖x‖ per block
        "f_norm": [...], "shortcut_norm": [...]      # ‖F(x)‖, ‖shortcut(x)‖ (null for plain)
      }],
      "layer_responses": [{
        "label": "resnet-56", "family": "residual", "depth": 56,
        "layer": [names], "std": [...],              # std of each 3×3 layer's output (after BN)
        "std_sorted": [...]                          # the same, sorted descending
      }]
    }

Figures
=======

Each figure function takes plain data (lists of dicts as above) and returns a
:class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a deterministic PNG. They
never touch pyplot or the global backend. Plain nets are dashed lines with square markers,
residual nets solid lines with circle markers, and colour (Okabe–Ito, colour-blind safe) marks
the depth, so the two families stay apart without colour.

* :func:`error_curves` — error vs iterations, plain | residual (He et al. 2015, Fig. 6).
* :func:`error_vs_depth` — final training and test error vs depth.
* :func:`shortcut_errors` — final errors of plain and shortcut options A/B/C.
* :func:`gradient_norm` — ‖∂L/∂x_l‖ per block, log scale.
* :func:`residual_ratio` — ‖F(x)‖/‖x‖ per block.
* :func:`layer_responses` — std of layer responses, in order and sorted (Fig. 7).
* :func:`explain_figure` — the worked example ``y = x + F(x)`` as a block diagram.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

from reslab.errors import ReslabError
from reslab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "EXPERIMENTS",
    "FIGURE_NAMES",
    "RESULTS_NAME",
    "SCHEMA_VERSION",
    "build_report",
    "degradation_verdict",
    "error_curves",
    "error_vs_depth",
    "explain_figure",
    "figure_png",
    "gradient_norm",
    "layer_responses",
    "load_results",
    "new_results",
    "provenance",
    "residual_ratio",
    "save_figure",
    "shortcut_errors",
    "summarize_runs",
    "validate_results",
    "write_results",
]

SCHEMA_VERSION = 1
RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"
FIGURES_DIR = "figures"
EXPERIMENTS: tuple[str, ...] = ("degradation", "shortcuts", "gradients", "responses")
FAMILIES: tuple[str, ...] = ("plain", "residual")
#: Every figure :func:`build_report` may write, in report order (``figures/NAME.png``).
FIGURE_NAMES: tuple[str, ...] = (
    "error_curves",
    "error_vs_depth",
    "shortcut_errors",
    "gradient_norm",
    "residual_ratio",
    "layer_responses",
)

DPI = 110
#: Okabe & Ito (2008) colour-blind-safe palette, yellow left out (too pale on white).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
)
FAMILY_COLOURS = {"plain": "#D55E00", "residual": "#0072B2"}
#: Plain = dashed + squares, residual = solid + circles: readable in greyscale.
FAMILY_STYLE: dict[str, dict[str, Any]] = {
    "plain": {"linestyle": "--", "marker": "s"},
    "residual": {"linestyle": "-", "marker": "o"},
}
_OTHER_STYLE: dict[str, Any] = {"linestyle": ":", "marker": "^"}

# Fixed style for every figure, applied only while a figure is built or saved, so results do
# not depend on the user's matplotlibrc and nothing global changes.
_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "legend.framealpha": 0.9,
}

_GRAD_LABEL = r"$\|\partial L / \partial x_l\|$ (log scale)"


# --- results.json: provenance, write, load, validate ----------------------------------------------


def provenance() -> dict[str, str]:
    """The version, date and machine fields every results.json carries.

    Returns ``reslab_version``, ``torch_version``, ``python_version``, ``created`` (now, UTC,
    ISO 8601) and ``machine`` (OS, architecture, CPU count and CUDA device if any; no hostname).
    """
    from reslab import __version__

    machine = f"{platform.platform(terse=True)} {platform.machine()}, {os.cpu_count()} CPUs"
    try:
        import torch

        torch_version = str(torch.__version__)
        if torch.cuda.is_available():
            machine += f", CUDA: {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return {
        "reslab_version": __version__,
        "torch_version": torch_version,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
    }


def new_results(experiment: str, title: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The common top level of a results.json, with provenance filled in and an empty verdict."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS}")
    return {
        "schema": SCHEMA_VERSION,
        "experiment": experiment,
        "title": title,
        **provenance(),
        "config": _jsonable(dict(config), "config"),
        "verdict": {"text": ""},
    }


def write_results(study_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Validate ``results`` and write it atomically to ``study_dir/results.json``.

    NumPy and torch scalars and arrays become plain numbers and lists, non-finite floats become
    ``null``. Returns the path written. Raises :class:`ReslabError` if the results do not follow
    the schema (the previous file, if any, is left untouched).
    """
    clean = _jsonable(dict(results), "results")
    path = Path(study_dir) / RESULTS_NAME
    validate_results(clean, source=f"results for {path}")
    return atomic_write_json(path, clean)


def load_results(study_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``study_dir/results.json`` (or a results file given directly).

    Raises :class:`ReslabError` with a one-line message if it is missing, not JSON, or does not
    follow the schema.
    """
    study = Path(study_dir)
    path = study if study.is_file() else study / RESULTS_NAME
    if not path.is_file():
        raise ReslabError(
            f"no {RESULTS_NAME} in {study}: run `reslab degradation --out {study}` first"
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReslabError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
            "rerun the experiment to rewrite it"
        ) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ReslabError(f"cannot read {path}: {exc}; rerun the experiment to rewrite it") from exc
    return validate_results(results, source=str(path))


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check the parts of ``results`` that the report reads; return it unchanged.

    Raises :class:`ReslabError` naming the first problem, e.g. ``runs[2].curves.step must be a
    list of numbers``. Unknown keys are allowed.
    """
    v = _Validator(source)
    if not isinstance(results, dict):
        v.fail("", f"must be a JSON object, not {type(results).__name__}")
    schema = results.get("schema")
    if schema is None:
        v.fail("schema", f"is missing (expected {SCHEMA_VERSION})")
    if not _is_int(schema) or schema < 1:
        v.fail("schema", f"must be a positive integer, not {schema!r}")
    if schema > SCHEMA_VERSION:
        raise ReslabError(
            f"{source}: schema {schema} was written by a newer reslab (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade reslab"
        )
    if results.get("experiment") not in EXPERIMENTS:
        v.fail("experiment", f"must be one of {', '.join(EXPERIMENTS)}")
    for key in ("title", "reslab_version", "torch_version", "python_version", "created"):
        v.optional_str(results, key)
    v.optional_str(results, "machine")
    if results.get("config") is not None and not isinstance(results["config"], dict):
        v.fail("config", "must be an object")
    verdict = results.get("verdict")
    if verdict is not None:
        if not isinstance(verdict, dict):
            v.fail("verdict", 'must be an object like {"text": "..."}')
        v.optional_str(verdict, "text", "verdict.")
    for i, run in enumerate(v.list_of_objects(results, "runs")):
        where = f"runs[{i}]."
        v.family_depth(run, where)
        for key in ("final_clean_train_error", "final_test_error", "wall_time", "params"):
            v.optional_number(run, key, where)
        curves = run.get("curves")
        if curves is not None:
            if not isinstance(curves, dict):
                v.fail(f"{where}curves", "must be an object of lists")
            for key, values in curves.items():
                v.numbers(values, f"{where}curves.{key}")
    for i, row in enumerate(v.list_of_objects(results, "summary")):
        where = f"summary[{i}]."
        v.family_depth(row, where)
        for key in _SUMMARY_NUMBERS:
            v.optional_number(row, key, where)
    probes = results.get("probes")
    if probes is not None:
        if not isinstance(probes, dict):
            v.fail("probes", "must be an object")
        for kind, required in _PROBE_ARRAYS.items():
            for i, entry in enumerate(v.list_of_objects(probes, kind, "probes.")):
                where = f"probes.{kind}[{i}]."
                v.family_depth(entry, where)
                v.numbers(entry.get(required), where + required)
                for key, values in entry.items():
                    if key != required and key in _PROBE_NUMBER_LISTS and values is not None:
                        v.numbers(values, where + key)
    return results


_SUMMARY_NUMBERS = (
    "n_seeds",
    "clean_train_error_mean",
    "clean_train_error_std",
    "test_error_mean",
    "test_error_std",
)
_PROBE_ARRAYS = {
    "gradient_flow": "input_grad_norm",
    "residual_magnitude": "ratio",
    "layer_responses": "std",
}
_PROBE_NUMBER_LISTS = {
    "input_grad_norm",
    "weight_grad_norm",
    "ratio",
    "f_norm",
    "shortcut_norm",
    "std",
    "std_sorted",
}


class _Validator:
    """Small helpers that raise one-line :class:`ReslabError` messages with a JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        what = f"{where} " if where else ""
        raise ReslabError(f"{self.source}: {what}{problem}; rerun the experiment or fix the file")

    def optional_str(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> None:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            self.fail(prefix + key, "must be a string")

    def optional_number(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> None:
        if obj.get(key) is not None and not _is_number(obj[key]):
            self.fail(prefix + key, f"must be a number, not {obj[key]!r}")

    def numbers(self, values: Any, where: str) -> None:
        if not isinstance(values, list) or not all(x is None or _is_number(x) for x in values):
            self.fail(where, "must be a list of numbers")

    def list_of_objects(
        self, obj: Mapping[str, Any], key: str, prefix: str = ""
    ) -> list[dict[str, Any]]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            self.fail(prefix + key, "must be a list of objects")
        return value

    def family_depth(self, obj: Mapping[str, Any], prefix: str) -> None:
        if obj.get("family") not in FAMILIES:
            self.fail(
                prefix + "family", f"must be 'plain' or 'residual', not {obj.get('family')!r}"
            )
        if not _is_int(obj.get("depth")) or obj["depth"] < 1:
            self.fail(prefix + "depth", f"must be a positive integer, not {obj.get('depth')!r}")
        shortcut = obj.get("shortcut")
        if shortcut is not None and not isinstance(shortcut, str):
            self.fail(prefix + "shortcut", "must be 'A', 'B', 'C' or null")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data: arrays/tensors to lists, non-finite floats to None."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return _jsonable(obj.tolist(), where)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in results.json")


# --- summaries and verdicts -----------------------------------------------------------------------

GroupKey = tuple[str, int, "str | None"]


def _key(obj: Mapping[str, Any]) -> GroupKey:
    return (str(obj["family"]), int(obj["depth"]), obj.get("shortcut"))


def _sort_key(key: GroupKey) -> tuple[int, str, int]:
    family, depth, shortcut = key
    return (FAMILIES.index(family) if family in FAMILIES else 9, shortcut or "", depth)


def _label(key: GroupKey, with_shortcut: bool) -> str:
    family, depth, shortcut = key
    if family == "plain":
        return f"plain-{depth}"
    return f"resnet-{depth}" + (f" ({shortcut})" if with_shortcut and shortcut else "")


def _several_shortcuts(items: Sequence[Mapping[str, Any]]) -> bool:
    return len({x.get("shortcut") for x in items if x.get("family") == "residual"}) > 1


def _group(items: Sequence[Mapping[str, Any]]) -> dict[GroupKey, list[Mapping[str, Any]]]:
    groups: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for item in items:
        groups.setdefault(_key(item), []).append(item)
    return {k: groups[k] for k in sorted(groups, key=_sort_key)}


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return mean, std


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``summary`` row per (family, depth, shortcut): mean and sample std over seeds."""
    with_shortcut = _several_shortcuts(runs)
    rows = []
    for key, members in _group(runs).items():
        train = _mean_std([r.get("final_clean_train_error") for r in members])
        test = _mean_std([r.get("final_test_error") for r in members])
        rows.append(
            {
                "family": key[0],
                "depth": key[1],
                "shortcut": key[2],
                "label": _label(key, with_shortcut),
                "n_seeds": len(members),
                "clean_train_error_mean": train[0],
                "clean_train_error_std": train[1],
                "test_error_mean": test[0],
                "test_error_std": test[1],
            }
        )
    return rows


def degradation_verdict(
    summary: Sequence[Mapping[str, Any]], tolerance: float = 1.0
) -> dict[str, Any]:
    """The degradation study's verdict from its summary rows.

    ``plain_gap`` (``residual_gap``) is the mean final clean training error of the deepest
    plain (residual) net minus that of the shallowest, in percentage points. Degradation is
    ``plain_gap > max(tolerance, 2 * noise)``, the noise being the two ends' seed standard
    deviations added in quadrature; residual nets are fine if ``residual_gap <= tolerance``.
    Needs both families at two or more depths (the first shortcut option, if there are
    several).
    """
    ends: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for family in FAMILIES:
        rows = [
            r
            for r in summary
            if r.get("family") == family and r.get("clean_train_error_mean") is not None
        ]
        if family == "residual" and rows:
            first = sorted(str(r.get("shortcut")) for r in rows)[0]
            rows = [r for r in rows if str(r.get("shortcut")) == first]
        rows.sort(key=lambda r: int(r["depth"]))
        if len(rows) < 2 or rows[0]["depth"] == rows[-1]["depth"]:
            raise ReslabError(
                f"the degradation verdict needs {family} nets at two or more depths with a "
                "final training error; run the study with at least two --depths"
            )
        ends[family] = (rows[0], rows[-1])

    def name(row: Mapping[str, Any]) -> str:
        return str(row.get("label") or _label(_key(row), False))

    def gap(family: str) -> float:
        shallow, deep = ends[family]
        return float(deep["clean_train_error_mean"]) - float(shallow["clean_train_error_mean"])

    def spread(family: str) -> float:
        """Seed noise of the gap: the two ends' standard deviations added in quadrature."""
        shallow, deep = ends[family]
        stds = [float(r.get("clean_train_error_std") or 0.0) for r in (shallow, deep)]
        return math.hypot(*stds)

    plain_gap, residual_gap = gap("plain"), gap("residual")
    # A gap counts only if it beats both the tolerance and twice the seed-to-seed noise.
    degradation = plain_gap > max(tolerance, 2 * spread("plain"))
    residual_ok = residual_gap <= tolerance
    (ps, pd), (rs, rd) = ends["plain"], ends["residual"]

    def errors(deep: Mapping[str, Any], shallow: Mapping[str, Any]) -> str:
        return (
            f"{float(deep['clean_train_error_mean']):.1f} % vs "
            f"{float(shallow['clean_train_error_mean']):.1f} % training error"
        )

    plain_text = (
        f"{name(pd)} trains worse than {name(ps)} (degradation): {errors(pd, ps)}"
        if degradation
        else f"{name(pd)} trains as well as {name(ps)} (no degradation at these depths): "
        f"{errors(pd, ps)}"
    )
    residual_text = (
        f"{name(rd)} trains as well as {name(rs)}: {errors(rd, rs)}"
        if residual_ok
        else f"{name(rd)} also trains worse than {name(rs)}: {errors(rd, rs)}"
    )
    return {
        "text": f"{plain_text}; {residual_text}",
        "degradation": degradation,
        "residual_ok": residual_ok,
        "plain_gap": round(plain_gap, 4),
        "plain_gap_noise": round(spread("plain"), 4),
        "residual_gap": round(residual_gap, 4),
        "tolerance": tolerance,
    }


_WHEN_TITLES = {"init": "gradients at initialisation", "trained": "gradients after training"}

# --- figure helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _style() -> Iterator[None]:
    rc: Any = _RC
    with matplotlib.rc_context(rc):
        yield


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`, without metadata, so equal figures give equal bytes."""
    buf = io.BytesIO()
    with _style():
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a deterministic PNG (atomically) and return the path."""
    return atomic_write_bytes(path, figure_png(fig))


def _style_of(family: str) -> dict[str, Any]:
    return FAMILY_STYLE.get(family, _OTHER_STYLE)


def _colours(keys: Sequence[Any]) -> dict[Any, str]:
    """A palette colour per distinct key, in sorted order, cycling past seven."""
    distinct = sorted(set(keys), key=lambda k: (str(type(k)), k))
    return {k: OKABE_ITO[i % len(OKABE_ITO)] for i, k in enumerate(distinct)}


def _colour_key(key: GroupKey, several_shortcuts: bool) -> Any:
    """Colour by depth, or by (depth, shortcut) when shortcut options are being compared."""
    return (key[1], key[2] or "") if several_shortcuts else key[1]


def _array(values: Any) -> np.ndarray:
    if not isinstance(values, Sequence):
        return np.array([], dtype=float)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _has_values(values: Any) -> bool:
    """True if ``values`` is a list with at least one number (not all null)."""
    return isinstance(values, list) and any(_is_number(v) for v in values)


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _nan_stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: not measured there
        mean = np.nanmean(stack, axis=0)
        count = np.sum(np.isfinite(stack), axis=0)
        std = np.where(count > 1, np.nanstd(stack, axis=0, ddof=1), 0.0)
    return mean, np.nan_to_num(std)


def _legend(ax: Axes, handles: Sequence[Any] | None = None, **kw: Any) -> None:
    if handles is None:
        if ax.get_legend_handles_labels()[0]:  # nothing drawn (e.g. every run diverged)
            ax.legend(**kw)
    else:
        ax.legend(handles=list(handles), **kw)


def _markevery(n: int) -> int:
    return max(1, n // 8)


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the fixed report style."""

    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with _style():
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__module__ = fn.__module__
    return wrapper


# --- the figures ----------------------------------------------------------------------------------


@_styled
def error_curves(
    runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]] | None = None
) -> Figure:
    """Error vs iterations, one panel per family (He et al. 2015, Fig. 6).

    Thin lines are the clean training error, bold lines the test error, each the mean over
    seeds with a ±1 std band when there are several. Colour marks the depth (or the shortcut
    option when several are compared). ``summary`` supplies the labels, if given.
    """
    groups = _group([r for r in runs if isinstance(r.get("curves"), Mapping)])
    if not groups:
        raise ValueError("error_curves needs runs with curves")
    several = _several_shortcuts(runs)
    labels = {_key(r): str(r["label"]) for r in summary or () if r.get("label")}
    colours = _colours([_colour_key(k, several) for k in groups])
    families = [f for f in FAMILIES if any(k[0] == f for k in groups)]
    fig = _new_figure(5.6 * len(families), 4.4)
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)[0]
    top = 0.0
    # One x axis for the whole figure: iterations if every run has them, else epochs.
    with_steps = all(_has_values(m["curves"].get("step")) for g in groups.values() for m in g)
    x_name, x_label = (
        ("step", "iterations (optimiser steps)") if with_steps else ("epoch", "epochs")
    )
    # Runs with a validation split (--val-split) record validation error per epoch instead.
    with_test = all(_has_values(m["curves"].get("test_error")) for g in groups.values() for m in g)
    eval_key, eval_name = ("test_error", "test error") if with_test else ("val_error", "val error")
    for ax, family in zip(axes, families, strict=True):
        style = _style_of(family)
        handles: list[Any] = []
        train_name = "training error (clean)"
        for key, members in groups.items():
            if key[0] != family:
                continue
            colour = colours[_colour_key(key, several)]
            curves = [m["curves"] for m in members]
            train_key = (
                "clean_train_error"
                if all(_has_values(c.get("clean_train_error")) for c in curves)
                else "train_error"
            )
            if train_key == "train_error":
                train_name = "training error (running, augmented)"
            x = _array(curves[0].get(x_name))
            for metric, width, size in ((train_key, 1.0, 3.0), (eval_key, 2.6, 5.0)):
                arrays = [_array(c.get(metric)) for c in curves if _has_values(c.get(metric))]
                if not arrays:
                    continue
                n = min(len(x), *(len(a) for a in arrays))
                mean, std = _nan_stats(np.vstack([a[:n] for a in arrays]))
                xs, ys = _finite(x[:n], mean)
                if not len(xs):
                    continue
                _, sd = _finite(x[:n], np.where(np.isfinite(mean), std, np.nan))
                top = max(top, float(np.max(ys + sd)))
                ax.plot(
                    xs,
                    ys,
                    color=colour,
                    linewidth=width,
                    markersize=size,
                    markevery=_markevery(len(xs)),
                    **style,
                )
                if len(arrays) > 1:
                    ax.fill_between(xs, ys - sd, ys + sd, color=colour, alpha=0.13, linewidth=0)
            seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
            handles.append(
                Line2D(
                    [],
                    [],
                    color=colour,
                    linewidth=2.0,
                    label=labels.get(key, _label(key, several)) + seeds,
                    **style,
                )
            )
        ls = style["linestyle"]
        handles += [
            Line2D([], [], color="0.35", linewidth=1.0, linestyle=ls, label=f"thin: {train_name}"),
            Line2D([], [], color="0.35", linewidth=2.6, linestyle=ls, label=f"bold: {eval_name}"),
        ]
        _legend(ax, handles, loc="upper right")
        ax.set_title(f"{family} networks")
        ax.set_xlabel(x_label)
        ax.set_ylabel("error (%)")
        ax.tick_params(labelleft=True)
    if top > 0:
        axes[0].set_ylim(0, min(100.0, top * 1.08))
    return fig


@_styled
def error_vs_depth(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Final clean training error (left) and test error (right) vs depth, mean ± std over seeds.

    Plain nets: dashed, squares; residual nets: solid, circles (one line per shortcut option
    if several are present).
    """
    several = _several_shortcuts(summary)
    series: dict[tuple[str, str | None], list[Mapping[str, Any]]] = {}
    for row in sorted(summary, key=lambda r: _sort_key(_key(r))):
        series.setdefault((row["family"], row.get("shortcut")), []).append(row)
    if not series:
        raise ValueError("error_vs_depth needs summary rows")
    palette = iter(OKABE_ITO[2:])
    depths = sorted({int(r["depth"]) for r in summary})
    fig = _new_figure(10.5, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (
        ("clean_train_error", "final training error (clean)"),
        ("test_error", "final test error"),
    )
    colours: dict[tuple[str, str | None], str] = {}
    for (family, shortcut), _rows in series.items():
        if family in FAMILY_COLOURS and family not in {f for f, _ in colours}:
            colours[(family, shortcut)] = FAMILY_COLOURS[family]
        else:
            colours[(family, shortcut)] = next(palette, "0.3")
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for (family, shortcut), rows in series.items():
            pts = [
                (int(r["depth"]), r.get(f"{metric}_mean"), r.get(f"{metric}_std") or 0.0)
                for r in rows
                if r.get(f"{metric}_mean") is not None
            ]
            if not pts:
                continue
            name = "residual" if family == "residual" else family
            if family == "residual" and several and shortcut:
                name += f" ({shortcut})"
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                color=colours[(family, shortcut)],
                linewidth=1.8,
                markersize=6,
                capsize=3,
                label=f"{name} nets",
                **_style_of(family),
            )
        ax.set_xticks(depths)
        ax.set_title(title)
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("error (%)")
        ax.tick_params(labelleft=True)
        _legend(ax, loc="best")
    axes[0].set_ylim(bottom=0)
    return fig


@_styled
def shortcut_errors(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Final training (hatched) and test (solid) error per variant, error bars = std."""
    rows = sorted(summary, key=lambda r: _sort_key(_key(r)))
    if not rows:
        raise ValueError("shortcut_errors needs summary rows")
    several = _several_shortcuts(rows)
    fig = _new_figure(max(5.5, 1.5 * len(rows) + 2.5), 4.3)
    ax = fig.add_subplot()
    width = 0.38
    top = 0.0
    for i, row in enumerate(rows):
        colour = (
            FAMILY_COLOURS["plain"]
            if row["family"] == "plain"
            else OKABE_ITO[(i + 1) % len(OKABE_ITO)]
        )
        for offset, metric, hatch, face in (
            (-width / 2, "clean_train_error", "///", "white"),
            (width / 2, "test_error", "", colour),
        ):
            mean = row.get(f"{metric}_mean")
            if mean is None:
                continue
            std = row.get(f"{metric}_std") or 0.0
            ax.bar(
                i + offset,
                mean,
                width,
                yerr=std,
                color=face,
                edgecolor=colour,
                hatch=hatch,
                linewidth=1.5,
                capsize=3,
                error_kw={"elinewidth": 1.0, "ecolor": "0.2"},
            )
            ax.annotate(
                f"{mean:.1f}",
                (i + offset, mean + std),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            top = max(top, mean + std)
    ax.set_xticks(range(len(rows)), [str(r.get("label") or _label(_key(r), several)) for r in rows])
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(0, max(1.0, top * 1.3))  # headroom for the labels and the legend
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("network (shortcut option: A zero-pad, B projection where shape changes, C all)")
    ax.set_ylabel("final error (%)")
    _legend(
        ax,
        [
            Patch(facecolor="white", edgecolor="0.3", hatch="///", label="training error (clean)"),
            Patch(facecolor="0.45", edgecolor="0.3", label="test error"),
        ],
        loc="upper center",
        ncols=2,
    )
    return fig


def _probe_lines(
    ax: Axes,
    entries: Sequence[Mapping[str, Any]],
    values: Callable[[Mapping[str, Any]], Any],
    log: bool,
) -> int:
    """One line per probe entry, colour by depth and style by family; returns lines drawn."""
    colours = _colours([int(e["depth"]) for e in entries])
    drawn = 0
    for entry in entries:
        y = _array(values(entry))
        if log:
            y = np.where(y > 0, y, np.nan)
        x, y = _finite(np.arange(len(y), dtype=float), y)
        if not len(x):
            continue
        label = str(entry.get("label") or _label(_key(entry), False))
        ax.plot(
            x,
            y,
            color=colours[int(entry["depth"])],
            linewidth=1.6,
            markersize=4,
            markevery=max(1, len(x) // 30),
            label=label,
            **_style_of(str(entry["family"])),
        )
        drawn += 1
    if log and drawn:
        ax.set_yscale("log")
    return drawn


def _wide_range(entries: Sequence[Mapping[str, Any]], key: str) -> bool:
    ys = np.concatenate([_array(e.get(key)) for e in entries] or [np.array([])])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    return bool(len(ys)) and float(ys.max() / ys.min()) > 30


@_styled
def gradient_norm(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """‖∂L/∂x_l‖ at each block's input, log scale; one panel per ``when`` (init, trained, ...)."""
    if not entries:
        raise ValueError("gradient_norm needs gradient_flow entries")
    whens = list(dict.fromkeys(str(e.get("when", "")) for e in entries))
    fig = _new_figure(min(5.6 * len(whens), 16.0), 4.3)
    axes = fig.subplots(1, len(whens), sharey=True, squeeze=False)[0]
    for ax, when in zip(axes, whens, strict=True):
        _probe_lines(
            ax,
            [e for e in entries if str(e.get("when", "")) == when],
            _get("input_grad_norm"),
            True,
        )
        ax.set_title(_WHEN_TITLES.get(when, f"gradients at {when}") if when else "gradients")
        ax.set_xlabel("block index (input → output)")
        ax.set_ylabel(_GRAD_LABEL)
        ax.tick_params(labelleft=True)
        _legend(ax, loc="best")
    return fig


def _get(key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda entry: entry.get(key)


@_styled
def residual_ratio(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """‖F(x)‖/‖x‖ per block: how big each block's correction is next to its input."""
    if not entries:
        raise ValueError("residual_ratio needs residual_magnitude entries")
    fig = _new_figure(8.0, 4.3)
    ax = fig.add_subplot()
    log = _wide_range(entries, "ratio")
    _probe_lines(ax, entries, _get("ratio"), log)
    if not log:
        ax.set_ylim(bottom=0)
    ax.set_title("size of the residual branch relative to its input")
    ax.set_xlabel("block index (input → output)")
    ax.set_ylabel(r"$\|F(x)\| \,/\, \|x\|$ (ratio, dimensionless)" + (", log" if log else ""))
    _legend(ax, loc="best")
    return fig


def _sorted_std(entry: Mapping[str, Any]) -> Any:
    if entry.get("std_sorted"):
        return entry["std_sorted"]
    values = [v for v in entry.get("std") or [] if v is not None]
    return sorted(values, reverse=True)


@_styled
def layer_responses(entries: Sequence[Mapping[str, Any]]) -> Figure:
    """Std of each 3×3 layer's response in network order (top) and sorted (bottom), Fig. 7."""
    if not entries:
        raise ValueError("layer_responses needs layer_responses entries")
    fig = _new_figure(9.0, 7.2)
    top, bottom = fig.subplots(2, 1)
    _probe_lines(top, entries, _get("std"), False)
    _probe_lines(bottom, entries, _sorted_std, False)
    top.set_title("layer responses in network order")
    top.set_xlabel("layer index (input → output)")
    bottom.set_title("layer responses sorted by magnitude")
    bottom.set_xlabel("layer rank (sorted by std, largest first)")
    for ax in (top, bottom):
        ax.set_ylabel("std of response (a.u.)")
        ax.set_ylim(bottom=0)
        _legend(ax, loc="upper right")
    return fig


def _fmt_number(value: float) -> str:
    text = f"{float(value):.3f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return text.replace("-", "\N{MINUS SIGN}")


def _fmt_vector(values: Sequence[float], limit: int = 6) -> str:
    shown = [_fmt_number(v) for v in list(values)[:limit]]
    more = ", …" if len(values) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def explain_figure(
    x: Sequence[float],
    h: Sequence[float] | None,
    f: Sequence[float],
    y: Sequence[float],
    path: str | Path,
) -> Path:
    """Draw a residual block's worked example, ``y = x + F(x)``, and save it as a PNG.

    ``x`` enters; the main path (weight layers) computes the correction ``f`` = F(x); the
    identity shortcut carries ``x`` around it to the addition ⊕; ``y`` leaves. ``h`` is the
    mapping the block is asked for, H(x) (drawn under the output; ``None`` leaves it out), so
    the figure shows that the layers only learn F(x) = H(x) − x. The numbers are drawn as
    given, never recomputed. Returns ``path``.
    """
    if not len(x) == len(f) == len(y):
        raise ValueError(f"x, F(x) and y must have one length, got {len(x)}, {len(f)}, {len(y)}")
    with _style():
        fig = _new_figure(11.5, 3.9)
        ax = fig.add_subplot()
        ax.set_xlim(0, 12)
        ax.set_ylim(0.4, 4.3)
        ax.axis("off")
        cy = 1.9
        blue, vermillion, green = OKABE_ITO[0], OKABE_ITO[1], OKABE_ITO[2]

        def box(cx: float, w: float, text: str, colour: str, face: str) -> None:
            ax.add_patch(
                FancyBboxPatch(
                    (cx - w / 2, cy - 0.45),
                    w,
                    0.9,
                    boxstyle="round,pad=0.05,rounding_size=0.12",
                    facecolor=face,
                    edgecolor=colour,
                    linewidth=1.6,
                )
            )
            ax.text(cx, cy, text, ha="center", va="center", fontsize=10)

        def arrow(x0: float, x1: float) -> None:
            ax.add_patch(
                FancyArrowPatch(
                    (x0, cy), (x1, cy), arrowstyle="-|>", mutation_scale=14, color="0.15", lw=1.5
                )
            )

        # input, then the main path F (framed): weight layer, ReLU, weight layer
        box(1.0, 1.6, f"input x\n{_fmt_vector(x)}", "0.2", "#F2F2F2")
        ax.add_patch(
            Rectangle(
                (2.2, cy - 0.8),
                4.5,
                1.6,
                fill=False,
                linestyle="--",
                edgecolor=vermillion,
                linewidth=1.2,
            )
        )
        ax.text(4.45, cy - 1.05, "main path F (weight layers)", ha="center", color=vermillion)
        box(3.1, 1.4, "weight layer\n+ ReLU", vermillion, "#FBE7DA")
        box(5.8, 1.4, "weight layer", vermillion, "#FBE7DA")
        arrow(1.85, 2.35)
        arrow(3.85, 5.05)
        arrow(6.55, 8.1)
        ax.text(
            7.45, cy - 0.12, f"F(x) =\n{_fmt_vector(f)}", ha="center", va="top", color=vermillion
        )
        # the addition and the output
        ax.add_patch(Circle((8.4, cy), 0.28, facecolor="white", edgecolor="0.15", linewidth=1.6))
        ax.text(8.4, cy, "+", ha="center", va="center", fontsize=16, fontweight="bold")
        arrow(8.7, 9.35)
        box(10.6, 2.2, f"output y = x + F(x)\n{_fmt_vector(y)}", green, "#DDF2EC")
        if h is not None:
            ax.text(
                10.6,
                cy - 0.6,
                f"asked for H(x) = {_fmt_vector(h)}\nthe layers learn F(x) = H(x) \N{MINUS SIGN} x",
                ha="center",
                va="top",
                color="0.25",
                fontsize=9,
            )
        # the skip path: identity, curving over F into the addition
        ax.add_patch(
            FancyArrowPatch(
                (1.0, cy + 0.5),
                (8.4, cy + 0.3),
                connectionstyle="arc3,rad=-0.28",
                arrowstyle="-|>",
                mutation_scale=16,
                color=blue,
                lw=2.0,
            )
        )
        ax.text(
            4.7,
            3.95,
            f"skip path: identity, carries x = {_fmt_vector(x)} unchanged (no parameters)",
            ha="center",
            color=blue,
        )
        fig.suptitle(
            "A residual block, worked example: the layers learn only the correction F(x)",
            fontsize=11,
        )
    return save_figure(fig, path)


# --- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RenderedFigure:
    name: str
    caption: str
    how_to: str
    png: bytes


_HOW_TO = {
    "error_curves": (
        "Thin lines are the error on the training set itself (measured without augmentation), "
        "bold lines the test error, both against training iterations; sudden drops are "
        "learning-rate decays. Compare the colours within a panel. If the deeper plain net's "
        "thin line lies above the shallower one's, that is the degradation problem: an "
        "optimisation failure, not overfitting — the deeper plain net fits its own training "
        "set worse, although it could copy the shallower net and add identity layers. In the "
        "residual panel the deeper net should reach the same or a lower training error."
    ),
    "error_vs_depth": (
        "Each point is a final error averaged over seeds; bars are ± one standard deviation. "
        "If training error rises with depth for plain nets (dashed, squares), that is the "
        "degradation problem: an optimisation failure, not overfitting — the deeper plain net "
        "fits its own training set worse. Residual nets (solid, circles) should stay level or "
        "improve with depth. Overfitting would look different: low training error with a "
        "rising test error."
    ),
    "shortcut_errors": (
        "Final training error (hatched) and test error (solid) for each variant, ± one "
        "standard deviation over seeds. A: identity shortcuts, zero-padded where the shape "
        "changes (no extra parameters); B: projection shortcuts only where the shape changes; "
        "C: projections on every block. He et al. (2015, Table 3) find all three far better "
        "than the plain net and B, C only marginally better than A: projections are not what "
        "solves degradation, the identity path is."
    ),
    "gradient_norm": (
        "The norm of the loss gradient with respect to each block's input, from the output "
        "(right) back to the input (left), on a log scale. A line that falls steeply towards "
        "the left means gradients shrink on their way back (vanishing); identity shortcuts "
        "give them a direct path, so residual lines stay flatter. With batch normalisation, "
        "plain nets usually keep healthy gradients at initialisation — He et al. argue that "
        "degradation is not caused by vanishing gradients — so compare init with trained."
    ),
    "residual_ratio": (
        "Each point is ‖F(x)‖/‖x‖ for one block: the size of what the block's layers add, "
        "relative to the signal arriving through the shortcut. Values well below 1 mean each "
        "block only makes a small correction to the identity, which is what residual learning "
        "expects when the optimal mapping is close to the identity. For plain nets there is no "
        "shortcut and the ratio compares a block's output with its input."
    ),
    "layer_responses": (
        "The standard deviation of each 3×3 layer's output (after batch normalisation, before "
        "the addition and ReLU) on a batch of training images; top in network order, bottom "
        "sorted from largest to smallest. Residual nets have smaller responses than plain "
        "nets, and deeper residual nets smaller ones still: the residual functions are closer "
        "to zero than non-residual ones, and each layer modifies the signal less "
        "(He et al. 2015, Fig. 7)."
    ),
}

_CAPTIONS = {
    "error_curves": "Error vs iterations for plain (left) and residual (right) networks "
    "(He et al. 2015, Fig. 6 style). Thin: training error; bold: test error; colour: depth.",
    "error_vs_depth": "Final clean training error and test error vs depth. Plain: dashed, "
    "squares; residual: solid, circles; error bars: ± 1 std over seeds.",
    "shortcut_errors": "Final errors of the plain net and the shortcut options A, B and C.",
    "gradient_norm": "Gradient norm ‖∂L/∂x_l‖ at the input of each block (log scale).",
    "residual_ratio": "Relative size of the residual branch, ‖F(x)‖/‖x‖, per block.",
    "layer_responses": "Standard deviation of layer responses, in order (top) and sorted "
    "(bottom), He et al. 2015, Fig. 7 style.",
}

_INTROS = {
    "degradation": "Plain networks and their residual twins, trained with identical settings "
    "at several depths. Plain nets that get deeper can train worse (degradation); residual "
    "nets should not.",
    "shortcuts": "The same residual network with each shortcut option (A: zero-padding "
    "identity, B: projections where the shape changes, C: projections everywhere) next to its "
    "plain twin.",
    "gradients": "Gradient norms at every block of plain and residual networks, measured by "
    "backpropagating one batch.",
    "responses": "The size of each layer's response and of each residual branch relative to "
    "its input, measured on a batch of training images.",
}


def _figure_plan(results: Mapping[str, Any]) -> list[tuple[str, Callable[[], Figure]]]:
    """The figures this results file has data for, in report order, as (name, builder)."""
    runs = results.get("runs") or []
    summary = results.get("summary") or (summarize_runs(runs) if runs else [])
    probes = results.get("probes") or {}
    plan: list[tuple[str, Callable[[], Figure]]] = []
    if any(isinstance(r.get("curves"), dict) and r["curves"] for r in runs):
        plan.append(("error_curves", lambda: error_curves(runs, summary)))
    if len({r["depth"] for r in summary}) >= 2:
        plan.append(("error_vs_depth", lambda: error_vs_depth(summary)))
    if summary and (results.get("experiment") == "shortcuts" or _several_shortcuts(summary)):
        plan.append(("shortcut_errors", lambda: shortcut_errors(summary)))
    probe_figures: tuple[tuple[str, str, Callable[[Any], Figure]], ...] = (
        ("gradient_norm", "gradient_flow", gradient_norm),
        ("residual_ratio", "residual_magnitude", residual_ratio),
        ("layer_responses", "layer_responses", layer_responses),
    )
    for name, kind, draw in probe_figures:
        entries = probes.get(kind) or []
        if entries:
            plan.append((name, _bind(draw, entries)))
    return plan


def _bind(fn: Callable[[Any], Figure], arg: Any) -> Callable[[], Figure]:
    return lambda: fn(arg)


def build_report(study_dir: str | Path) -> Path:
    """Rebuild ``figures/*.png`` and ``report.html`` in ``study_dir`` from its results.json.

    Only the saved results are read; nothing is trained or measured again. Figures this
    results file has no data for are not drawn (and stale copies of them are removed). Returns
    the path of ``report.html``. Raises :class:`ReslabError` if results.json is missing or
    invalid.
    """
    study = Path(study_dir)
    results = load_results(study)
    if study.is_file():
        study = study.parent
    fig_dir = study / FIGURES_DIR
    rendered = []
    for name, build in _figure_plan(results):
        png = figure_png(build())
        atomic_write_bytes(fig_dir / f"{name}.png", png)
        rendered.append(_RenderedFigure(name, _CAPTIONS[name], _HOW_TO[name], png))
    drawn = {r.name for r in rendered}
    for name in FIGURE_NAMES:
        if name not in drawn:
            (fig_dir / f"{name}.png").unlink(missing_ok=True)
    return atomic_write_text(study / REPORT_NAME, _render_html(results, rendered))


# --- HTML -----------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; background: #fff;
  min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 1.8rem; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.35rem; margin-top: 2em; border-bottom: 1px solid #dde1e7;
  padding-bottom: 0.2em; }
.meta { color: #5a6273; margin: 0 0 1em; }
.intro { max-width: 60em; }
.verdict { border: 2px solid #0072B2; border-left-width: 10px; background: #eef5fb;
  padding: 14px 20px; border-radius: 6px; margin: 1.2em 0; }
.verdict h2 { border: 0; margin: 0 0 0.2em; font-size: 1rem; text-transform: uppercase;
  letter-spacing: 0.06em; color: #0072B2; }
.verdict .text { font-size: 1.3rem; font-weight: 600; margin: 0.1em 0 0.4em; }
.verdict ul { margin: 0.3em 0 0; padding-left: 1.2em; color: #2c3444; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; }
nav a, a { color: #005a8c; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #e3e6eb; padding: 5px 12px; text-align: left;
  vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.table-wrap { overflow-x: auto; }
details { margin: 1em 0; }
summary { cursor: pointer; font-weight: 600; }
figure { margin: 1.6em 0 2.2em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { margin-top: 0.5em; color: #2c3444; }
.howto { background: #fbf8ef; border-left: 4px solid #E69F00; padding: 8px 14px;
  margin: 0.6em 0 0; max-width: 62em; }
pre { background: #f3f4f6; padding: 12px 16px; overflow-x: auto; font-size: 0.85rem;
  border-radius: 4px; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; }
.muted { color: #6b7280; }
"""

# No network, no scripts: only inline styles and data: images may load.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    """Escape text content (quotes stay readable; use :func:`_attr` inside attributes)."""
    return html.escape(str(value), quote=False)


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    return "—" if not _is_number(value) else f"{float(value):.{digits}f}"


def _mean_pm(mean: Any, std: Any, n: Any) -> str:
    if not _is_number(mean):
        return "—"
    if _is_number(n) and n > 1 and _is_number(std):
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.2f}"


def _params(value: Any) -> str:
    if not _is_number(value):
        return "—"
    return f'<span title="{int(value):,} parameters">{value / 1e6:.2f} M</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """An HTML table; cells are already-escaped HTML, columns in ``numeric`` right-aligned."""

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _verdict_html(verdict: Mapping[str, Any], experiment: str) -> str:
    text = verdict.get("text") or "no verdict recorded"
    items = []
    for key, value in verdict.items():
        if key == "text":
            continue
        if key == "degradation" and isinstance(value, bool):
            items.append(f"degradation in plain nets: <b>{'yes' if value else 'no'}</b>")
        elif key == "residual_ok" and isinstance(value, bool):
            answer = "yes" if value else "no"
            items.append(f"residual nets train as well when deeper: <b>{answer}</b>")
        elif key in ("plain_gap", "residual_gap") and _is_number(value):
            family = key.split("_")[0]
            how = (
                "deepest minus shallowest"
                if experiment == "degradation"
                else "plain minus the best shortcut option"
            )
            items.append(
                f"{family} gap: <b>{value:+.2f}</b> percentage points "
                f"(final clean training error, {how})"
            )
        elif key == "tolerance" and _is_number(value):
            items.append(f"tolerance: {value:.2f} percentage points")
        else:
            items.append(f"{_e(key.replace('_', ' '))}: <b>{_e(_short(value))}</b>")
    lst = "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else ""
    return (
        '<section class="verdict" id="verdict"><h2>Verdict</h2>'
        f'<p class="text">{_e(text)}</p>{lst}</section>'
    )


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _summary_html(results: Mapping[str, Any]) -> str:
    runs = results.get("runs") or []
    summary = results.get("summary") or (summarize_runs(runs) if runs else [])
    if not summary and not runs:
        return ""
    several = _several_shortcuts(summary)
    params = {_key(r): r.get("params") for r in runs if _is_number(r.get("params"))}
    rows = []
    for r in sorted(summary, key=lambda r: _sort_key(_key(r))):
        rows.append(
            [
                _e(r.get("label") or _label(_key(r), several)),
                _e(r["family"]),
                str(int(r["depth"])),
                _e(r.get("shortcut") or "—"),
                _e(r.get("n_seeds", "—")),
                _mean_pm(
                    r.get("clean_train_error_mean"),
                    r.get("clean_train_error_std"),
                    r.get("n_seeds"),
                ),
                _mean_pm(r.get("test_error_mean"), r.get("test_error_std"), r.get("n_seeds")),
                _params(params.get(_key(r))),
            ]
        )
    parts = [
        '<section id="results"><h2>Results</h2>',
        "<p>Final errors in percent, mean ± sample standard deviation over seeds. Clean "
        "training error is measured on the whole training set without augmentation.</p>",
        _table(
            [
                "model",
                "family",
                "depth",
                "shortcut",
                "seeds",
                "clean train error (%)",
                "test error (%)",
                "params",
            ],
            rows,
            {2, 4, 5, 6, 7},
        ),
    ]
    if runs:
        run_rows = [
            [
                _e(r.get("name", "—")),
                _e(r.get("model", "—")),
                _e(r["family"]),
                str(int(r["depth"])),
                _e(r.get("shortcut") or "—"),
                _e(r.get("seed", "—")),
                _params(r.get("params")),
                _num(r.get("final_clean_train_error")),
                _num(r.get("final_test_error")),
                _num(r.get("wall_time"), 1),
            ]
            for r in sorted(runs, key=lambda r: (_sort_key(_key(r)), str(r.get("seed"))))
        ]
        parts.append(
            f"<details><summary>Per-run results ({len(runs)} runs)</summary>"
            + _table(
                [
                    "run",
                    "model",
                    "family",
                    "depth",
                    "shortcut",
                    "seed",
                    "params",
                    "clean train error (%)",
                    "test error (%)",
                    "wall time (s)",
                ],
                run_rows,
                {3, 5, 6, 7, 8, 9},
            )
            + "</details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _probe_tables_html(probes: Mapping[str, Any]) -> str:
    parts = []
    grads = probes.get("gradient_flow") or []
    if grads:
        rows = []
        for e in grads:
            g = _array(e.get("input_grad_norm"))
            g = g[np.isfinite(g)]
            first, last = (float(g[0]), float(g[-1])) if len(g) else (math.nan, math.nan)
            ratio = first / last if len(g) and last > 0 else math.nan
            rows.append(
                [
                    _e(e.get("label") or _label(_key(e), False)),
                    _e(e.get("when", "—")),
                    str(len(g)),
                    _sci(first),
                    _sci(last),
                    _sci(ratio),
                ]
            )
        parts.append(
            "<h3>Gradient flow</h3>"
            + _table(
                [
                    "model",
                    "when",
                    "blocks",
                    "‖∂L/∂x‖ first block",
                    "‖∂L/∂x‖ last block",
                    "first / last",
                ],
                rows,
                {2, 3, 4, 5},
            )
        )
    mags = probes.get("residual_magnitude") or []
    if mags:
        rows = []
        for e in mags:
            r = _array(e.get("ratio"))
            r = r[np.isfinite(r)]
            rows.append(
                [
                    _e(e.get("label") or _label(_key(e), False)),
                    str(len(r)),
                    _sci(float(r.mean()) if len(r) else math.nan),
                    _sci(float(r.min()) if len(r) else math.nan),
                    _sci(float(r.max()) if len(r) else math.nan),
                ]
            )
        parts.append(
            "<h3>Residual branch size ‖F(x)‖/‖x‖</h3>"
            + _table(["model", "blocks", "mean", "min", "max"], rows, {1, 2, 3, 4})
        )
    resp = probes.get("layer_responses") or []
    if resp:
        rows = []
        for e in resp:
            s = _array(e.get("std"))
            s = s[np.isfinite(s)]
            rows.append(
                [
                    _e(e.get("label") or _label(_key(e), False)),
                    str(len(s)),
                    _sci(float(s.mean()) if len(s) else math.nan),
                    _sci(float(s.max()) if len(s) else math.nan),
                ]
            )
        parts.append(
            "<h3>Layer responses</h3>"
            + _table(["model", "layers", "mean std", "max std"], rows, {1, 2, 3})
        )
    if not parts:
        return ""
    return '<section id="probes"><h2>Probes</h2>\n' + "\n".join(parts) + "</section>"


def _sci(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.3g}"


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _figures_html(figures: Sequence[_RenderedFigure]) -> str:
    if not figures:
        return ""
    parts = ['<section id="figures"><h2>Figures</h2>']
    for i, fig in enumerate(figures, 1):
        width, height = _png_size(fig.png)
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f'<figure id="fig-{fig.name}">'
            f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{_attr(fig.caption)}">'
            f"<figcaption><b>Figure {i}.</b> {_e(fig.caption)} "
            f'<span class="muted">(<code>{FIGURES_DIR}/{fig.name}.png</code>)</span>'
            "</figcaption>"
            f'<p class="howto"><b>How to read this.</b> {_e(fig.how_to)}</p></figure>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def _versions_html(results: Mapping[str, Any]) -> str:
    from reslab import __version__

    rows = [
        ["reslab", _e(results.get("reslab_version", "—"))],
        ["torch", _e(results.get("torch_version", "—"))],
        ["python", _e(results.get("python_version", "—"))],
        ["date", _e(results.get("created", "—"))],
        ["machine", _e(results.get("machine", "—"))],
        ["results schema", _e(results.get("schema", "—"))],
        [
            "report built with",
            _e(f"reslab {__version__}, matplotlib {matplotlib.__version__}"),
        ],
    ]
    return '<section id="versions"><h2>Versions</h2>' + _table(["", ""], rows, set()) + "</section>"


def _render_html(results: Mapping[str, Any], figures: Sequence[_RenderedFigure]) -> str:
    experiment = str(results.get("experiment", ""))
    title = str(results.get("title") or f"reslab {experiment} study")
    verdict = results.get("verdict") or {}
    config = json.dumps(results.get("config") or {}, indent=2, ensure_ascii=False)
    results_part = _summary_html(results)
    probes_part = _probe_tables_html(results.get("probes") or {})
    figures_part = _figures_html(figures)
    toc = [("verdict", "Verdict")]
    toc += [("results", "Results")] if results_part else []
    toc += [("figures", "Figures")] if figures_part else []
    toc += [("probes", "Probes")] if probes_part else []
    toc += [("config", "Configuration"), ("versions", "Versions")]
    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in toc) + "</ul></nav>"
    created = results.get("created")
    meta = f"experiment <b>{_e(experiment)}</b>" + (f" · {_e(created)}" if created else "")
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{meta}</p>',
        _verdict_html(verdict, experiment),
        f'<p class="intro">{_e(_INTROS.get(experiment, ""))}</p>',
        nav,
        results_part,
        figures_part,
        probes_part,
        f'<section id="config"><h2>Configuration</h2><pre>{_e(config)}</pre></section>',
        _versions_html(results),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{_e(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )
