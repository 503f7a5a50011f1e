"""Probing a study's trained nets: gradient flow, residual magnitude, layer responses and the
forward signal (signal propagation plots).

The probes themselves are in :mod:`reslab.measure.probes`; this module loads each run's weights
(final, and the snapshots the trainer kept at ``--probe-steps``), feeds every net the same
batch of training images, and turns the measurements into results.json ``probes`` entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reslab.data import load_dataset, normalize_batch
from reslab.experiments.config import StudyConfig
from reslab.experiments.pool import measuring
from reslab.measure import probes, signal
from reslab.report import stats
from reslab.train import RunFolder
from reslab.weights import load_model

__all__ = ["KINDS", "label", "probe_runs"]

KINDS = ("gradient_flow", "residual_magnitude", "layer_responses", "signal_propagation")


def label(record: dict[str, Any]) -> str:
    """``plain-56`` or ``resnet-56``: the name probes and tables give a net."""
    if record.get("label"):  # a study that names its nets itself (e.g. by variant)
        return str(record["label"])
    return stats.label((record["family"], int(record["depth"]), None), with_shortcut=False)


def probe_runs(
    study: StudyConfig,
    records: Sequence[dict[str, Any]],
    kinds: Iterable[str],
    every_seed: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Probe each (family, depth)'s nets at initialisation, at the probe steps, and trained.

    Only the first seed's nets unless ``every_seed``; entries carry their ``seed`` when more
    than one seed is probed. A run that diverged before its first checkpoint is measured at
    initialisation only (where its snapshot was kept).
    """
    kinds = tuple(dict.fromkeys(kinds))  # results.json lists them in the study's order
    x, y = _probe_batch(study)
    # One thread below CIFAR's 32×32 (height × width: channel 0 of the first image): too
    # small to split (reslab.train.one_cpu_thread).
    with measuring(1 if x[0, 0].numel() < 32 * 32 else None):
        return _probe_all(study, records, kinds, every_seed, x, y)


def _probe_all(
    study: StudyConfig,
    records: Sequence[dict[str, Any]],
    kinds: tuple[str, ...],
    every_seed: bool,
    x: Tensor,
    y: Tensor,
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    first_seed = min(r["seed"] for r in records)
    chosen = [r for r in records if every_seed or r["seed"] == first_seed]
    several = len({r["seed"] for r in chosen}) > 1
    for record in chosen:
        folder = RunFolder(Path(study.out) / "runs" / record["name"])
        meta = {"label": label(record), "family": record["family"], "depth": record["depth"]}
        if several:
            meta["seed"] = record["seed"]
        # A run that diverged before its first checkpoint has no trained net, but its
        # initial snapshot still shows why (e.g. a residual net without BN whose signal grows
        # block after block): what was measured at initialisation is kept.
        trained = load_model(folder.weights_path) if folder.weights_path.is_file() else None
        finals = [] if trained is None else [("trained", trained)]
        if "gradient_flow" in kinds:
            snapshots = [
                ("init" if step == 0 else f"step {step}", folder.snapshot_path(step))
                for step in study.probe_steps
            ]
            stages = [(when, load_model(path)) for when, path in snapshots if path.is_file()]
            for when, model in [*stages, *finals]:
                out["gradient_flow"].append({**meta, "when": when, **_flow(model, x, y)})
        if "signal_propagation" in kinds:  # the forward signal at init (if kept) and trained
            init = folder.snapshot_path(0)
            moments = [("init", load_model(init))] if init.is_file() else []
            for when, model in [*moments, *finals]:
                out["signal_propagation"].append({**meta, "when": when, **_signal(model, x)})
        if trained is None:
            continue
        if "residual_magnitude" in kinds:
            out["residual_magnitude"].append({**meta, **_magnitude(trained, x)})
        if "layer_responses" in kinds:
            out["layer_responses"].append({**meta, **_responses(trained, x)})
    return out


def _probe_batch(study: StudyConfig) -> tuple[Tensor, Tensor]:
    """The same ``probe_batch`` training images for every net (seed 0), normalised."""
    ds = load_dataset(study.dataset, data_dir=study.data_dir)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.train_labels), generator=gen)[: study.probe_batch]
    x = normalize_batch(ds.train_images[idx], ds.mean, ds.std, channels_last=False)
    return x, ds.train_labels[idx]


def _flow(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    flow = probes.gradient_flow(model.train(), x, y)
    return {
        "block": flow.block_names,
        "input_grad_norm": flow.input_grad_norms,
        "layer": flow.weight_names,
        "weight_grad_norm": flow.weight_grad_norms,
    }


def _magnitude(model: nn.Module, x: Tensor) -> dict[str, Any]:
    mag = probes.residual_magnitude(model, x)
    return {
        "block": mag.block_names,
        "ratio": mag.ratios,
        "f_norm": mag.branch_norms,
        "shortcut_norm": mag.shortcut_norms,
    }


def _signal(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Brock et al. 2021's signal propagation plot of one net: BN on batch statistics, as
    in training (at initialisation its running statistics are still 0 and 1)."""
    sp = signal.signal_propagation(model, x, train_mode=True)
    return {
        "block": sp.block_names,
        "stage": sp.stages,
        "squared_mean": sp.squared_means,
        "variance": sp.variances,
        "residual_variance": sp.residual_variances,
    }


def _responses(model: nn.Module, x: Tensor) -> dict[str, Any]:
    resp = probes.layer_responses(model, x)
    return {"layer": resp.layer_names, "std": resp.stds, "std_sorted": resp.sorted_stds}
