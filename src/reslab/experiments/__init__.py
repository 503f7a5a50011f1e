"""Studies that show the degradation problem and why shortcuts cure it, on one registry.

A study is one module holding its plan, probes, verdict, figures, tables, title and CLI
defaults as a :class:`~reslab.experiments.registry.Study`, and one :func:`register` line below;
``reslab <study>``, :func:`run_study` and ``reslab report`` take everything from the registry.
Every training run is an ordinary run folder written by :func:`reslab.train.fit` (a run is a
function from (config, seed) to metrics, airbench's rule), so a cluster scheduler can run them
as separate ``reslab train`` jobs and ``reslab report`` aggregates the folders.

* ``degradation``: plain and residual twins at several depths, same recipe and budget
  (He et al. 2015, arXiv:1512.03385, Fig. 6 and Table 6).
* ``shortcuts``: plain vs options A, B, C at one depth (Table 3 in spirit).
* ``gradients``: ‖∂L/∂x_l‖ per block at initialisation and after training (He et al. 2016,
  arXiv:1603.05027, §3).
* ``responses``: std of the 3×3 layers' responses (Fig. 7) and ‖F(x)‖/‖x‖ per block.
* ``lesion``: delete or swap blocks at test time (Veit et al. 2016, arXiv:1605.06431).
* ``landscape``: filter-normalised loss surfaces (Li et al. 2018, arXiv:1712.09913).
* ``shattering``: input-gradient correlation at initialisation (Balduzzi et al. 2017,
  arXiv:1702.08591).
* ``ablation``: shortcut variants and activation placements (He et al. 2016, arXiv:1603.05027,
  Tables 1 and 2).
* ``trainability``: the nets that train without shortcuts or without BN (Dirac, looks-linear,
  delta-orthogonal, SkipInit, Fixup) beside the plain and residual twins.
"""

from reslab.experiments import (
    ablation,
    degradation,
    gradients,
    landscape,
    lesion,
    responses,
    shattering,
    shortcuts,
    trainability,
)
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.page import build_report
from reslab.experiments.records import aggregate
from reslab.experiments.registry import Flag, Study, Views, get_study, list_studies, register
from reslab.experiments.runner import run_study

# The registry, one line per study; `reslab --help` lists them in this order.
register(degradation.STUDY)
register(shortcuts.STUDY)
register(gradients.STUDY)
register(responses.STUDY)
register(lesion.STUDY)
register(landscape.STUDY)
register(shattering.STUDY)
register(ablation.STUDY)
register(trainability.STUDY)

__all__ = [
    "Flag",
    "RunSpec",
    "Study",
    "StudyConfig",
    "Views",
    "aggregate",
    "build_report",
    "get_study",
    "list_studies",
    "register",
    "run_study",
]
