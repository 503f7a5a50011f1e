"""``reslab ablation``: the shortcut and activation ablations of the identity-mapping paper.

He, Zhang, Ren & Sun 2016, "Identity mappings in deep residual networks" (arXiv:1603.05027).
Table 1 / Fig. 2 change what the shortcut carries (constant scaling, exclusive and
shortcut-only gating, a 1×1 convolution, dropout) and Table 2 / Fig. 4 where BN and ReLU sit
(BN after the addition, ReLU before it, ReLU-only and full pre-activation), all on one
ResNet-110 trained on CIFAR-10 with one recipe. Their finding: every multiplicative manipulation
of the shortcut hampers information propagation and so optimisation, and the identity shortcut
with full pre-activation trains best. Each variant is a model option
(:func:`reslab.create_model`), so every run here is an ordinary ``reslab train`` run folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reslab.checks import is_number, shown
from reslab.errors import ConfigError
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.records import variant_row
from reslab.experiments.registry import TRAINING, Flag, Study, names
from reslab.experiments.verdicts import gap_of_rows, not_learned
from reslab.models import cifar_model_name

__all__ = ["DEFAULT_VARIANTS", "STUDY", "VARIANTS", "Variant", "plan"]


@dataclass(frozen=True)
class Variant:
    """One row of the paper's Table 1 or Table 2, as model options."""

    key: str  # the --variants name
    label: str  # the table's row name
    tables: tuple[int, ...]  # 1: Table 1 (shortcuts), 2: Table 2 (placements)
    fig: str  # the paper's figure panel
    on_shortcut: str  # Table 1's columns: what multiplies the shortcut, and F
    on_f: str
    paper: str  # the paper's CIFAR-10 test error (%), ResNet-110 (Table 2: / ResNet-164)
    options: dict[str, Any] = field(default_factory=dict)  # create_model / TrainConfig options


# The paper's order. "fail": test error above 20 %, as the paper reports it.
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("identity", "original (identity)", (1, 2), "2(a), 4(a)", "1", "1", "6.61 / 5.93"),
    Variant("plain", "no shortcut (plain)", (1,), "2(b)", "0", "1", "fail", {"plain": True}),
    Variant("scale", "constant scaling", (1,), "2(b)", "0.5", "1", "fail",
            {"shortcut_mode": "scale", "shortcut_scale": 0.5}),
    Variant("frozen_gate", "constant scaling (frozen gate)", (1,), "2(b)", "0.5", "0.5", "12.35",
            {"shortcut_mode": "scale", "shortcut_scale": 0.5, "branch_scale": 0.5}),
    Variant("exclusive_gate", "exclusive gating, b_g = −6", (1,), "2(c)", "1−g(x)", "g(x)", "8.70",
            {"shortcut_mode": "exclusive_gate", "gate_bias": -6.0}),
    Variant("shortcut_gate", "shortcut-only gating, b_g = −6", (1,), "2(d)", "1−g(x)", "1", "6.91",
            {"shortcut_mode": "shortcut_gate", "gate_bias": -6.0}),
    Variant("conv", "1×1 conv shortcut", (1,), "2(e)", "1×1 conv", "1", "12.22",
            {"shortcut_mode": "conv"}),
    Variant("dropout", "dropout shortcut", (1,), "2(f)", "dropout 0.5", "1", "fail",
            {"shortcut_mode": "dropout", "shortcut_dropout": 0.5}),
    Variant("bn_after_add", "BN after addition", (2,), "4(b)", "1", "1", "8.17 / 6.50",
            {"activation": "bn_after_add"}),
    Variant("relu_before_add", "ReLU before addition", (2,), "4(c)", "1", "1", "7.84 / 6.14",
            {"activation": "relu_before_add"}),
    Variant("relu_preact", "ReLU-only pre-activation", (2,), "4(d)", "1", "1", "6.71 / 5.91",
            {"activation": "relu_preact"}),
    Variant("full_preact", "full pre-activation", (2,), "4(e)", "1", "1", "6.37 / 5.46",
            {"activation": "full_preact"}),
)}  # fmt: skip
# Every row of both tables but two: the plain net (the "0 | 1" row, which the degradation
# study already covers) and frozen gating, to keep the default run inside 90 s on two cores.
DEFAULT_VARIANTS: tuple[str, ...] = tuple(k for k in VARIANTS if k not in ("plain", "frozen_gate"))
REFERENCE = "identity"
# The digits budget: 4 epochs (44 steps) at depth 56 separate the variants as the paper's
# Table 1 and Table 2 do, where 10 epochs at depth 20 bring nearly all of them to 0 % training
# error (3 epochs at depth 44 left even the identity net at 50 %). Ten variants at one seed fit
# in 90 s on two cores (~135 CPU-seconds; two seeds took ~270, so `--seeds 0,1` for the seed
# noise takes ~2.5 minutes). Other data sets: the recipe's budget.
DIGITS_EPOCHS = 4


