"""``reslab responses``: how much each layer and each residual branch changes the signal.

He et al. 2015 (arXiv:1512.03385), §4.2 and Fig. 7: the standard deviations of the 3×3 layers'
responses are smaller in ResNets than in their plain twins, and smaller still in deeper ResNets
— the residual functions are closer to zero. ‖F(x)‖/‖x‖ per block measures the same directly:
each block is a small correction to the identity. Every seed's trained nets are probed.
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
    kinds = ("layer_responses", "residual_magnitude")
    return {"probes": probe_runs(config, records, kinds, every_seed=True)}


def verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    """The mean ‖F(x)‖/‖x‖ of each residual net and the mean response std of each net."""
    probes = results["probes"]
    parts = probe_views.magnitude_readings(probes) + probe_views.response_readings(probes)
    return {"text": "; ".join(parts) or "no probes"}


def tables(results: Mapping[str, Any]) -> list[html.Section]:
    return [probe_views.probes_section(results)]


STUDY = Study(
    name="responses",
    help="layer-response std (He et al. 2015 Fig. 7) and ||F(x)||/||x|| per block",
    title="Layer responses and residual magnitudes on {dataset}",
    intro="The size of each layer's response and of each residual branch relative to its "
    "input, measured on a batch of training images.",
    plan=plan,
    analyse=analyse,
    verdict=verdict,
    views=Views(
        figures=(probe_views.RESIDUAL_RATIO, probe_views.LAYER_RESPONSES),
        tables=tables,
    ),
    depths=(20, 56),
    seeds=(0,),
    takes=(*TRAINING, "pack", "shortcut"),
)
