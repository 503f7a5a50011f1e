"""The training loop: :func:`fit` reads top to bottom, setup → resume → epochs → finish.

The data stay on the device (:class:`reslab.data.DeviceLoader`), the per-step path has no
per-sample Python and no host sync (running loss and error are summed on the device and read
once per epoch), and a run killed at any point resumes to bit-identical weights on CPU with
``deterministic=True``: everything a resume needs is in :class:`reslab.train.state.TrainState`
and the checkpoint's tensors, written by :mod:`reslab.train.run_folder`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reslab import stop
from reslab.checks import shown
from reslab.data.mix import MixDraw, MixSettings, apply_mix, draw_mix
from reslab.errors import ConfigError
from reslab.models import count_params
from reslab.output import say
from reslab.train.config import FIELDS, RESUME_OVERRIDABLE, TrainConfig, flag_name, resolve
from reslab.train.console import Reporter, fmt, tensorboard_writer
from reslab.train.distributed import Dist, init_distributed
from reslab.train.evaluate import dataset_normalization
from reslab.train.run import (
    History,
    NonFiniteLoss,
    Run,
    check_finite,
    end_epoch,
    finish,
    progress,
    resume_run,
    save_checkpoint,
    snapshot,
)
from reslab.train.run_folder import RunFolder
from reslab.train.runtime import (
    Runtime,
    autocast_context,
    compile_cost_note,
    pick_device,
    record_threads,
    setup,
)
from reslab.train.schedule import Schedule
from reslab.train.session import RunData, build_model, claim_folder, load_data, wrap_model
from reslab.train.state import Running, TrainState
from reslab.train.step import EMA, build_optimizer, train_step

__all__ = ["History", "NonFiniteLoss", "fit", "run_config"]


def fit(
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    explicit: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> History:
    """Train a model as ``config`` says and return its :class:`History`.

    * ``fit(config)`` starts a new run in ``config.run_dir()``; a folder that already holds a
      run is refused (nothing is overwritten).
    * ``fit(config, resume=True)`` continues the run in that folder if there is one (its saved
      config must match ``config``), else starts it; a finished run is returned as it is.
    * ``fit(resume_from=run_dir)`` continues the run saved there, with its saved config;
      ``overrides`` may change only :data:`RESUME_OVERRIDABLE` fields.
    * Without ``resume_from``, ``overrides`` replace fields of ``config``. A key that names no
      field is refused, with the closest one.

    ``explicit`` names the fields the user set (recorded in ``config.json``). Under torchrun
    (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone writes files and prints.
    """
    config, resume = run_config(config, resume, resume_from, overrides)
    folder = RunFolder(config.run_dir())
    if resume and folder.is_finished():  # finished: nothing to do (studies skip such runs)
        final = folder.read_result()
        if not config.quiet and int(os.environ.get("RANK", "0")) == 0:
            say(f"{folder.path} has finished already (test error {fmt(final.get('test_error'))} %)")
        return History(folder.path, folder.read_records(), final)
    dist = init_distributed(config)
    try:
        device = pick_device(config.device, dist.local_rank)
        with setup(config, device) as fast:
            if config.threads is None and device.type == "cpu":
                # Each rank read its own load; all train with rank 0's count, the one saved.
                torch.set_num_threads(dist.from_main(torch.get_num_threads()))
            config = record_threads(config, device)
            # Ctrl-C/SIGTERM (reslab.stop): torchrun's ranks cannot agree cheaply on a step to
            # stop at, so they end at once, resumable from the last checkpoint.
            with stop.at_once(quiet=not dist.main) if dist.enabled else nullcontext():
                history = _fit(config, dist, device, fast, resume=resume, explicit=explicit)
        if dist.enabled:
            # Every rank reaches the end before any tears the group down: a gloo rank whose
            # peer destroyed the group (and its connections) while it was still finishing its
            # last collective aborted with "terminate called without an active exception".
            torch.distributed.barrier()
        return history
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_config(
    config: TrainConfig | None,
    resume: bool,
    resume_from: str | Path | None,
    overrides: Mapping[str, Any] | None,
) -> tuple[TrainConfig, bool]:
    """The config :func:`fit` trains and whether it resumes, checked against a saved run's.

    Also what ``reslab train --print-config`` prints: it reads files but writes none.
    """
    if resume_from is not None:
        folder = RunFolder(Path(resume_from))
        changes = _overrides(overrides, RESUME_OVERRIDABLE)
        saved = folder.read_config()
        bad = sorted(set(changes) - RESUME_OVERRIDABLE)
        if bad:
            raise ConfigError(
                f"--resume uses the run's saved config; {', '.join(map(flag_name, bad))} cannot "
                "change on resume (start a new run with --config "
                f"{folder.config_path} --out NEW_FOLDER instead)"
            )
        return dataclasses.replace(saved, **changes, out=str(folder.path)), True
    changes = _overrides(overrides, frozenset(FIELDS))
    if config is None:
        config = resolve(changes)
    elif changes:
        config = dataclasses.replace(config, **changes)
    if resume:
        folder = RunFolder(config.run_dir())
        if folder.config_path.is_file():
            saved = folder.read_config()
            differ = [
                f.name
                for f in dataclasses.fields(TrainConfig)
                if f.name not in RESUME_OVERRIDABLE | {"out"}
                and getattr(saved, f.name) != getattr(config, f.name)
            ]
            if differ:
                raise ConfigError(
                    f"run folder {folder.path} holds a run with a different config "
                    f"({', '.join(differ)} differ); choose another --out"
                )
            if config.threads is None:  # go on with the thread count the run chose
                config = dataclasses.replace(config, threads=saved.threads)
    if config.out is None:
        config = dataclasses.replace(config, out=str(config.run_dir()))
    return config, resume


def _overrides(overrides: Mapping[str, Any] | None, allowed: frozenset[str]) -> dict[str, Any]:
    """``fit(overrides=...)`` as a dict; a key that names no setting is refused with the
    closest one (it was ignored, issue 20). ``allowed`` are the settings this call may change."""
    changes = dict(overrides or {})
    for key in changes:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            valid = ", ".join(sorted(allowed)) if len(allowed) < 10 else "TrainConfig's fields"
            raise ConfigError(
                f"overrides has an unknown setting {shown(key)}; {hint}valid keys: {valid}"
            )
    return changes


def build_run(
    config: TrainConfig, dist: Dist, device: torch.device, fast: Runtime
) -> tuple[RunData, nn.Module, torch.optim.SGD]:
    """Seed, then data, model and optimizer, in this order: the RNG draws a run's weights and
    data split come from. :func:`reslab.train.fit_pack` builds each member with it too."""
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    data = load_data(config, dist, device, fast)
    raw = build_model(config, data.ds, dist, device, fast)
    # Every weights file of the run (and the EMA's copy) records the inputs it was trained on.
    raw.reslab_normalization = dataset_normalization(data.ds)  # type: ignore[assignment]
    return data, raw, build_optimizer(config, raw, device)


def _fit(
    config: TrainConfig,
    dist: Dist,
    device: torch.device,
    fast: Runtime,
    *,
    resume: bool,
    explicit: Sequence[str] | None,
) -> History:
    started = time.perf_counter()
    report = Reporter(config.quiet, enabled=dist.main)
    data, raw, optimizer = build_run(config, dist, device, fast)
    ema = EMA(raw, config.ema, warmup=config.ema_warmup) if config.ema else None
    folder = RunFolder(config.run_dir())
    lock = claim_folder(folder, dist, resume, config, explicit)
    try:
        schedule = Schedule(config, data.total_steps)
        state = TrainState(schedule, data.loader, Running(device), started=started)
        run = Run(config, dist, device, fast, report, folder, data, raw, raw, optimizer, ema, state)
        resume_run(run)
        if state.step == 0:
            snapshot(run)
        run.model = wrap_model(raw, dist, device, fast)
        run.writer = tensorboard_writer(folder.path, config.tensorboard and dist.main, report)
        report.line(
            f"{config.model} ({count_params(raw):,} params) on {data.ds.name}: "
            f"{data.total_steps} steps ({data.num_epochs} epochs of {len(data.loader)}), batch "
            f"{config.batch_size}, {dist.world_size} × {device}{_threads_note(device)}, "
            f"{fast.precision_note or ('bf16' if fast.amp_dtype else 'fp32')}, recipe "
            f"{config.recipe or '-'} -> "
            f"{folder.path}"
        )
        if fast.compile and device.type == "cpu":
            report.line(compile_cost_note(config.model, data.total_steps - state.step))
        report.start(data.total_steps, state.step)
        # Ctrl-C/SIGTERM: until here the run stops at once (the folder survives a kill at any
        # point); from here at the next step, with a checkpoint (reslab.stop).
        with stop.deferring():
            _run_epochs(run)
            return finish(run)
    finally:
        report.close()
        lock.release()


def _threads_note(device: torch.device) -> str:
    n = torch.get_num_threads()
    return f" ({n} thread{'' if n == 1 else 's'})" if device.type == "cpu" else ""


# --- the epochs ------------------------------------------------------------------------------


def _step(
    run: Run, x: Tensor, y: Tensor, autocast: Any, lr: float, mix: MixDraw | None = None
) -> None:
    """One optimizer step at learning rate ``lr``, its sums added on the device.

    With ``mix`` (mixup/cutmix on) the batch is mixed first and trained on soft targets; its
    running training error counts against the dominant label (:mod:`reslab.data.mix`).
    """
    config, state = run.config, run.state
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    target = y
    if mix is not None:
        mixed = apply_mix(x, y, mix, run.data.ds.num_classes)
        x, target, y = mixed.images, mixed.targets, mixed.dominant
    try:
        loss, logits = train_step(
            run.model,
            run.optimizer,
            x,
            target,
            autocast,
            config.label_smoothing,
            config.grad_clip,
            cuda_graphs=run.fast.cuda_graphs,
            accum_steps=config.accum_steps,
        )
    except RuntimeError as exc:
        # --detect-anomaly's NaN report: autograd has printed the forward call above.
        if not (config.detect_anomaly and "returned nan values" in str(exc)):
            raise
        raise NonFiniteLoss(
            f"--detect-anomaly: {str(exc).rstrip('.')} at step {state.step} (lr {lr:.4g}); "
            f"the forward call that made it is printed above; stopped, {run.kept()}"
        ) from None
    if run.ema is not None:
        run.ema.update(run.raw, state.step + 1)
    state.running.add(loss, logits, y)
    state.step += 1


def _run_epochs(run: Run) -> None:
    """Train from the state's step to the end: no host sync inside an epoch but the warm-up's."""
    config, state, data, report = run.config, run.state, run.data, run.report
    loader, schedule = data.loader, state.schedule
    autocast = autocast_context(run.device, run.fast.amp_dtype)
    lr = schedule.lr(state.step)
    mixing = MixSettings(config.mixup, config.cutmix, config.mix_prob, config.mix_switch_prob)
    if loader.batch_size % config.accum_steps:
        raise ConfigError(
            f"--accum-steps {config.accum_steps} must divide each rank's batch of "
            f"{loader.batch_size} (--batch-size {config.batch_size} over {run.dist.world_size})"
        )
    for epoch in range(loader.epoch, data.num_epochs):
        if state.step >= data.total_steps:  # resumed from the checkpoint taken at the end
            break
        loader.set_epoch(epoch)
        run.raw.train()
        epoch_start, images = time.perf_counter(), 0
        for x, y in loader:
            lr = schedule.lr(state.step)
            mix = None
            if mixing.enabled:  # drawn from (seed, epoch, batch, rank) alone: resumes exactly
                h, w = x.shape[2:]
                batch = loader.state_dict()["batch"] - 1  # the batch just handed out
                mix = draw_mix(mixing, h, w, seed=config.seed, epoch=loader.epoch, batch=batch,
                               rank=run.dist.rank)  # fmt: skip
            _step(run, x, y, autocast, lr, mix)
            images += y.shape[0] * run.dist.world_size
            snapshot(run)
            # He et al. 2015 §4.2: warm up at warmup_lr until the training error is below the
            # threshold; read every WARMUP_CHECK_EVERY steps (the only mid-epoch sync).
            if schedule.checks_at(state.step):
                window_error = state.running.take_window(run.dist)
                if schedule.observe(state.step, window_error):
                    report.line(
                        f"step {state.step}: training error {window_error:.1f} % < "
                        f"{config.warmup_until_error:g} %, warm-up over, back to the schedule"
                    )
            progress(run, epoch, epoch_start, images, lr)
            if state.step >= data.total_steps:
                break
            if (
                config.checkpoint_every_steps
                and state.step % config.checkpoint_every_steps == 0
                and loader.state_dict()["batch"] < len(loader)  # the epoch end saves anyway
            ):
                check_finite(run)
                save_checkpoint(run)
            if stop.requested() and loader.state_dict()["batch"] < len(loader):
                _stop_here(run)
        end_epoch(run, epoch, epoch_start, images, lr)
        stop.check()  # the epoch's checkpoint is the one a resume starts from


def _stop_here(run: Run) -> None:
    """Ctrl-C or SIGTERM (:mod:`reslab.stop`): commit this step and stop. A resume replays
    nothing; with ``deterministic=True`` it ends with the weights the whole run would have."""
    check_finite(run)
    save_checkpoint(run)
    stop.check()
