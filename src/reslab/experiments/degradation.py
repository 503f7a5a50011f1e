"""``reslab degradation``: plain and residual twins at several depths, one recipe, one budget.

He et al. 2015 (arXiv:1512.03385), Fig. 1, Fig. 6 and Table 6: a deeper plain net trains
*worse* than a shallower one — its training error is higher, so this is an optimisation
failure, not overfitting — while its residual twin, with exactly the same layers, does not.
The verdict is computed from the final clean training errors; the probes show what differs
inside the nets (gradient flow, residual branch size, layer responses; §4.2 and Fig. 7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reslab.errors import ConfigError, ReslabError
from reslab.experiments import probe_views, run_views, signal_views, verdict_views
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.probing import KINDS, probe_runs
from reslab.experiments.registry import TRAINING, Study, Views
from reslab.experiments.verdicts import gap_of_rows, not_learned
from reslab.models import cifar_model_name
from reslab.report import html
from reslab.report.schema import FAMILIES
from reslab.report.stats import group_key, label, summarize_runs

__all__ = ["STUDY", "degradation_verdict", "plan"]


def plan(config: StudyConfig) -> list[RunSpec]:
    """Every family at every depth and seed, the most expensive first."""
    specs = []
    for depth in config.depths:
        for family in config.families:
            name = cifar_model_name(depth, family == "plain")
            shortcut = None if family == "plain" else config.shortcut
            for seed in config.seeds:
                overrides = {"shortcut": config.shortcut}
                specs.append(
                    RunSpec(f"{name}-s{seed}", name, family, depth, shortcut, seed, overrides)
                )
    return sorted(specs, key=lambda s: -s.depth)


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs, their summary over seeds, and the probes of each first-seed net."""
    return {
        "runs": records,
        "summary": summarize_runs(records),
        "probes": probe_runs(config, records, KINDS),
    }


def degradation_verdict(
    summary: Sequence[Mapping[str, Any]], tolerance: float = 1.0, chance: float | None = None
) -> dict[str, Any]:
    """The degradation study's verdict from its summary rows, on the one rule of
    :mod:`reslab.experiments.verdicts`.

    ``plain_gap`` (``residual_gap``) is the mean final clean training error of the deepest
    plain (residual) net minus that of the shallowest, in percentage points, and
    ``plain_gap_noise`` (``residual_gap_noise``) its seed noise: the two ends' seed standard
    deviations added in quadrature (None with one seed). Degradation is a plain gap beyond the
    tolerance and twice its noise; residual nets are fine (``residual_ok``) unless their gap is
    too. Needs both families at two or more depths (the first shortcut option, if several), and
    inconclusive unless both shallowest nets learned (``chance``: the error of guessing).
    """
    ends = {family: _ends(summary, family) for family in FAMILIES}
    stuck = not_learned([ends["plain"][0], ends["residual"][0]], chance)
    if stuck is not None:
        return stuck
    gaps = {
        family: gap_of_rows(deep, shallow, "clean_train_error", tolerance)
        for family, (shallow, deep) in ends.items()
    }
    degradation = gaps["plain"].exceeds()
    residual_ok = not gaps["residual"].exceeds()
    (ps, pd), (rs, rd) = ends["plain"], ends["residual"]
    plain_text = (
        f"{_name(pd)} trains worse than {_name(ps)} (degradation)"
        if degradation
        else f"{_name(pd)} trains as well as {_name(ps)} (no degradation at these depths)"
    )
    residual_text = (
        f"{_name(rd)} trains as well as {_name(rs)}"
        if residual_ok
        else f"{_name(rd)} also trains worse than {_name(rs)}"
    )
    return {
        "text": f"{plain_text}: {_errors(pd, ps)}, {gaps['plain'].why()}; "
        f"{residual_text}: {_errors(rd, rs)}, {gaps['residual'].why()}",
        "degradation": degradation,
        "residual_ok": residual_ok,
        **gaps["plain"].as_json("plain"),
        **gaps["residual"].as_json("residual"),
        "tolerance": tolerance,
    }


def _ends(
    summary: Sequence[Mapping[str, Any]], family: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The shallowest and the deepest row of ``family`` with a final training error."""
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
    return rows[0], rows[-1]


def _name(row: Mapping[str, Any]) -> str:
    return str(row.get("label") or label(group_key(row), False))


def _errors(deep: Mapping[str, Any], shallow: Mapping[str, Any]) -> str:
    return (
        f"{float(deep['clean_train_error_mean']):.1f} % vs "
        f"{float(shallow['clean_train_error_mean']):.1f} % training error"
    )


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    """The verdict, or why there is none (e.g. a family with one depth, or diverged runs)."""
    try:
        return degradation_verdict(
            results["summary"], config.tolerance, results.get("chance_error")
        )
    except ReslabError as exc:
        return {"text": f"no verdict: {exc}"}


def check(config: StudyConfig) -> None:
    if len(config.depths) < 2:
        raise ConfigError("a degradation study needs two or more --depths, e.g. 20,56")


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    return [run_views.results_section(results), probe_views.probes_section(results)]


STUDY = Study(
    name="degradation",
    help="the main job: train plain and residual twins at several depths and show the "
    "degradation problem",
    title="Degradation: plain vs residual networks on {dataset}",
    intro="Plain networks and their residual twins, trained with identical settings at several "
    "depths. Plain nets that get deeper can train worse (degradation); residual nets should "
    "not.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views=Views(
        figures=(
            run_views.ERROR_CURVES,
            run_views.ERROR_VS_DEPTH,
            run_views.shortcut_errors_spec(always=False),
            probe_views.GRADIENT_NORM,
            probe_views.RESIDUAL_RATIO,
            probe_views.LAYER_RESPONSES,
            signal_views.SIGNAL_PROPAGATION,
        ),
        tables=tables,
        verdict_formats={
            "degradation": verdict_views.yes_no_format("degradation in plain nets"),
            "residual_ok": verdict_views.yes_no_format("residual nets train as well when deeper"),
            "plain_gap": verdict_views.gap_format("plain", "deepest minus shallowest"),
            "residual_gap": verdict_views.gap_format("residual", "deepest minus shallowest"),
            "tolerance": verdict_views.tolerance_format,
        },
    ),
    depths=(20, 32, 56),
    seeds=(0, 1),
    takes=(*TRAINING, "pack", "shortcut", "probe_steps"),
    check=check,
    snapshots=True,
)
