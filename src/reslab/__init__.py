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

from reslab import stop
from reslab.cpu import configure_openmp

# The `reslab` command stops on Ctrl-C with one line even while torch loads (reslab.stop).
stop.install_for_command()

# Before anything imports torch: libgomp reads its wait policy once, when it is loaded, and a
# spinning OpenMP thread on a busy machine made training 40x slower (reslab.cpu).
configure_openmp()

from reslab.blocks import Residual, ResidualMLP
from reslab.errors import ReslabError
from reslab.models import count_macs, count_params, create_model, list_models
from reslab.version import __version__
from reslab.weights import load_model, load_weights, save_weights

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
