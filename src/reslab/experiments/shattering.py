"""``reslab shattering``: the gradients of plain and residual nets along a line of inputs.

Balduzzi, Frean, Leary, Lewis, Ma & McWilliams 2017, "The shattered gradients problem: If
resnets are the answer, then what is the question?" (arXiv:1702.08591). At initialisation, the
gradient of a fixed output with respect to the input, taken at neighbouring inputs, decorrelates
with depth in plain (feedforward) nets until it looks like white noise, and far more slowly in
residual nets. The study measures it, with no training run, for two kinds of net:

* fully connected rectifier stacks of width 200 on the paper's 1-D input (256 points in
  [-2, 2], the setting of the paper's Fig. 1), plain and residual, at the ``--mlp-depths``;
* the CIFAR-family nets of ``--depths`` (plain twins and ResNets built by
  :func:`reslab.models.create_model` for the dataset's channels and classes), along the path
  ``x_t = (1-t)·a + t·b`` between two training images, the gradient of the logit of ``a``'s
  class.

For every net and seed it keeps the correlation of the gradients at lag 1…K (the definitions of
:mod:`reslab.measure.shattering`: the autocorrelation of ``df/dx`` on the 1-D line, the mean Pearson
correlation of gradient images k steps apart on the image path); the verdict compares how far the
lag-1 correlation falls from the shallowest to the deepest net in each family. The measurement
itself lives in :mod:`reslab.measure.shattering`; this module plans, runs, judges and draws it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from reslab.checks import integer, integers, is_number, number
from reslab.data import load_dataset, normalize_batch
from reslab.errors import ConfigError
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.registry import Flag, Study
from reslab.experiments.verdicts import Gap, gap_of_rows
from reslab.measure.shattering import (
    MLP_NORMS,
    Shattering,
    calibrate_batchnorm,
    line_inputs,
    line_shattering,
    mlp_stack,
    path_shattering,
    seeded,
)
from reslab.models import cifar_model_name, create_model
from reslab.report.figures import array
from reslab.report.schema import FAMILIES
from reslab.report.stats import mean_std, nan_mean_std
from reslab.train import one_cpu_thread, pick_device

__all__ = ["STUDY", "analyse", "plan", "shattering_verdict"]

#: The two kinds of net the study measures, and what the verdict and the report call them.
KINDS = ("mlp", "cnn")
KIND_NAMES = {"mlp": "fully connected nets (1-D input)", "cnn": "CIFAR-family nets (image path)"}
_LINE = (-2.0, 2.0)  # the paper's 1-D input range


def plan(config: StudyConfig) -> list[RunSpec]:
    """Nothing to train: the study measures nets at initialisation."""
    return []


# --- the measurement -----------------------------------------------------------------------------


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure every net at every depth and seed; results.json's ``shattering`` section."""
    device = pick_device(config.device, 0)
    with one_cpu_thread(device, small=True):
        mlp = _measure_mlps(config, device)
    images = _path_images(config)
    with one_cpu_thread(device, small=images["a"][0].numel() < 32 * 32):  # smaller than CIFAR's
        cnn = _measure_cnns(config, device, images)
    section = {"max_lag": config.options["max_lag"], "mlp": mlp, "cnn": cnn}
    section["summary"] = summarize(section)
    return {"shattering": section}


def _entry(
    label: str, family: str, depth: int, seed: int, result: Shattering, first_seed: int
) -> dict[str, Any]:
    """One net's numbers; ``label`` plain-N / residual-N (MLPs) or plain-N / resnet-N."""
    data = result.to_dict()
    entry = {
        "label": f"{label}-{depth}",
        "family": family,
        "depth": depth,
        "seed": seed,
        "lag1": data["correlation"][1],
        "correlation": data["correlation"],
    }
    if seed == first_seed:  # the sequences of one seed are enough for the figures
        entry["gradients"] = data["gradients"]
    return entry


def _measure_mlps(config: StudyConfig, device: torch.device) -> dict[str, Any]:
    width, norm = config.options["mlp_width"], config.options["mlp_norm"]
    # float64: a deep plain net is chaotic in its input, and float32 rounding (which differs
    # with the thread count) moves its kinks enough to change its correlations at large lags.
    x = line_inputs(config.options["line_points"], *_LINE).to(device, torch.float64)
    first = min(config.seeds)
    nets = []
    for depth in config.options["mlp_depths"]:
        for family in config.families:
            for seed in config.seeds:
                net = mlp_stack(depth, width=width, plain=family == "plain", norm=norm, seed=seed)
                net = net.to(device, torch.float64)
                result = line_shattering(net, x, max_lag=config.options["max_lag"])
                nets.append(_entry(family, family, depth, seed, result, first))
    return {
        "width": width,
        "norm": norm,
        "range": list(_LINE),
        "positions": x.squeeze(1).tolist(),
        "nets": nets,
    }