def _variants(config: StudyConfig) -> tuple[Variant, ...]:
    keys = config.options["ablation_variants"]
    return tuple(VARIANTS[k] for k in dict.fromkeys(keys))


# --- the runs ------------------------------------------------------------------------------------


def _spec(config: StudyConfig, variant: Variant, seed: int) -> RunSpec:
    (depth,) = config.depths
    plain = bool(variant.options.get("plain"))
    # One shortcut option for every variant, so that each differs from the original in one
    # thing only; the 1×1-conv shortcut is option C by definition.
    shortcut = "C" if variant.options.get("shortcut_mode") == "conv" else config.shortcut
    model = cifar_model_name(depth, plain)
    overrides = {**variant.options, "shortcut": shortcut}
    digits = config.dataset.strip().lower() == "digits"
    if digits and config.epochs is None and config.steps is None:
        overrides["epochs"] = DIGITS_EPOCHS
    family, name = "plain" if plain else "residual", f"{model}-{variant.key}-s{seed}"
    return RunSpec(name, model, family, depth, None if plain else shortcut, seed, overrides)


def plan(config: StudyConfig) -> list[RunSpec]:
    """Every chosen variant at every seed, at the study's one depth."""
    return [_spec(config, v, seed) for v in _variants(config) for seed in config.seeds]


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs (each marked with its variant) and one summary row per variant."""
    by_name = {_spec(config, v, s).name: v for v in _variants(config) for s in config.seeds}
    runs = [{**r, "variant": by_name[r["name"]].key} for r in records if r["name"] in by_name]
    summary = []
    for variant in _variants(config):
        members = [r for r in runs if r["variant"] == variant.key]
        if not members:
            continue
        summary.append(
            {
                **variant_row(members, variant.label),
                "variant": variant.key,
                "tables": list(variant.tables),
                **{k: getattr(variant, k) for k in ("fig", "on_shortcut", "on_f")},
                "paper_error": variant.paper,
            }
        )
    section = {"depth": config.depths[0], "shortcut": config.shortcut, "reference": REFERENCE}
    return {"runs": runs, "summary": summary, "ablation": section}


# --- the verdict ---------------------------------------------------------------------------------


def _row(summary: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    return next((r for r in summary if r.get("variant") == key), None)


def _pct(row: Mapping[str, Any], metric: str = "clean_train_error") -> str:
    return f"{row['label']} ({float(row[f'{metric}_mean']):.1f} %)"


def ablation_verdict(
    summary: Sequence[Mapping[str, Any]], tolerance: float = 1.0, chance: float | None = None
) -> dict[str, Any]:
    """Which variants train worse than the identity shortcut, and which placement is best.

    Every comparison is :mod:`reslab.experiments.verdicts`' one rule. Keys: ``worse``,
    ``as_well``, ``better`` (variant keys, by final clean training error against
    ``identity``), ``gaps`` (per variant: its training error minus the identity's, and one
    seed-noise width, None with one seed), ``identity_best`` (no Table 1 variant trains better
    than the identity), ``best_placement`` (the Table 2 row with the lowest test error),
    ``preact_best`` (no placement's test error beats full pre-activation's) and ``tolerance``.
    """
    rows = [r for r in summary if is_number(r.get("clean_train_error_mean"))]
    ref = _row(rows, REFERENCE)
    if ref is None:
        return {"text": "no verdict: the identity shortcut (the reference) has no finished run"}
    stuck = not_learned([ref], chance)  # the reference must learn for "worse" to mean anything
    if stuck is not None:
        return stuck
    verdict: dict[str, Any] = {"worse": [], "as_well": [], "better": [], "gaps": {}}
    for row in rows:
        if row is ref:
            continue
        gap = gap_of_rows(row, ref, "clean_train_error", tolerance)
        how = "worse" if gap.exceeds() else "better" if gap.differs() else "as_well"
        verdict[how].append(row["variant"])
        noise = gap.as_json("x")["x_gap_noise"]
        verdict["gaps"][row["variant"]] = {"gap": round(gap.value, 4), "noise": noise}
    ref_error = f"{float(ref['clean_train_error_mean']):.1f} %"
    parts = [f"against the identity shortcut's final clean training error ({ref_error})"]
    for how, says in (("worse", "worse"), ("as_well", "as well"), ("better", "better")):
        if verdict[how]:
            named = ", ".join(_pct(_row(rows, k)) for k in verdict[how])  # type: ignore[arg-type]
            parts.append(f"train{'s' if len(verdict[how]) == 1 else ''} {says}: {named}")
    table1 = [str(r["variant"]) for r in rows if 1 in (r.get("tables") or [])]
    verdict["identity_best"] = not set(verdict["better"]) & set(table1)
    placements = [r for r in rows if 2 in (r.get("tables") or [])]
    placements = [r for r in placements if is_number(r.get("test_error_mean"))]
    if len(placements) > 1:
        best = min(placements, key=lambda r: float(r["test_error_mean"]))
        verdict["best_placement"] = best["variant"]
        preact = _row(placements, "full_preact")
        if preact is not None:
            verdict["preact_best"] = not any(
                gap_of_rows(preact, r, "test_error", tolerance).exceeds() for r in placements
            )
        versus = (
            ""
            if best is ref
            else (
                f" vs {_pct(ref, 'test_error')}, "
                + gap_of_rows(ref, best, "test_error", tolerance).why()
            )
        )
        parts.append(f"lowest test error of the placements: {_pct(best, 'test_error')}{versus}")
    said = any("seed noise is unknown" in part for part in parts)  # gap.why() may say it
    if all(int(r.get("n_seeds") or 1) < 2 for r in rows) and not said:
        parts.append("one seed, so the seed noise is unknown and only the tolerance counts")
    verdict["tolerance"] = tolerance
    verdict["text"] = "; ".join(parts)
    return verdict


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    return ablation_verdict(
        results.get("summary") or [], config.tolerance, results.get("chance_error")
    )


# --- checks and the study ------------------------------------------------------------------------


def check(config: StudyConfig) -> None:
    keys = config.options["ablation_variants"]
    bad = [k for k in keys if k not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant {shown(bad[0])}: choose from {', '.join(VARIANTS)}")
    if not keys:
        raise ConfigError(f"--variants needs at least one of {', '.join(VARIANTS)}")


STUDY = Study(
    name="ablation",
    help="He et al. 2016's Tables 1-2: shortcut variants and activation placements, one budget",
    title="Identity mappings: shortcut variants and activation placements at depth {depth} "
    "on {dataset}",
    intro="One residual network, changed in one place at a time as in He et al. 2016 "
    "(arXiv:1603.05027): what the shortcut carries (Table 1: constant scaling, gating, a 1×1 "
    "convolution, dropout) and where BN and ReLU sit (Table 2). Every variant is trained with "
    "the same recipe and budget; the identity shortcut is the reference.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views="reslab.experiments.ablation_views",
    depths=(56,),
    seeds=(0,),
    one_depth=True,
    takes=(*TRAINING, "pack", "shortcut"),
    flags=(
        Flag(
            "--variants",
            ",".join(DEFAULT_VARIANTS),
            f"variants to train (default: all but plain, frozen_gate), from {', '.join(VARIANTS)}",
            names,
            dest="ablation_variants",
        ),
    ),
    check=check,
)
