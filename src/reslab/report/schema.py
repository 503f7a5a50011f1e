"""results.json: the one file a study writes, and the only code that reads or writes it.

Every study (``reslab degradation``, ``shortcuts``, ``gradients``, ``responses``, ...) saves
one ``results.json`` in its study folder with :func:`write_results`; ``reslab report`` reads it
back with :func:`load_results` and rebuilds the figures and ``report.html`` from it alone.

results.json, schema 1
======================

Errors are in **percent** (0–100). Times are in seconds. ``null`` means "not measured" (a
non-finite float such as a diverged loss is also written as ``null``). Keys not listed here are
allowed and ignored by the report.

Common top level (every study)::

    {
      "schema": 1,                      # int, required; a newer schema is refused
      "experiment": "degradation",      # required: the registered study that wrote it
      "title": "Degradation: plain vs residual nets on CIFAR-10",
      "reslab_version": "0.1.0", "torch_version": "2.13.0", "python_version": "3.12.1",
      "created": "2025-01-31T12:00:00+00:00",   # ISO 8601
      "machine": "Linux-6.1-x86_64, 16 CPUs, CUDA: NVIDIA H100",
      "config": {...},                  # the study's configuration, shown as JSON
      "verdict": {"text": "...", ...}   # one-sentence conclusion, shown at the top
    }

:func:`provenance` returns the five version/date/machine fields and :func:`new_results` the whole
skeleton.

Studies that train nets and compare their errors (``degradation``, ``shortcuts``) add ``runs``
and ``summary``::

    "runs": [{
      "name": "plain56-s0", "model": "plain56",
      "family": "plain",            # plain | residual
      "depth": 56,                  # weighted layers
      "shortcut": null,             # A | B | C for residual nets, null for plain ones
      "seed": 0, "params": 855770,
      "status": "finished",         # or "diverged" (its errors are then null)
      "final_clean_train_error": 9.1,  # % on the training set, no augmentation, eval mode
      "final_test_error": 12.3,        # %
      "wall_time": 1234.5,             # s
      "curves": {                   # parallel lists, one entry per evaluation (usually an epoch)
        "epoch": [...], "step": [...],   # step = optimiser iterations so far (x axis)
        "clean_train_error": [...],      # %, as final_clean_train_error
        "train_error": [...],            # %, running error on augmented batches
        "test_error": [...], "val_error": [...], "train_loss": [...], "lr": [...]
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
:func:`reslab.report.stats.summarize_runs` computes ``summary`` from ``runs``; the report does
the same when ``summary`` is missing. Each study documents its verdict's keys beside its
verdict function (``reslab.experiments.degradation.degradation_verdict``, ...); the
degradation verdict, for example::

    "verdict": {
      "text": "plain-56 trains worse than plain-20 (degradation): ..., a gap of ... points, ...",
      "degradation": true,          # plain_gap > max(tolerance, 2 * plain_gap_noise)
      "residual_ok": true,          # not residual_gap > max(tolerance, 2 * residual_gap_noise)
      "plain_gap": 2.1,             # percentage points: final clean training error of the
      "residual_gap": -0.8,         # deepest minus the shallowest net of that family (mean)
      "plain_gap_noise": 0.5,       # the two ends' seed stds added in quadrature; null with
      "residual_gap_noise": 0.3,    #   one seed (the noise is unknown; the text says so)
      "tolerance": 1.0              # percentage points
    }

Every study judges a difference by the same rule (:mod:`reslab.experiments.verdicts`): it
counts only beyond the tolerance and twice the seed noise.

Probes (``gradients`` and ``responses``; the degradation study adds all three) live under
``"probes"``, each a list with one entry per (model, seed, time); ``seed`` is absent in files
written before the studies probed every seed::

    "probes": {
      "gradient_flow": [{
        "label": "plain-56", "family": "plain", "depth": 56, "seed": 0,
        "when": "init",                 # init | trained | "step N"
        "block": [names], "input_grad_norm": [...],  # ‖∂L/∂x_l‖ at each block's input
        "layer": [names], "weight_grad_norm": [...]  # ‖∂L/∂W‖ per conv/linear layer
      }],
      "residual_magnitude": [{
        "label": "resnet-56", "family": "residual", "depth": 56, "seed": 0,
        "block": [names], "ratio": [...],            # ‖F(x)‖/‖x‖ per block
        "f_norm": [...], "shortcut_norm": [...]      # ‖F(x)‖, ‖shortcut(x)‖ (null for plain)
      }],
      "layer_responses": [{
        "label": "resnet-56", "family": "residual", "depth": 56, "seed": 0,
        "layer": [names], "std": [...],              # std of each 3×3 layer's output (after BN)
        "std_sorted": [...]                          # the same, sorted descending
      }],
      "signal_propagation": [{                       # Brock, De & Smith 2021's plots
        "label": "resnet-56", "family": "residual", "depth": 56, "when": "init",  # | trained
        "block": [names], "stage": [...],
        "squared_mean": [...], "variance": [...],    # of each block's output, channel averages
        "residual_variance": [...]                   # of F(x) before the addition (null: plain)
      }]
    },
    "chance_error": 90.0                             # the error of guessing, in percent

A new study adds its own top-level section (e.g. ``"lesion": {...}``); :func:`validate_results`
checks the common parts above (:data:`RESULTS`, a declaration), and a study checks its own
section with a ``check``: a declaration too (:mod:`reslab.checks.document`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from reslab.checks import (
    NUMBER,
    NUMBERS,
    SPREAD,
    TEXT,
    Invalid,
    Is,
    MapOf,
    Object,
    Spec,
    at_least,
    is_int,
    is_number,
    maybe,
    objects,
    parse_json,
    shown,
    text,
)
from reslab.checks.document import MAX_DIGITS
from reslab.errors import ReslabError
from reslab.fileio import atomic_write_json

__all__ = [
    "FAMILIES",
    "FAMILY_DEPTH",
    "LABELLED",
    "RESULTS",
    "RESULTS_NAME",
    "SCHEMA_VERSION",
    "is_int",
    "is_number",
    "load_results",
    "new_results",
    "provenance",
    "validate_results",
    "write_results",
]

SCHEMA_VERSION = 1
RESULTS_NAME = "results.json"
#: A study's results.json is kilobytes to a few megabytes (curves and probes of every run).
MAX_RESULTS_BYTES = 256 << 20
FAMILIES: tuple[str, ...] = ("plain", "residual")


FAMILY_DEPTH: dict[str, Spec] = {
    "family": Is(lambda v: v in FAMILIES, "must be 'plain' or 'residual', not {value}"),
    "depth": at_least(1, "must be a positive integer, not {value}"),
    "shortcut": maybe(Is(lambda v: isinstance(v, str), "must be 'A', 'B', 'C' or null")),
}
#: A net or summary row whose label the report shows (a legend, a title, a table's first cell).
LABELLED: dict[str, Spec] = {**FAMILY_DEPTH, "label": text(200)}
# Each probe's required list; its other lists (of these) may be null.
_PROBES = {
    "gradient_flow": "input_grad_norm",
    "residual_magnitude": "ratio",
    "layer_responses": "std",
    "signal_propagation": "variance",
}
_PROBE_LISTS = (
    "input_grad_norm weight_grad_norm ratio f_norm shortcut_norm std std_sorted squared_mean "
    "variance residual_variance"
)
_SUMMARY = "n_seeds clean_train_error_mean test_error_mean"
_SPREADS = "clean_train_error_std test_error_std"  # over seeds: ≥ 0
_TEXTS = "title reslab_version torch_version python_version created machine"
#: The common parts of results.json that the report reads (after ``schema`` and ``experiment``).
RESULTS = Object({
    **{key: maybe(TEXT) for key in _TEXTS.split()},
    "config": maybe(Object({})),
    "chance_error": maybe(NUMBER),  # the error of guessing, in percent
    "verdict": maybe(Object({"text": maybe(TEXT)}, 'must be an object like {"text": "..."}')),
    "runs": objects({
        **FAMILY_DEPTH,
        **{key: maybe(NUMBER) for key in ("final_clean_train_error", "final_test_error")},
        **{key: maybe(NUMBER) for key in ("wall_time", "params")},
        "curves": maybe(MapOf(NUMBERS, "must be an object of lists")),
    }),
    "summary": objects({**FAMILY_DEPTH, **{key: maybe(NUMBER) for key in _SUMMARY.split()},
                        **{key: SPREAD for key in _SPREADS.split()}}),
    "probes": maybe(Object({
        kind: objects({**FAMILY_DEPTH, **{k: maybe(NUMBERS) for k in _PROBE_LISTS.split()},
                       key: NUMBERS})
        for kind, key in _PROBES.items()
    })),
})  # fmt: skip


# --- provenance and the skeleton -----------------------------------------------------------------


def provenance() -> dict[str, str]:
    """The version, date and machine fields every results.json carries.

    Returns ``reslab_version``, ``torch_version``, ``python_version``, ``created`` (now, UTC,
    ISO 8601) and ``machine`` (OS, architecture, CPU count and CUDA device if any; no hostname).
    """
    from reslab.version import __version__

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
    if not experiment or not isinstance(experiment, str):
        raise ValueError(f"experiment must be a study name, not {experiment!r}")
    return {
        "schema": SCHEMA_VERSION,
        "experiment": experiment,
        "title": title,
        **provenance(),
        "config": _jsonable(dict(config), "config"),
        "verdict": {"text": ""},
    }


# --- write and load ------------------------------------------------------------------------------


def write_results(
    study_dir: str | Path, results: Mapping[str, Any], check: Spec | None = None
) -> Path:
    """Validate ``results`` and write it atomically to ``study_dir/results.json``.

    NumPy and torch scalars and arrays become plain numbers and lists, non-finite floats become
    ``null`` (as do floats of 1e100 or more, which the reader refuses). Returns the path
    written. Raises :class:`ReslabError` if the results do not follow the schema (the previous
    file, if any, is left untouched).
    """
    clean = _jsonable(dict(results), "results")
    path = Path(study_dir) / RESULTS_NAME
    validate_results(clean, source=f"results for {path}", check=check)
    return atomic_write_json(path, clean)


def load_results(
    study_dir: str | Path,
    experiments: Collection[str] | None = None,
    checks: Mapping[str, Spec] | None = None,
) -> dict[str, Any]:
    """Read and validate ``study_dir/results.json`` (or a results file given directly).

    ``experiments`` are the study names a caller can handle, ``checks`` the checks of their own
    sections by study name. Raises :class:`ReslabError` with a one-line message if the file is
    missing, not JSON, or does not follow the schema.
    """
    study = Path(study_dir)
    path = study if study.is_file() else study / RESULTS_NAME
    if not path.is_file():
        raise ReslabError(
            f"no {RESULTS_NAME} in {study}: run `reslab degradation --out {study}` first"
        )
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RESULTS_BYTES + 1)  # bounded even for /dev/zero
        if len(data) > MAX_RESULTS_BYTES:
            raise Invalid(f"is larger than {MAX_RESULTS_BYTES >> 20} MiB")
        results = parse_json(data.decode("utf-8"))
    except Invalid as exc:  # "results.json is not valid JSON (...)", "... is nested ..."
        raise ReslabError(f"{path} {exc}; rerun the experiment or fix the file") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ReslabError(f"cannot read {path}: {exc}; rerun the experiment to rewrite it") from exc
    name = results.get("experiment") if isinstance(results, dict) else None
    check = (checks or {}).get(name) if isinstance(name, str) else None
    return validate_results(results, str(path), experiments, check)


# --- the validator -------------------------------------------------------------------------------


def validate_results(
    results: Any,
    source: str = "results",
    experiments: Collection[str] | None = None,
    check: Spec | None = None,
) -> dict[str, Any]:
    """Check the parts of ``results`` that the report reads; return it unchanged.

    ``experiments``, if given, are the study names allowed; ``check`` validates the study's own
    section. Raises :class:`ReslabError` naming the first problem, e.g. ``runs[2].curves.step
    must be a list of numbers``. Unknown keys are allowed.
    """
    if not isinstance(results, dict):
        _fail(source, f"must be a JSON object, not {type(results).__name__}")
    _check_top_level(results, source, experiments)
    try:
        RESULTS.check(results, "")
        if check is not None:
            check.check(results, "")
    except Invalid as exc:
        _fail(source, str(exc))
    return results


def _fail(source: str, problem: str) -> NoReturn:
    raise ReslabError(f"{source}: {problem}; rerun the experiment or fix the file")


def _check_top_level(
    results: dict[str, Any], source: str, experiments: Collection[str] | None
) -> None:
    schema = results.get("schema")
    if schema is None:
        _fail(source, f"schema is missing (expected {SCHEMA_VERSION})")
    if not is_int(schema) or schema < 1:
        _fail(source, f"schema must be a positive integer, not {shown(schema)}")
    if schema > SCHEMA_VERSION:
        raise ReslabError(
            f"{source}: schema {schema} was written by a newer reslab (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade reslab"
        )
    experiment = results.get("experiment")
    if experiments is not None and experiment not in experiments:
        _fail(source, f"experiment must be one of {', '.join(experiments)}")
    if not isinstance(experiment, str) or not experiment:
        _fail(source, "experiment must be the name of a study, e.g. degradation")


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data: arrays/tensors to lists, non-finite floats to None."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        # 1e100 and above reads as overflowed, like inf: the reader refuses it (parse_json)
        return obj if abs(obj) < 10.0**MAX_DIGITS else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return _jsonable(obj.tolist(), where)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in results.json")
