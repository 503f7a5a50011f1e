"""``reslab trainability``: is it the shortcut, or the identity at initialisation it provides?

A residual block starts near the identity, so a deep residual net starts as a shallow one and
its signal and gradient reach every block (He et al. 2016, arXiv:1603.05027). The follow-up
papers trained deep nets *without* shortcuts, and deep residual nets *without* normalisation,
by other means. The study trains them all at one depth, on one recipe and one budget, beside
the plain and residual twins, records the forward signal (Brock, De & Smith 2021,
arXiv:2101.08692) and the gradient reaching each block at initialisation and after training,
and says which variants close the degradation gap (train as well as the residual net), which
close part of it (better than plain, worse than residual) and which fail:

* plain and residual (option A): today's twins, the two references;
* plain, Dirac parametrisation (Zagoruyko & Komodakis 2017, arXiv:1706.00388): each
  convolution is a scaled identity plus a learned kernel — the identity without a shortcut;
* plain, looks-linear initialisation (Balduzzi et al. 2017, arXiv:1702.08591 §5): mirrored
  weights make the rectifier net linear at initialisation — the shattering paper's remedy
  (``reslab shattering`` measures the problem it removes);
* plain, tanh, no BN, delta-orthogonal initialisation (Xiao et al. 2018, arXiv:1806.05393);
* plain and residual without BN at the default initialisation (De & Smith 2020,
  arXiv:2002.10444, show why the residual one fails: its variance doubles block after block);
* residual without BN, SkipInit / ReZero (De & Smith 2020; Bachlechner et al. 2020,
  arXiv:2003.04887): a learnable scalar on each branch, initialised to 0;
* residual without BN, Fixup (Zhang, Dauphin & Ma 2019, arXiv:1901.09321).

Every variant is a model option any CIFAR-family net takes (``create_model("plain56",
init="dirac")``); every one trains with the study's recipe (the papers tuned theirs: that
difference is stated in the table, and ``--lr`` changes it for all alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reslab.checks import shown
from reslab.errors import ConfigError
from reslab.experiments.ablation import DIGITS_EPOCHS
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.probing import probe_runs
from reslab.experiments.records import variant_row
from reslab.experiments.registry import TRAINING, Flag, Study, names
from reslab.experiments.verdicts import gap_of_rows, not_learned
from reslab.models import cifar_model_name

__all__ = ["DEFAULT_VARIANTS", "STUDY", "VARIANTS", "Variant", "trainability_verdict"]


@dataclass(frozen=True)
class Variant:
    """One way to make a deep net trainable (or a reference), as model options."""

    key: str  # the --variants name
    label: str  # the table's row name
    shortcut: bool  # identity shortcuts (residual) or none (plain)
    paper: str  # who proposed it
    recipe: str  # how the paper's recipe differs from the study's
    options: dict[str, Any] = field(default_factory=dict)  # create_model / TrainConfig options


NO_BN = {"norm": "none"}
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("plain", "plain (BN)", False, "He et al. 2015", "the reference"),
    Variant("residual", "residual (BN, option A)", True, "He et al. 2015", "the reference"),
    Variant("dirac", "plain, Dirac parametrisation", False, "Zagoruyko & Komodakis 2017",
            "same recipe", {"init": "dirac"}),
    Variant("looks_linear", "plain, looks-linear init", False, "Balduzzi et al. 2017",
            "same recipe", {"init": "looks_linear"}),
    Variant("delta_orthogonal", "plain, tanh, no BN, delta-orthogonal", False, "Xiao et al. 2018",
            "tanh and no BN as the paper; its learning rate was tuned, ours is the study's",
            {**NO_BN, "init": "delta_orthogonal", "nonlinearity": "tanh"}),
    Variant("plain_no_bn", "plain, no BN", False, "De & Smith 2020", "same recipe", NO_BN),
    Variant("residual_no_bn", "residual, no BN", True, "De & Smith 2020", "same recipe", NO_BN),
    Variant("skipinit", "residual, no BN, SkipInit", True, "De & Smith 2020; ReZero 2020",
            "same recipe", {**NO_BN, "init": "skipinit"}),
    Variant("fixup", "residual, no BN, Fixup", True, "Zhang, Dauphin & Ma 2019",
            "same recipe (the paper adds mixup for regularisation, not for trainability)",
            {**NO_BN, "init": "fixup"}),
)}  # fmt: skip
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
PLAIN, RESIDUAL = "plain", "residual"  # the two references every verdict compares with


def _variants(config: StudyConfig) -> tuple[Variant, ...]:
    return tuple(VARIANTS[k] for k in dict.fromkeys(config.options["trainability_variants"]))


# --- the runs ------------------------------------------------------------------------------------


def _spec(config: StudyConfig, variant: Variant, seed: int) -> RunSpec:
    (depth,) = config.depths
    model = cifar_model_name(depth, not variant.shortcut)
    overrides = {**variant.options, "shortcut": config.shortcut}
    # On digits, the ablation study's budget: 4 epochs at depth 56 separate trainable from
    # untrainable nets (10 bring nearly every BN net to 0 %); elsewhere the recipe's.
    if config.dataset.strip().lower() == "digits" and config.epochs is None and not config.steps:
        overrides["epochs"] = DIGITS_EPOCHS
    family = "residual" if variant.shortcut else "plain"
    shortcut = config.shortcut if variant.shortcut else None
    name = f"{model}-{variant.key}-s{seed}"
    return RunSpec(name, model, family, depth, shortcut, seed, overrides)


def plan(config: StudyConfig) -> list[RunSpec]:
    """Every chosen variant at every seed, at the study's one depth."""
    return [_spec(config, v, seed) for v in _variants(config) for seed in config.seeds]


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs (each marked with its variant), a summary row per variant, and the forward
    signal and gradient flow of each variant's first-seed net, at initialisation and trained."""
    by_name = {_spec(config, v, s).name: v for v in _variants(config) for s in config.seeds}
    runs = [
        {**r, "variant": by_name[r["name"]].key, "label": by_name[r["name"]].label}
        for r in records
        if r["name"] in by_name
    ]
    summary = []
    for variant in _variants(config):
        members = [r for r in runs if r["variant"] == variant.key]
        if members:
            row = variant_row(members, variant.label)
            summary.append({**row, "variant": variant.key, "paper": variant.paper,
                            "recipe": variant.recipe})  # fmt: skip
    probes = probe_runs(config, runs, ("signal_propagation", "gradient_flow"))
    return {"runs": runs, "summary": summary, "probes": probes}


