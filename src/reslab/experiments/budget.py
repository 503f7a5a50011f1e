"""What a study will cost, checked before its folder is made: runs, and disk for them.

A legal list of seeds can plan thousands of runs (``--seeds 0,1,...,999``: 4,000 runs, about
50 GB of checkpoints, days of training). Before the study folder is made, the planned runs are
counted against :data:`MAX_RUNS` (:func:`check_runs`), and the disk the unfinished ones will
write (their checkpoints' sizes from each net's layout, :func:`run_disk_bytes`) is compared
with the free space under ``--out`` (:func:`check_disk`); either is one line naming the
estimate and ``--allow-large``, the override.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from reslab import checks
from reslab.errors import ConfigError
from reslab.models import model_layout
from reslab.models.counting import layout_params
from reslab.train import TrainConfig
from reslab.train.config import model_options

__all__ = ["MAX_RUNS", "check_disk", "check_runs", "run_disk_bytes"]

#: More planned runs than this need ``--allow-large``: the largest study of the papers
#: (He et al. 2016's ablations, 5 seeds of a dozen nets) plans fewer than 100.
MAX_RUNS = 256
# A run's small files (config, metrics, last.json and its commit copy with the RNG states,
# train.log): measured 70-110 kB on the degradation study's runs; rounded up.
_SMALL_FILES = 256 * 1024


def run_disk_bytes(config: TrainConfig) -> int:
    """About the bytes one run folder holds when finished: its weights files (last, best,
    optimizer state, EMA, snapshots; float32 with a header) and its small files."""
    params = layout_params(model_layout(config.model, **model_options(config)))
    weights = params * 4 * 5 // 4 + 8192  # BN running statistics and the header: ~1.2×
    files = 3 + len(config.snapshot_steps) + (1 if config.ema else 0)
    return files * weights + _SMALL_FILES


def check_runs(count: int) -> None:
    """Refuse a study of more than :data:`MAX_RUNS` runs unless ``--allow-large`` was given
    (before the runs' configs are resolved: that alone takes ~30 ms a run)."""
    if count > MAX_RUNS and not checks.allow_large():
        raise ConfigError(
            f"this study plans {count:,} runs; more than {MAX_RUNS} needs --allow-large, or "
            "plan fewer (--seeds, --depths)"
        )


def check_disk(out: str | os.PathLike[str], configs: Sequence[TrainConfig]) -> None:
    """Refuse a study whose unfinished runs will not fit on the disk under ``out``."""
    todo = [c for c in configs if not os.path.lexists(c.run_dir() / "result.json")]
    need = sum(run_disk_bytes(c) for c in todo)
    checks.check_disk(
        need,
        out,
        f"this study ({len(todo):,} runs to train)",
        "plan fewer runs (--seeds, --depths) or choose another --out",
        error=ConfigError,
    )