def _path_images(config: StudyConfig) -> dict[str, Any]:
    """The calibration batch, the two ends of the path and the logit, the same for every net.

    ``probe_batch`` training images drawn with seed 0 set the BN statistics; ``a`` is the first
    of them and ``b`` the next one of another class; the gradient is that of ``a``'s class.
    """
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    order = torch.randperm(len(ds.train_labels), generator=torch.Generator().manual_seed(0))
    labels = ds.train_labels[order]
    ia = 0
    ib = next((i for i in range(1, len(order)) if labels[i] != labels[ia]), 1)
    chosen = torch.cat([order[: config.probe_batch], order[[ia, ib]]])
    images = normalize_batch(ds.train_images[chosen], ds.mean, ds.std, channels_last=False)
    return {
        "calibration": images[:-2],
        "a": images[-2],
        "b": images[-1],
        "indices": [int(order[ia]), int(order[ib])],
        "logit": int(labels[ia]),
        "classes": len(ds.classes),
    }


def _measure_cnns(
    config: StudyConfig, device: torch.device, images: Mapping[str, Any]
) -> dict[str, Any]:
    calibration, a, b = (images[k].to(device) for k in ("calibration", "a", "b"))
    points = config.options["path_points"]
    along = {"output": images["logit"], "n_points": points, "max_lag": config.options["max_lag"]}
    first = min(config.seeds)
    nets = []
    positions: list[float] = []
    for depth in config.depths:
        for family in config.families:
            name = cifar_model_name(depth, family == "plain")
            build = functools.partial(
                create_model,
                name,
                in_channels=int(a.shape[0]),
                num_classes=images["classes"],
                width=config.width,
                shortcut=config.shortcut,
            )
            for seed in config.seeds:
                net = calibrate_batchnorm(seeded(seed, build).to(device), calibration)
                result = path_shattering(net, a, b, **along)
                positions = result.positions
                label = "plain" if family == "plain" else "resnet"
                nets.append({**_entry(label, family, depth, seed, result, first), "model": name})
    return {
        "images": images["indices"],
        "logit": images["logit"],
        "calibration_images": len(calibration),
        "step": float(torch.linalg.vector_norm(b - a)) / (points - 1),
        "positions": positions,
        "nets": nets,
    }


