"""``reslab gradients``: the gradient reaching each block, plain vs residual, as training goes.

He et al. 2016 (arXiv:1603.05027), §3: with identity shortcuts the gradient at block l is
``∂L/∂x_l = ∂L/∂x_L (1 + ∂/∂x_l Σ F(x_i))``, so ``∂L/∂x_L`` reaches every block unattenuated;
a plain net multiplies the blocks' Jacobians instead. The study measures ‖∂L/∂x_l‖ per block at
initialisation, at chosen training steps (``--probe-steps``, from the trainer's snapshot
weights) and after training, for every seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reslab.experiments import degradation, probe_views
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.probing import probe_runs
from reslab.experiments.registry import TRAINING, Study, Views
from reslab.report import html

__all__ = ["STUDY", "plan"]


def plan(config: StudyConfig) -> list[RunSpec]:
    """Both families at every depth and seed (the degradation study's grid)."""
    return degradation.plan(config)


def analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"probes": probe_runs(config, records, ("gradient_flow",), every_seed=True)}


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    """How much the gradient shrinks from the last block to the first, per net, at init."""
    return {"text": "; ".join(probe_views.gradient_readings(results["probes"])) or "no probes"}


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    return [probe_views.probes_section(results)]


STUDY = Study(
    name="gradients",
    help="gradient norm reaching each block, plain vs residual, at init and trained",
    title="Gradient flow through plain and residual networks on {dataset}",
    intro="Gradient norms at every block of plain and residual networks, measured by "
    "backpropagating one batch.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views=Views(
        figures=(probe_views.GRADIENT_NORM,),
        tables=tables,
    ),
    depths=(20, 56),
    seeds=(0,),
    takes=(*TRAINING, "pack", "shortcut", "probe_steps"),
    defaults={"probe_steps": (0, 10, 30)},
    snapshots=True,
)
