"""Training and evaluation: one config dataclass, one loop, one run folder.

Read it in this order:

* :mod:`~reslab.train.config` — :class:`TrainConfig`, one field per knob (its help text and flag
  in the field's metadata), and :func:`resolve`: defaults < recipe < TOML file < command line.
* :mod:`~reslab.train.recipes` — the named recipes (the paper's CIFAR schedule among them).
* :mod:`~reslab.train.schedule` — the learning rate as a function of the step, warm-up included.
* :mod:`~reslab.train.runtime` — device, precision, compile, threads: :func:`setup` applies the
  process-wide switches and restores them.
* :mod:`~reslab.train.run_folder` — the only code that reads or writes a run folder.
* :mod:`~reslab.train.evaluate` — the one evaluation (clean training error, held-out errors,
  ``reslab eval``).
* :mod:`~reslab.train.step`, :mod:`~reslab.train.state`, :mod:`~reslab.train.distributed`,
  :mod:`~reslab.train.console` — one SGD step, the checkpointed state, torchrun, the console.
* :mod:`~reslab.train.session` — what a session is made of: data on the device, model, folder.
* :mod:`~reslab.train.loop` — :func:`fit`: setup → resume → epochs → finish.
* :mod:`~reslab.train.run` — one run in progress (``Run``) and its commit points: resume,
  snapshot, checkpoint, finite check, end of epoch, finish; ``fit`` and ``fit_pack`` share them.
* :mod:`~reslab.train.pack`, :mod:`~reslab.train.packed` — :func:`fit_pack`: runs of one shape
  and recipe trained as one grouped net, each member computing its own run in its own folder.
"""

from reslab.train.config import (
    FIELDS,
    RESUME_OVERRIDABLE,
    TrainConfig,
    flag_name,
    load_config_file,
    resolve,
)
from reslab.train.evaluate import EvalResult, eval_run, evaluate
from reslab.train.loop import History, NonFiniteLoss, fit
from reslab.train.pack import fit_pack, pack_blocker, pack_groups
from reslab.train.recipes import RECIPES
from reslab.train.run_folder import RunFolder, RunLock, find_runs
from reslab.train.runtime import (
    Runtime,
    autocast_context,
    compile_mode,
    one_cpu_thread,
    pick_device,
    resolve_runtime,
    setup,
)
from reslab.train.schedule import Schedule, lr_at
from reslab.train.step import build_optimizer, restore_momentum, train_step

__all__ = [
    "FIELDS",
    "RECIPES",
    "RESUME_OVERRIDABLE",
    "EvalResult",
    "History",
    "NonFiniteLoss",
    "RunFolder",
    "RunLock",
    "Runtime",
    "Schedule",
    "TrainConfig",
    "autocast_context",
    "build_optimizer",
    "compile_mode",
    "eval_run",
    "evaluate",
    "find_runs",
    "fit",
    "fit_pack",
    "flag_name",
    "load_config_file",
    "lr_at",
    "one_cpu_thread",
    "pack_blocker",
    "pack_groups",
    "pick_device",
    "resolve",
    "resolve_runtime",
    "restore_momentum",
    "setup",
    "train_step",
]