def summarize(section: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (kind, family, depth): lag-1 mean ± std over seeds, mean correlation by lag."""
    rows = []
    for kind in KINDS:
        groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
        for net in (section.get(kind) or {}).get("nets") or []:
            groups.setdefault((net["family"], int(net["depth"])), []).append(net)
        for (family, depth), nets in sorted(
            groups.items(), key=lambda kv: (FAMILIES.index(kv[0][0]), kv[0][1])
        ):
            mean, std = mean_std([n.get("lag1") for n in nets])
            lags = min(len(n["correlation"]) for n in nets)
            curve, _ = nan_mean_std(np.vstack([array(n["correlation"])[:lags] for n in nets]))
            rows.append(
                {
                    "kind": kind,
                    "family": family,
                    "depth": depth,
                    "label": nets[0]["label"],
                    "n_seeds": len(nets),
                    "lag1_mean": mean,
                    "lag1_std": std,
                    "correlation_mean": [None if math.isnan(v) else float(v) for v in curve],
                }
            )
    return rows


# --- the verdict ---------------------------------------------------------------------------------


def _drop(rows: Sequence[Mapping[str, Any]], tolerance: float) -> dict[str, Any] | None:
    """How far one family's lag-1 correlation falls from its shallowest to its deepest net."""
    rows = sorted((r for r in rows if is_number(r.get("lag1_mean"))), key=lambda r: r["depth"])
    if len(rows) < 2 or rows[0]["depth"] == rows[-1]["depth"]:
        return None
    depths = [float(r["depth"]) for r in rows]
    slope = float(np.polyfit(depths, [float(r["lag1_mean"]) for r in rows], 1)[0])
    gap = gap_of_rows(rows[0], rows[-1], "lag1", tolerance, "in lag-1 correlation", digits=2)
    return {"shallow": rows[0], "deep": rows[-1], "gap": gap, "slope": slope}


def _kind_verdict(kind: str, rows: Sequence[Mapping[str, Any]], tol: float) -> dict[str, Any]:
    mine = [r for r in rows if r["kind"] == kind]
    plain, residual = (_drop([r for r in mine if r["family"] == f], tol) for f in FAMILIES)
    if plain is None or residual is None:
        return {"text": f"{kind}: no verdict (needs plain and residual nets at two depths)"}
    p, r = plain["gap"], residual["gap"]
    # The one rule (experiments/verdicts.py) on the two drops: each drop's seed noise is its
    # two ends' in quadrature, so the difference's is all four's.
    gap = Gap(p.value, r.value, p.seed_noise, r.seed_noise, tol, "in lag-1 correlation", 2)
    faster = gap.exceeds()

    def drop(d: Mapping[str, Any]) -> str:
        ends = (f"{e['label']} {e['lag1_mean']:.2f}" for e in (d["shallow"], d["deep"]))
        return f"{d['gap'].value:.2f} ({' → '.join(ends)})"

    how = "falls faster" if faster else "does not fall measurably faster"
    text = (
        f"{KIND_NAMES[kind]}: the lag-1 gradient correlation {how} with depth in plain nets "
        f"than in residual nets: plain drops {drop(plain)}, residual {drop(residual)}; "
        f"{gap.why()}"
    )
    return {
        "text": text,
        f"{kind}_plain_falls_faster": faster,
        f"{kind}_plain_drop": round(p.value, 4),
        f"{kind}_residual_drop": round(r.value, 4),
        **gap.as_json(f"{kind}_drop"),
        f"{kind}_plain_slope": round(plain["slope"], 6),
        f"{kind}_residual_slope": round(residual["slope"], 6),
    }


def shattering_verdict(summary: Sequence[Mapping[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per kind of net: does the lag-1 correlation fall faster with depth in plain nets?

    ``{kind}_plain_drop`` (``_residual_drop``) is the mean lag-1 correlation of the family's
    shallowest net minus its deepest. Plain falls faster (``{kind}_plain_falls_faster``) when
    the plain drop exceeds the residual drop by more than ``tolerance`` and twice the seed noise
    (:mod:`reslab.experiments.verdicts`): ``{kind}_drop_gap`` is that excess,
    ``{kind}_drop_gap_noise`` its seed noise (the four ends' stds in quadrature; null with one
    seed). ``{kind}_*_slope``: least-squares slope of lag-1 correlation against depth.
    """
    parts = [_kind_verdict(kind, summary, tolerance) for kind in KINDS]
    out: dict[str, Any] = {"text": "; ".join(p.pop("text") for p in parts)}
    for p in parts:
        out.update(p)
    out["tolerance"] = tolerance
    return out


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    return shattering_verdict(results["shattering"]["summary"], config.options["corr_tolerance"])


# --- checks and the study ------------------------------------------------------------------------


def check(config: StudyConfig) -> None:
    """Refuse settings the measurement cannot use, in one line each."""
    if not config.options["mlp_depths"]:
        raise ConfigError("--mlp-depths needs at least one depth, e.g. 1,2,5,10,20,50")
    if config.options["mlp_norm"] not in MLP_NORMS:
        raise ConfigError(f"--mlp-norm must be one of {', '.join(MLP_NORMS)}")
    max_lag = config.options["max_lag"]
    for key in ("line_points", "path_points"):
        if config.options[key] < max_lag + 2:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} must be at least --max-lag + 2 = {max_lag + 2}")
    if config.probe_batch < 2:
        raise ConfigError("--probe-batch must be at least 2: BN takes its statistics from it")


STUDY = Study(
    name="shattering",
    help="shattered gradients: how alike gradients at neighbouring inputs are, plain vs "
    "residual, at initialisation",
    title="Shattered gradients: plain vs residual networks on {dataset}",
    intro="The gradient of a fixed output with respect to the input, at neighbouring points of "
    "a line of inputs, in plain and residual nets at initialisation (Balduzzi et al. 2017, "
    "arXiv:1702.08591). In deep plain nets it decorrelates into white noise; in residual nets "
    "it stays correlated far longer. Nothing is trained.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views="reslab.experiments.shattering_views",
    depths=(8, 20, 32, 56, 110),
    seeds=(0, 1, 2),
    flags=(
        Flag("--mlp-depths", "1,2,5,10,20,50", "MLP depths (rectifier layers)", integers(1, 100)),
        Flag("--mlp-width", "200", "MLP width (default 200)", integer(1, 1024)),
        Flag("--mlp-norm", "batch", "MLP blocks: batch (BN) | layer (ResidualMLP)", str),
        Flag(
            "--line-points", "256", "points on the line in [-2, 2] (default 256)", integer(1, 10**5)
        ),
        Flag("--path-points", "128", "points on the image path (default 128)", integer(1, 10**5)),
        Flag("--max-lag", "32", "largest lag of the correlations (default 32)", integer(1, 10**4)),
        Flag("--corr-tolerance", "0.05", "smallest lag-1 drop gap that counts", number(0, 1)),
    ),
    takes=("shortcut", "probe_batch", "width"),
    check=check,
)
