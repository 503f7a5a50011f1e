"""Where a study's trained nets come from: its own runs, another study's, or a weights file.

Studies that measure trained nets (lesion, landscape) take them from one of three sources:

* their own runs (the default): the study plans plain and residual twins and trains them;
* ``--from STUDY_DIR``: the nets a finished study already trained, read from its results.json
  and run folders (e.g. ``reslab lesion --from runs/degradation``);
* ``--weights FILE [--model NAME]``: any weights file reslab can load, imported CIFAR
  checkpoints included, so the popular pretrained ResNet-56 can be measured as it is.

Each net comes with the input normalisation it was trained with (its file's header; for
``--weights`` also ``--normalize``, as ``reslab eval`` takes it), and the studies feed it inputs
normalised that way; a file without one gets the dataset's statistics, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from reslab.checks import input_path, shown_path
from reslab.data import load_dataset
from reslab.errors import ConfigError
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.probing import label
from reslab.experiments.registry import Flag
from reslab.report.schema import load_results
from reslab.train import RunFolder
from reslab.train.evaluate import (
    NORMALIZE_CHOICES,
    dataset_normalization,
    model_for_weights,
    normalization_for,
    parse_normalize,
)
from reslab.weights import Normalization, load_model, read_normalization

__all__ = [
    "SOURCE_FLAGS",
    "TrainedNet",
    "check_sources",
    "own_runs",
    "trained_nets",
]

SOURCE_FLAGS = (
    Flag(
        "--from",
        None,
        "measure the nets a finished study trained (its folder) instead of training new ones",
        dest="from_dir",
    ),
    Flag(
        "--weights",
        None,
        "measure this one weights file (safetensors, or a CIFAR .pt/.th checkpoint)",
    ),
    Flag("--model", None, "the net of --weights (default: the name in the file's header)"),
    Flag("--normalize", None, f"input normalisation of the --weights file: {NORMALIZE_CHOICES}"),
)


@dataclass
class TrainedNet:
    """One trained net to measure, and where it came from."""

    label: str  # plain-56 / resnet-56
    family: str  # plain | residual
    depth: int
    seed: int | None  # None for a weights file
    model: nn.Module  # in eval mode, on the CPU
    source: str  # the run folder or the weights file
    normalization: Normalization  # how its inputs are normalised: as it was trained


def _option(config: StudyConfig, key: str) -> str | None:
    value = config.options.get(key)
    return None if value in (None, "") else str(value)


def check_sources(config: StudyConfig) -> None:
    """Refuse, in one line, flags that name two sources or half of one."""
    from_dir, weights = _option(config, "from_dir"), _option(config, "weights")
    if from_dir and weights:
        raise ConfigError("--from and --weights name two sources of nets; give one of them")
    if _option(config, "model") and not weights:
        raise ConfigError("--model names the net of a --weights file; add --weights FILE")
    if _option(config, "normalize") and not weights:
        raise ConfigError(
            "--normalize sets the inputs of a --weights file (other nets carry theirs in their "
            "files); add --weights FILE"
        )
    if from_dir and not (input_path(from_dir, "--from", folder=True) / "results.json").is_file():
        raise ConfigError(
            f"--from {shown_path(from_dir)}: no results.json there; point it at a finished study "
            "folder, e.g. runs/degradation"
        )
    if weights:
        input_path(weights, "--weights")  # a symlink loop is not "no such file"
    if _option(config, "normalize"):  # refused before the study writes anything
        ds = load_dataset(config.dataset, data_dir=config.data_dir)
        parse_normalize(str(_option(config, "normalize")), ds)


def own_runs(
    plan: Callable[[StudyConfig], list[RunSpec]],
) -> Callable[[StudyConfig], list[RunSpec]]:
    """``plan``, or no runs at all when the nets come from ``--from`` or ``--weights``."""

    def planned(config: StudyConfig) -> list[RunSpec]:
        if _option(config, "from_dir") or _option(config, "weights"):
            return []
        return plan(config)

    return planned


def _net(record: dict[str, Any], folder: RunFolder, config: StudyConfig) -> TrainedNet | None:
    if not folder.weights_path.is_file():
        return None  # diverged before its first checkpoint: nothing trained to measure
    model = load_model(folder.weights_path).eval()
    norm = read_normalization(folder.weights_path)
    if norm is None:  # written before the header recorded it: the trainer used the dataset's
        norm = dataset_normalization(load_dataset(config.dataset, data_dir=config.data_dir))
    return TrainedNet(
        label(record), record["family"], int(record["depth"]), record.get("seed"), model,
        str(folder.path), norm,
    )  # fmt: skip


def trained_nets(
    config: StudyConfig, records: Sequence[dict[str, Any]], *, shared_inputs: bool = False
) -> list[TrainedNet]:
    """The nets to measure, from the source the flags name (see the module docstring).

    Each net's input normalisation is on its model too, as ``model.reslab_normalization`` (what
    :func:`reslab.weights.save_weights` records), for code that gets the model alone. With
    ``shared_inputs`` (a study that measures every net on one batch) nets trained on
    differently normalised inputs are refused: measure each group in its own study.
    """
    nets = _find_nets(config, records)
    for net in nets:
        net.model.reslab_normalization = net.normalization  # type: ignore[assignment]
    found = {(n.normalization.mean, n.normalization.std): n.normalization.name for n in nets}
    if shared_inputs and len(found) > 1:
        raise ConfigError(
            f"these nets were trained on differently normalised inputs "
            f"({', '.join(sorted(set(found.values())))} statistics); measure each group in its "
            "own study"
        )
    return nets


def _find_nets(config: StudyConfig, records: Sequence[dict[str, Any]]) -> list[TrainedNet]:
    weights, from_dir = _option(config, "weights"), _option(config, "from_dir")
    if weights:
        ds = load_dataset(config.dataset, data_dir=config.data_dir)
        model = model_for_weights(Path(weights), _option(config, "model"), ds).eval()
        norm = normalization_for(Path(weights), _option(config, "normalize"), ds)
        plain = bool(getattr(model, "plain", False))
        depth = int(getattr(model, "depth", 0))
        family = "plain" if plain else "residual"
        record: dict[str, Any] = {"family": family, "depth": depth}
        return [TrainedNet(label(record), family, depth, None, model, weights, norm)]
    if from_dir:
        results = load_results(from_dir)
        trained_on = results.get("config", {}).get("dataset")
        if trained_on is not None and trained_on != config.dataset:
            raise ConfigError(
                f"--from {from_dir} trained its nets on {trained_on}; pass --dataset {trained_on}"
            )
        runs = [r for r in results.get("runs", []) if isinstance(r, dict)]
        root = Path(from_dir) / "runs"
    else:
        runs, root = list(records), Path(config.out) / "runs"
    nets = [_net(r, RunFolder(root / r["name"]), config) for r in runs]
    found = [n for n in nets if n is not None]
    if not found:
        raise ConfigError(f"no trained nets to measure in {root}: every run diverged or is missing")
    return found
