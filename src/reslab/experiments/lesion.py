"""``reslab lesion``: delete or reorder blocks of trained nets at test time, plain vs residual.

Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles of relatively shallow
networks" (arXiv:1605.06431), §4. Deleting any one block of a trained ResNet (keeping its
shortcut) barely changes its test error, except for the blocks that change the shape; a plain
net falls to chance (their Fig. 3). Error then rises smoothly with the number of blocks deleted
(Fig. 4a) and of pairs of same-stage blocks swapped (Fig. 4b), as an ensemble's would, rather
than collapsing after the first, as a single deep path's would.

The study trains plain and residual twins at one depth with the degradation study's recipe and
budget, or lesions nets trained elsewhere; the lesions themselves are in the package
:mod:`reslab.measure.lesion`. Every net of a depth faces the same deletions and swaps (the draws
depend only on k and the draw number), so plain and residual nets are compared pair for pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reslab.checks import MAX_DEPTH, MAX_IMAGES, integer, integers, is_number
from reslab.data import load_dataset, normalize_batch
from reslab.errors import ReslabError
from reslab.experiments import degradation
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.pool import measure_all
from reslab.experiments.registry import TRAINING, Flag, Study
from reslab.experiments.runner import resolved_precision
from reslab.experiments.trained import SOURCE_FLAGS, check_sources, own_runs, trained_nets
from reslab.experiments.verdicts import Gap, gap_of_values, not_learned
from reslab.measure import lesion
from reslab.output import say
from reslab.report.stats import group, group_key, label, mean_std, several_shortcuts, summarize_runs
from reslab.train import pick_device

__all__ = ["STUDY", "lesion_verdict", "plan"]

SECTION = "lesion"
DEPTH = 32  # default: both twins train on digits (plain-56 would not), 13 blocks keep the shape
DRAWS = 5  # random draws per k
_KS, _IMAGES = integers(1, MAX_DEPTH), integer(0, MAX_IMAGES)  # --ks, --eval-images


def plan(config: StudyConfig) -> list[RunSpec]:
    """Both families at the study's depth and seeds, as the degradation study trains them."""
    return degradation.plan(config)


# --- measuring -----------------------------------------------------------------------------------


def _test_data(
    config: StudyConfig, device: torch.device, model: Any = None
) -> tuple[Tensor, Tensor, int]:
    """The test images (the first ``--eval-images`` of them), normalised as ``model`` was
    trained (its ``reslab_normalization``; without one the dataset's), labels, classes."""
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    n = config.options["eval_images"] or len(ds.test_labels)
    images = ds.test_images[:n].to(device)
    norm = getattr(model, "reslab_normalization", None) or ds  # both have mean and std
    x = normalize_batch(images, norm.mean, norm.std, channels_last=False)
    return x, ds.test_labels[:n].to(device), ds.num_classes


# --- the per-net summary the verdict, the table and the figures share ---------------------------


def per_block_increase(net: Mapping[str, Any]) -> float | None:
    """Mean test-error increase (points) over the shape-preserving blocks deleted one at a time."""
    intact: Any = net.get("intact_error")
    deleted = mean_deleted_error(net)
    return deleted - float(intact) if deleted is not None and is_number(intact) else None


def mean_deleted_error(net: Mapping[str, Any], shape_preserving: bool = True) -> float | None:
    """Mean test error with one block deleted, over the shape-preserving (or -changing) ones."""
    errors = [
        float(e)
        for e, kept in zip(net["deleted_error"], net["shape_preserving"], strict=True)
        if kept == shape_preserving and is_number(e)
    ]
    return sum(errors) / len(errors) if errors else None


