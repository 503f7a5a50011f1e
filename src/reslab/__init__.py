"""reslab: residual networks, their plain twins, and the experiments that show why they work.

Everything a user needs from Python is here: build a model (:func:`create_model`), train it
(:func:`fit` with a :class:`TrainConfig`), run a study (:func:`run_study` with a
:class:`StudyConfig`), load data (:func:`load_dataset`) and weights. The trainer, the studies
and the data sets load on first use (PEP 562), and so do the models: ``import reslab`` does not
import torch, so ``reslab --help`` answers at once (the command line imports torch only for a
command that needs it, see :mod:`reslab.cli.index`).
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

from reslab.checks.edge import checked as _checked
from reslab.errors import ReslabError
from reslab.version import __version__

if TYPE_CHECKING:
    from reslab.blocks import Residual, ResidualMLP
    from reslab.data import load_dataset
    from reslab.experiments import StudyConfig, run_study
    from reslab.models import count_macs, count_params, create_model, list_models
    from reslab.train import TrainConfig, fit
    from reslab.weights import load_model, load_weights, save_weights

# name -> the module that defines it, imported when the name is first read (torch with it)
_LAZY = {
    "Residual": "reslab.blocks",
    "ResidualMLP": "reslab.blocks",
    "count_macs": "reslab.models",
    "count_params": "reslab.models",
    "create_model": "reslab.models",
    "list_models": "reslab.models",
    "load_model": "reslab.weights",
    "load_weights": "reslab.weights",
    "save_weights": "reslab.weights",
    "fit": "reslab.train",
    "TrainConfig": "reslab.train",
    "run_study": "reslab.experiments",
    "StudyConfig": "reslab.experiments",
    "load_dataset": "reslab.data",
}
# The API's edge: each function (and Residual's, ResidualMLP's constructor) checks its
# arguments' types against its annotations and refuses a wrong one in one line, an
# ArgumentError (reslab.checks.edge). The config classes check every field themselves.
_SELF_CHECKED = {"TrainConfig", "StudyConfig"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        if name not in _SELF_CHECKED:
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