# --- the verdict ---------------------------------------------------------------------------------


def _row(summary: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    return next((r for r in summary if r.get("variant") == key), None)


def _trained(row: Mapping[str, Any]) -> bool:
    return isinstance(row.get("clean_train_error_mean"), int | float)


def trainability_verdict(
    summary: Sequence[Mapping[str, Any]], tolerance: float = 1.0, chance: float | None = None
) -> dict[str, Any]:
    """Which variants close the degradation gap, which close part of it, which fail.

    By the one rule of :mod:`reslab.experiments.verdicts` on final clean training errors: a
    variant *closes* the gap when it does not train worse than the residual net; it closes
    *part* of it when it trains worse than the residual net but better than the plain one; it
    *fails* otherwise (a run that diverged fails). Keys: ``closes``, ``partly``, ``fails``
    (variant keys), ``gap`` (plain minus residual, points) with ``gap_noise``, ``gaps`` (per
    variant: its error minus the residual net's, and one noise width), ``tolerance``.
    Inconclusive when the residual reference has not learned, or when plain trains as well as
    residual at this depth and budget (then there is no gap to close).
    """
    plain, residual = _row(summary, PLAIN), _row(summary, RESIDUAL)
    if plain is None or residual is None or not (_trained(plain) and _trained(residual)):
        return {"text": "no verdict: it compares every variant with the plain and the residual "
                "net, and one of them has no finished run"}  # fmt: skip
    stuck = not_learned([residual], chance)
    if stuck is not None:
        return stuck
    gap = gap_of_rows(plain, residual, "clean_train_error", tolerance)
    verdict: dict[str, Any] = {**gap.as_json(""), "closes": [], "partly": [], "fails": []}
    verdict["gap"], verdict["gap_noise"] = verdict.pop("_gap"), verdict.pop("_gap_noise")
    verdict["gaps"], verdict["tolerance"] = {}, tolerance
    if not gap.exceeds():
        verdict["text"] = (
            f"inconclusive: {plain['label']} trains as well as {residual['label']} here "
            f"({_pct(plain)} vs {_pct(residual)} training error, {gap.why()}), so there is no "
            "degradation gap to close; use a deeper --depth or a shorter budget"
        )
        verdict["inconclusive"] = True
        return verdict
    for row in summary:
        if row.get("variant") in (PLAIN, RESIDUAL):
            continue
        if not _trained(row):
            verdict["fails"].append(row["variant"])
            continue
        to_residual = gap_of_rows(row, residual, "clean_train_error", tolerance)
        to_plain = gap_of_rows(plain, row, "clean_train_error", tolerance)
        how = "partly" if to_residual.exceeds() else "closes"
        if how == "partly" and not to_plain.exceeds():
            how = "fails"
        verdict[how].append(row["variant"])
        noise = to_residual.as_json("x")["x_gap_noise"]
        verdict["gaps"][row["variant"]] = {"gap": round(to_residual.value, 4), "noise": noise}
    verdict["text"] = _text(summary, verdict, plain, residual, gap.why())
    return verdict


def _pct(row: Mapping[str, Any]) -> str:
    value = row.get("clean_train_error_mean")
    return "diverged" if not isinstance(value, int | float) else f"{float(value):.1f} %"


def _text(
    summary: Sequence[Mapping[str, Any]],
    verdict: Mapping[str, Any],
    plain: Mapping[str, Any],
    residual: Mapping[str, Any],
    why: str,
) -> str:
    def named(keys: Sequence[str]) -> str:
        rows = [r for r in summary if r.get("variant") in keys]
        return ", ".join(f"{r['label']} ({_pct(r)})" for r in rows)

    parts = [
        f"the degradation gap: {plain['label']} {_pct(plain)} vs {residual['label']} "
        f"{_pct(residual)} training error ({why})"
    ]
    for key, says in (
        ("closes", "close it (train as well as the residual net)"),
        ("partly", "close part of it (better than plain, worse than residual)"),
        ("fails", "fail (no better than plain)"),
    ):
        if verdict[key]:
            parts.append(f"{named(verdict[key])} {says}")
    return "; ".join(parts)


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    return trainability_verdict(
        results.get("summary") or [], config.tolerance, results.get("chance_error")
    )


def check(config: StudyConfig) -> None:
    keys = config.options["trainability_variants"]
    bad = [k for k in keys if k not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant {shown(bad[0])}: choose from {', '.join(VARIANTS)}")
    missing = [k for k in (PLAIN, RESIDUAL) if k not in keys]
    if missing:
        raise ConfigError(
            f"--variants must include {' and '.join(missing)}: every variant is judged "
            "against the plain and the residual net"
        )


STUDY = Study(
    name="trainability",
    help="deep nets that train without shortcuts or without BN (Dirac, looks-linear, "
    "delta-orthogonal, SkipInit, Fixup) beside the plain and residual twins",
    title="Trainability without shortcuts: variants at depth {depth} on {dataset}",
    intro="Is it the shortcut, or the identity at initialisation that the shortcut provides? "
    "The plain and residual twins beside the nets the follow-up papers made trainable by "
    "other means — identity-like parametrisations and initialisations without shortcuts, and "
    "residual nets without batch normalisation — all at one depth, on one recipe and budget.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views="reslab.experiments.trainability_views",
    depths=(56,),
    seeds=(0,),
    one_depth=True,
    takes=(*TRAINING, "pack", "shortcut"),
    flags=(
        Flag(
            "--variants",
            ",".join(DEFAULT_VARIANTS),
            f"variants to train (default: all), from {', '.join(VARIANTS)}",
            names,
            dest="trainability_variants",
        ),
    ),
    check=check,
    snapshots=True,
)