def _nets(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    section = results.get(SECTION)
    return list(section.get("nets") or []) if isinstance(section, Mapping) else []


def _name(key: tuple[str, int, str | None], nets: Sequence[Mapping[str, Any]]) -> str:
    return label(key, several_shortcuts(nets))


def family_means(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per (family, depth, shortcut): the numbers the verdict compares, mean ± std over seeds."""
    nets = _nets(results)
    rows = []
    for key, members in group(nets).items():
        rise = mean_std([per_block_increase(n) for n in members])
        deleted = mean_std([mean_deleted_error(n) for n in members])
        intact = mean_std([n.get("intact_error") for n in members])
        rows.append(
            {
                "family": key[0],
                "depth": key[1],
                "shortcut": key[2],
                "label": _name(key, nets),
                "n_seeds": len(members),
                "increase_mean": rise[0],
                "increase_std": rise[1],
                "deleted_error_mean": deleted[0],
                "deleted_error_std": deleted[1],
                "intact_error_mean": intact[0],
                "intact_error_std": intact[1],
            }
        )
    return rows


# --- results.json ---------------------------------------------------------------------------------


# --- the study ------------------------------------------------------------------------------------


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Lesion every trained net (own runs, ``--from`` or ``--weights``) on the test set, the
    nets in parallel (:func:`reslab.experiments.pool.measure_all`: on two cores one thread a
    worker; a small net's forward pass gains little from a second thread and loses 15x when
    the cores are shared, measured on this project's 2-core machines)."""
    nets = trained_nets(config, records)
    # The study's one --precision, as its runs trained: the runner's banner said it before
    # them; with no runs of its own (--from, --weights) this says it.
    precision, line = resolved_precision(config)
    plural = "s" if len(nets) != 1 else ""
    say(f"lesion: {len(nets)} net{plural}, each BN after a convolution folded into it")
    if not records:
        say(f"precision: {line}")
    measured = measure_all(
        _lesion_one, [(config, n.model, precision) for n in nets], config.device, config.jobs
    )
    entries = []
    for net, (measures, _, _) in zip(nets, measured, strict=True):
        shortcut = getattr(net.model, "shortcut_option", None) if net.family == "residual" else None
        meta = {"label": net.label, "family": net.family, "depth": net.depth}
        meta.update(shortcut=shortcut, seed=net.seed, source=net.source)
        entries.append({**meta, **measures})
    (_, images, classes), draws = measured[0], config.options["draws"]
    section = {"chance_error": 100.0 * (1 - 1 / classes), "draws": draws, "images": images}
    section["precision"] = precision
    out: dict[str, Any] = {SECTION: {**section, "nets": entries}}
    if records:
        out.update(runs=records, summary=summarize_runs(records))
    return out


def _lesion_one(
    config: StudyConfig, model: nn.Module, precision: str
) -> tuple[dict[str, Any], int, int]:
    """One net's lesions, its test images and classes."""
    device = pick_device(config.device, 0)
    x, y, classes = _test_data(config, device, model)
    draws, ks = config.options["draws"], tuple(config.options["ks"])
    error = lesion.top1_error(x, y, precision=precision)
    measured = lesion.lesion_net(model.to(device), error, x[:1], draws=draws, ks=ks)
    return measured, len(y), classes


def lesion_verdict(results: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Residual vs plain: the mean test-error increase per deleted shape-preserving block.

    Compares the twins at the deepest depth that has both families (the first shortcut
    option), on the one rule of :mod:`reslab.experiments.verdicts`. Keys:
    ``residual_increase`` / ``plain_increase`` (points: per net, the mean over its
    shape-preserving blocks of the error with that block deleted minus the intact error; then
    the mean over seeds), ``increase_gap`` (plain minus residual) and ``increase_gap_noise``,
    ``residual_loses_less`` (the gap counts), ``plain_deleted_error`` (the plain net's mean
    error with one such block deleted), ``chance_error``, ``plain_at_chance`` (chance minus
    that error does not count) with ``chance_gap``/``chance_gap_noise``, and ``tolerance``.
    """
    rows = [r for r in family_means(results) if r["increase_mean"] is not None]
    depths = [{r["depth"] for r in rows if r["family"] == f} for f in ("plain", "residual")]
    both = sorted(depths[0] & depths[1])
    if not both:
        raise ReslabError("the lesion verdict needs a plain and a residual net of one depth")
    at = [r for r in rows if r["depth"] == both[-1]]
    plain = next(r for r in at if r["family"] == "plain")
    residual = min((r for r in at if r["family"] == "residual"), key=lambda r: str(r["shortcut"]))
    chance = float(results[SECTION]["chance_error"])
    # Lesioning a net that never learned measures nothing: both intact nets must have.
    stuck = not_learned([plain, residual], chance, "intact_error", "intact test error")
    if stuck is not None:
        return stuck
    nets = [n for n in _nets(results) if n["depth"] == both[-1]]
    increases = {
        row["label"]: [
            rise
            for n in nets
            if group_key(n) == group_key(row) and (rise := per_block_increase(n)) is not None
        ]
        for row in (plain, residual)
    }
    gap = gap_of_values(increases[plain["label"]], increases[residual["label"]], tolerance)
    plain_std = plain["deleted_error_std"] if plain["n_seeds"] > 1 else None
    to_chance = Gap(chance, plain["deleted_error_mean"], 0.0, plain_std, tolerance)
    loses_less, at_chance = gap.exceeds(), not to_chance.exceeds()
    p, r = plain["label"], residual["label"]
    how = "far less than" if loses_less else "not clearly less than"
    chance_text = (
        f"{p} falls to chance with one block deleted"
        if at_chance
        else f"{p} does not fall all the way to chance"
    )
    text = (
        f"deleting one shape-preserving block costs {r} {how} {p}: +{gap.b:.1f} vs "
        f"+{gap.a:.1f} points of test error on average (intact {residual['intact_error_mean']:.1f}"
        f" % vs {plain['intact_error_mean']:.1f} %), {gap.why()}; {chance_text}: "
        f"{to_chance.b:.1f} % vs {chance:.0f} % chance, {to_chance.why()}"
    )
    return {
        "text": text,
        "residual_loses_less": loses_less,
        "residual_increase": round(gap.b, 4),
        "plain_increase": round(gap.a, 4),
        **gap.as_json("increase"),
        "plain_deleted_error": round(to_chance.b, 4),
        "chance_error": round(chance, 4),
        "plain_at_chance": at_chance,
        **to_chance.as_json("chance"),
        "tolerance": tolerance,
    }


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    try:
        return lesion_verdict(results, config.tolerance)
    except ReslabError as exc:
        return {"text": f"no verdict: {exc}"}


STUDY = Study(
    name="lesion",
    help="delete or swap blocks of trained plain and residual nets at test time (Veit et al.)",
    title="Lesions: deleting and reordering blocks of plain and residual nets on {dataset}",
    intro="Trained plain and residual twins, lesioned at test time: each block deleted in turn "
    "(a residual block keeps its shortcut, a plain block becomes the identity where the shape "
    "allows), k random blocks deleted, k random pairs of same-stage blocks swapped (Veit, "
    "Wilber & Belongie 2016, arXiv:1605.06431, §4). Residual nets should lose little from any "
    "one block but the shape-changing ones; plain nets should fall to chance.",
    plan=own_runs(plan),
    analyse=analyse,
    verdict=verdict,
    views="reslab.experiments.lesion_views",
    depths=(DEPTH,),
    seeds=(0, 1),
    one_depth=True,
    takes=(*TRAINING, "pack", "shortcut"),
    flags=(
        *SOURCE_FLAGS,
        Flag("--draws", str(DRAWS), f"random draws per k (default {DRAWS})", integer(1, 10**5)),
        Flag("--ks", "", "k to measure, e.g. 1,2,4,8 (default: up to 12 from 1 to all)", _KS),
        Flag("--eval-images", "0", "test images to evaluate on, 0 = all (default 0)", _IMAGES),
    ),
    check=check_sources,
)
