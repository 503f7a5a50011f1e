"""``reslab shortcuts``: the plain net and shortcut options A, B, C at one depth, one budget.

He et al. 2015 (arXiv:1512.03385), §4.1 and Table 3: A pads the identity with zeros where the
shape changes (no parameters), B projects only there, C projects on every block. All three beat
the plain net by far and B, C are only marginally better than A: the identity path, not the
projections, is what solves degradation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reslab.errors import ReslabError
from reslab.experiments import run_views, verdict_views
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.registry import TRAINING, Study, Views
from reslab.experiments.verdicts import gap_of_rows, not_learned
from reslab.models import cifar_model_name
from reslab.report import html
from reslab.report.stats import summarize_runs

__all__ = ["STUDY", "plan", "shortcut_verdict"]


def plan(config: StudyConfig) -> list[RunSpec]:
    """Every variant at every seed, at the study's one depth."""
    (depth,) = config.depths
    specs = []
    for variant in config.variants:
        for seed in config.seeds:
            plain = variant == "plain"
            shortcut = None if plain else variant
            name = cifar_model_name(depth, plain)
            family = "plain" if plain else "residual"
            overrides = {"shortcut": shortcut or "A"}
            specs.append(
                RunSpec(f"{name}-{variant}-s{seed}", name, family, depth, shortcut, seed, overrides)
            )
    return specs


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runs": records, "summary": summarize_runs(records)}


def shortcut_verdict(
    summary: Sequence[Mapping[str, Any]], tolerance: float, chance: float | None = None
) -> dict[str, Any]:
    """Which variant trains best, and by how much the plain net trails the best shortcut, on
    the one rule of :mod:`reslab.experiments.verdicts`.

    Keys: ``best`` (label of the lowest test error), ``plain_gap`` (plain minus the best
    shortcut option's final clean training error, points) with ``plain_gap_noise``, and
    ``option_spread`` (the options' range of test error, points) with ``option_spread_noise``;
    inconclusive when the best-training net has not learned (``chance``: guessing's error).
    """
    rows = [r for r in summary if r.get("clean_train_error_mean") is not None]
    if not rows:
        raise ReslabError("no finished runs to compare")
    stuck = not_learned([min(rows, key=lambda r: r["clean_train_error_mean"])], chance)
    if stuck is not None:
        return stuck
    best = min(rows, key=lambda r: (r["test_error_mean"], r["clean_train_error_mean"]))
    plain = [r for r in rows if r["family"] == "plain"]
    residual = [r for r in rows if r["family"] == "residual"]
    parts = [f"best test error: {best['label']} ({best['test_error_mean']:.1f}%)"]
    verdict: dict[str, Any] = {"best": best["label"]}
    if plain and residual:
        p = plain[0]
        fit = min(residual, key=lambda r: r["clean_train_error_mean"])
        gap = gap_of_rows(p, fit, "clean_train_error", tolerance)
        verdict.update(gap.as_json("plain"))
        how = "trains worse than" if gap.exceeds() else "trains as well as"
        parts.append(
            f"{p['label']} {how} {fit['label']}: {p['clean_train_error_mean']:.1f} % vs "
            f"{fit['clean_train_error_mean']:.1f} % training error, {gap.why()}"
        )
    if len(residual) > 1:
        worst = max(residual, key=lambda r: r["test_error_mean"])
        first = min(residual, key=lambda r: r["test_error_mean"])
        spread = gap_of_rows(worst, first, "test_error", tolerance)
        verdict.update(
            {
                "option_spread": round(spread.value, 4),
                "option_spread_noise": spread.as_json("x")["x_gap_noise"],
            }
        )
        how = "differ" if spread.differs() else "do not differ measurably"
        parts.append(
            f"the shortcut options {how} in test error ({first['label']} "
            f"{first['test_error_mean']:.1f} % to {worst['label']} {worst['test_error_mean']:.1f} "
            f"%, {spread.why()})"
        )
    verdict["text"] = "; ".join(parts)
    return verdict


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    return shortcut_verdict(results["summary"], config.tolerance, results.get("chance_error"))


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    return [run_views.results_section(results)]


STUDY = Study(
    name="shortcuts",
    help="ablation: plain vs shortcut options A, B, C at one depth, same budget",
    title="Shortcut options: plain vs A vs B vs C at depth {depth} on {dataset}",
    intro="The same residual network with each shortcut option (A: zero-padding identity, B: "
    "projections where the shape changes, C: projections everywhere) next to its plain twin.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views=Views(
        figures=(
            run_views.ERROR_CURVES,
            run_views.ERROR_VS_DEPTH,
            run_views.shortcut_errors_spec(always=True),
        ),
        tables=tables,
        verdict_formats={
            "plain_gap": verdict_views.gap_format("plain", "plain minus the best shortcut option"),
            "residual_gap": verdict_views.gap_format(
                "residual", "plain minus the best shortcut option"
            ),
            "tolerance": verdict_views.tolerance_format,
        },
    ),
    depths=(56,),
    seeds=(0, 1),
    one_depth=True,
    takes=(*TRAINING, "pack", "variants"),
)
