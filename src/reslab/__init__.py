"""reslab: residual networks, their plain twins, and the experiments that show why they work.

Everything a user needs from Python is here: build a model (:func:`create_model`), train it
(:func:`fit` with a :class:`TrainConfig`), run a study (:func:`run_study` with a
:class:`StudyConfig`), load data (:func:`load_dataset`) and weights. The trainer, the studies
and the data sets load on first use (PEP 562), so ``import reslab`` costs no more than torch
and the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reslab.cpu import configure_openmp

# Before anything imports torch: libgomp reads its wait policy once, when it is loaded, and a
# spinning OpenMP thread on a busy machine made training 40x slower (reslab.cpu).
configure_openmp()

from reslab import blocks, models, weights
from reslab.checks.edge import checked as _checked
from reslab.errors import ReslabError
from reslab.version import __version__

# The API's edge: each function checks its arguments' types against its annotations and
# refuses a wrong one in one line, an ArgumentError (reslab.checks.edge). The classes with a
# config (TrainConfig, StudyConfig) check every field themselves.
Residual = _checked(blocks.Residual)
ResidualMLP = _checked(blocks.ResidualMLP)
count_macs = _checked(models.count_macs)
count_params = _checked(models.count_params)
create_model = _checked(models.create_model)
list_models = _checked(models.list_models)
load_model = _checked(weights.load_model)
load_weights = _checked(weights.load_weights)
save_weights = _checked(weights.save_weights)

if TYPE_CHECKING:
    from reslab.data import load_dataset
    from reslab.experiments import StudyConfig, run_study
    from reslab.train import TrainConfig, fit

# name -> the package that defines it, imported when the name is first read
_LAZY = {
    "fit": "reslab.train",
    "TrainConfig": "reslab.train",
    "run_study": "reslab.experiments",
    "StudyConfig": "reslab.experiments",
    "load_dataset": "reslab.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        if not isinstance(value, type):  # fit, run_study, load_dataset (see _checked above)
            value = _checked(value)
        globals()[name] = value  # later reads skip this function
        return value
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Residual",
    "ResidualMLP",
    "ReslabError",
    "StudyConfig",
    "TrainConfig",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "fit",
    "list_models",
    "load_dataset",
    "load_model",
    "load_weights",
    "run_study",
    "save_weights",
]
