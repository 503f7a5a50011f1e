"""``reslab landscape``: the loss surface around trained plain and residual twins.

Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the loss landscape of neural nets"
(arXiv:1712.09913), Fig. 5: ResNet-20/56/110 with and without shortcuts on CIFAR-10. Along filter-
normalised random directions (§4; :mod:`reslab.measure.landscape`) the residual nets sit in wide,
nearly convex basins at every depth, while the plain nets' surfaces turn sharp and chaotic as they
get deeper. The study trains (or takes) both twins at each depth, measures each net's surface on a
fixed set of training images, and computes its verdict from the mean loss rise on a circle of fixed
radius around the trained weights: the sharper a minimum, the more the loss rises at the same
filter-normalised distance.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reslab.checks import MAX_IMAGES, MAX_SEED, integer, is_number, number
from reslab.data import load_dataset, normalize_batch
from reslab.errors import ConfigError
from reslab.experiments import degradation
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.pool import measure_all
from reslab.experiments.registry import TRAINING, Flag, Study
from reslab.experiments.trained import (
    SOURCE_FLAGS,
    TrainedNet,
    check_sources,
    own_runs,
    trained_nets,
)
from reslab.experiments.verdicts import gap_of_values, not_learned
from reslab.measure import landscape as ls
from reslab.report.schema import FAMILIES
from reslab.report.stats import mean_std, summarize_runs
from reslab.train import pick_device

__all__ = ["STUDY", "analyse", "landscape_verdict", "plan"]

SECTION = "landscape"
# Images the loss is measured on: on digits 128 give the rises of 256 within 3 % (34.8 vs 34.0
# for plain-56, 0.56 vs 0.54 for resnet-56) at half the scan time.
IMAGES = 128


# --- plan and measure ---------------------------------------------------------------------------


def plan(config: StudyConfig) -> list[RunSpec]:
    """Both twins at every depth and seed (the degradation study's grid), unless the nets come
    from ``--from`` or ``--weights``."""
    return own_runs(degradation.plan)(config)


def settings_of(config: StudyConfig) -> ls.ScanSettings:
    """The scan the flags ask for (``--grid``, ``--radius``, ...), checked by ScanSettings."""
    keys = ("radius", "grid", "curve", "ring_radius", "hessian_iterations")
    given = {k: config.options[k] for k in keys}
    return ls.ScanSettings(seed=config.options["direction_seed"], **given)


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each trained net's landscape on the same training images, and the settings used."""
    settings, nets = settings_of(config), trained_nets(config, records, shared_inputs=True)
    x, y = scan_images(config, nets[0].model)  # normalised as the nets were trained
    scans = scan_models([n.model for n in nets], x, y, settings, config)
    entries = [{**_meta(n), **scan} for n, scan in zip(nets, scans, strict=True)]
    return {
        "runs": records,
        "summary": summarize_runs(records),
        SECTION: {"settings": {"images": len(x), **dataclasses.asdict(settings)}, "nets": entries},
    }


def _meta(net: TrainedNet) -> dict[str, Any]:
    shortcut = None if net.family == "plain" else getattr(net.model, "shortcut_option", None)
    return {
        "label": net.label, "family": net.family, "depth": net.depth, "shortcut": shortcut,
        "seed": net.seed, "source": net.source,
    }  # fmt: skip


def scan_images(config: StudyConfig, model: Any = None) -> tuple[Tensor, Tensor]:
    """The first ``--images`` training images of a seed-0 permutation, normalised as ``model``
    was trained (else as the dataset): the same fixed images for every net (the paper uses the
    whole training set; a subset keeps a scan to seconds, still one fixed loss function)."""
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    n = config.options["images"]
    idx = torch.randperm(len(ds.train_labels), generator=torch.Generator().manual_seed(0))[:n]
    norm = getattr(model, "reslab_normalization", None) or ds  # both have mean and std
    x = normalize_batch(ds.train_images[idx], norm.mean, norm.std, channels_last=True)
    return x, ds.train_labels[idx]


def scan_models(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    settings: ls.ScanSettings,
    config: StudyConfig,
) -> list[dict[str, Any]]:
    """Scan every net, in parallel on the CPU (:func:`reslab.experiments.pool.measure_all`):
    small nets scale poorly across threads, and two threads of one process can run 100x
    slower than one when other processes load a 2-core machine."""
    device = pick_device(config.device, 0)
    tasks = [(m, x, y, settings, device) for m in models]
    return measure_all(_scan, tasks, config.device, config.jobs)


def _scan(
    model: nn.Module, x: Tensor, y: Tensor, settings: ls.ScanSettings, device: torch.device
) -> dict[str, Any]:
    """One net's :func:`reslab.measure.landscape.scan` and its wall time."""
    model = model.to(device).eval()
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # ~1.2x on CPU
    start = time.perf_counter()
    out = ls.scan(model, x.to(device), y.to(device), settings)
    return {**out, "scan_time": round(time.perf_counter() - start, 2)}


# --- the verdict ---------------------------------------------------------------------------------


def landscape_verdict(results: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Is the deepest plain net's surface sharper than its residual twin's?

    At the deepest depth where both families were scanned, ``rise_gap`` is the plain nets'
    mean ``rise`` (mean loss on the circle of ``ring_radius`` minus the loss at θ, in nats)
    minus the residual nets', over seeds; ``sharper`` means a gap beyond ``tolerance`` and
    twice its seed noise (:mod:`reslab.experiments.verdicts`; with one seed the noise is
    unknown and the text says so). ``nonconvex_plain``/``_residual`` (share of grid points
    bending down) are reported beside it, not judged.
    """
    nets = _nets(results)
    rises: dict[tuple[str, int], list[float]] = {}
    for n in nets:  # a null rise is a loss that overflowed on the circle: infinitely sharp
        rise = float(n["rise"]) if is_number(n.get("rise")) else math.inf
        rises.setdefault((str(n["family"]), int(n["depth"])), []).append(rise)
    both = {d for f, d in rises if f == "plain"} & {d for f, d in rises if f == "residual"}
    if not both:
        return {"text": "no verdict: it needs a plain and a residual net at the same depth"}
    depth = max(both)
    # A surface around weights that never learned is not a minimum's: the nets must have.
    trained = [r for r in results.get("summary") or [] if r.get("depth") == depth]
    stuck = not_learned(trained, results.get("chance_error"))
    if stuck is not None:
        return {**stuck, "depth": depth}
    plain, res = rises[("plain", depth)], rises[("residual", depth)]
    if not all(map(math.isfinite, plain + res)):
        sharper = all(map(math.isfinite, res))
        return {"text": f"plain-{depth}: the loss overflowed on the circle"
                + (f", so it is sharper than resnet-{depth}" if sharper else ""),
                "sharper": sharper, "depth": depth}  # fmt: skip
    gap = gap_of_values(plain, res, tolerance, unit="nats", digits=2)
    sharper = gap.exceeds()
    radius = (results.get(SECTION) or {}).get("settings", {}).get("ring_radius")
    bent = {f: mean_std([n.get("nonconvex") for n in nets if n["family"] == f and
                         int(n["depth"]) == depth])[0] for f in FAMILIES}  # fmt: skip
    word = "sharper than" if sharper else "not measurably sharper than"
    text = (
        f"plain-{depth}'s loss surface is {word} resnet-{depth}'s: the loss rises "
        f"{gap.a:.3g} vs {gap.b:.3g} nats at radius {radius} around the trained weights, "
        f"{gap.why()}; non-convex share {_pct(bent['plain'])} vs {_pct(bent['residual'])}"
    )
    return {
        "text": text,
        "sharper": sharper,
        "depth": depth,
        "plain_rise": gap.a,
        "residual_rise": gap.b,
        **gap.as_json("rise"),
        "nonconvex_plain": bent["plain"],
        "nonconvex_residual": bent["residual"],
        "tolerance": tolerance,
    }


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.0f} %"


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    return landscape_verdict(results, config.options["rise_tolerance"])


def _nets(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    nets = (results.get(SECTION) or {}).get("nets") or []
    return [n for n in nets if isinstance(n, Mapping)]


# --- schema, flags -------------------------------------------------------------------------------


# (flag, default, help, bounds): the scan's own flags, after the source flags.
_RADIUS, _STEPS = number(0, 100, lo_open=True), integer(0, 1000)
_SCAN_FLAGS = (
    ("--images", str(IMAGES), "training images the loss is measured on", integer(1, MAX_IMAGES)),
    ("--grid", "13", "grid points per axis of the 2-D surface (odd)", integer(1, 101)),
    ("--curve", "21", "points of the 1-D curve (odd)", integer(1, 1001)),
    ("--radius", "1.0", "the plots span [-radius, radius] along each direction", _RADIUS),
    ("--ring-radius", "0.5", "radius r of the circle the sharpness is measured on", _RADIUS),
    ("--direction-seed", "0", "seed of the two random directions", integer(0, MAX_SEED - 1)),
    ("--hessian-iterations", "0", "power iterations for λmax, |λmin/λmax| (0: skip)", _STEPS),
    ("--rise-tolerance", "0.1", "rise gap (nats) within which surfaces tie", number(0, 1e6)),
)


def check(config: StudyConfig) -> None:
    check_sources(config)
    try:
        settings_of(config)
    except ValueError as exc:
        raise ConfigError(f"landscape: {exc}") from None


STUDY = Study(
    name="landscape",
    help="loss surface around trained plain and residual twins (Li et al. 2018)",
    title="Loss landscapes of plain and residual networks on {dataset}",
    intro="The training loss around each trained net, along filter-normalised random "
    "directions (Li, Xu, Taylor, Studer & Goldstein 2018, arXiv:1712.09913). Residual nets "
    "should sit in wide, smooth basins at every depth; plain nets' surfaces should turn sharp "
    "and chaotic as they get deeper.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views="reslab.experiments.landscape_views",
    depths=(20, 56),
    seeds=(0,),
    takes=(*TRAINING, "pack", "shortcut"),
    flags=(
        *SOURCE_FLAGS,
        *(Flag(f, d, f"{h} (default {d})", b) for f, d, h, b in _SCAN_FLAGS),
    ),
    check=check,
)
