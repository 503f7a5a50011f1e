"""The training loop: :func:`fit` reads top to bottom, setup → resume → epochs → finish.

The data stay on the device (:class:`reslab.data.DeviceLoader`), the per-step path has no
per-sample Python and no host sync (running loss and error are summed on the device and read
once per epoch), and a run killed at any point resumes to bit-identical weights on CPU with
``deterministic=True``: everything a resume needs is in :class:`reslab.train.state.TrainState`
and the checkpoint's tensors, written by :mod:`reslab.train.run_folder`.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reslab.data.mix import MixDraw, MixSettings, apply_mix, draw_mix
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.models import count_params
from reslab.train.config import RESUME_OVERRIDABLE, TrainConfig, flag_name, resolve
from reslab.train.console import Reporter, fmt, tensorboard_writer
from reslab.train.distributed import Dist, init_distributed, param_checksum, sync_buffers
from reslab.train.evaluate import dataset_normalization, evaluate
from reslab.train.run_folder import RunFolder
from reslab.train.runtime import (
    Runtime,
    autocast_context,
    pick_device,
    record_threads,
    setup,
)
from reslab.train.schedule import Schedule
from reslab.train.session import RunData, build_model, claim_folder, load_data, wrap_model
from reslab.train.state import Running, TrainState
from reslab.train.step import EMA, build_optimizer, restore_momentum, train_step
from reslab.weights import load_weights, save_weights

__all__ = ["History", "NonFiniteLoss", "fit", "run_config"]


@dataclass
class History:
    """What :func:`fit` returns: the run folder, one record per epoch, and the final result."""

    run_dir: Path
    records: list[dict[str, Any]]
    final: dict[str, Any]


class NonFiniteLoss(ReslabError):
    """The training loss became NaN or inf; the message names the step and the lr."""


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

    ``explicit`` names the fields the user set (recorded in ``config.json``). Under torchrun
    (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone writes files and prints.
    """
    config, resume = run_config(config, resume, resume_from, overrides)
    folder = RunFolder(config.run_dir())
    if resume and folder.is_finished():  # finished: nothing to do (studies skip such runs)
        final = folder.read_result()
        if not config.quiet and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"{folder.path} has finished already (test error {fmt(final.get('test_error'))} %)"
            )
        return History(folder.path, folder.read_records(), final)
    dist = init_distributed(config)
    try:
        device = pick_device(config.device, dist.local_rank)
        with setup(config, device) as fast:
            if config.threads is None and device.type == "cpu":
                # Each rank read its own load; all train with rank 0's count, the one saved.
                torch.set_num_threads(dist.from_main(torch.get_num_threads()))
            config = record_threads(config, device)
            return _fit(config, dist, device, fast, resume=resume, explicit=explicit)
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
        saved = folder.read_config()
        changes = dict(overrides or {})
        bad = sorted(set(changes) - RESUME_OVERRIDABLE)
        if bad:
            raise ConfigError(
                f"--resume uses the run's saved config; {', '.join(map(flag_name, bad))} cannot "
                "change on resume (start a new run with --config "
                f"{folder.config_path} --out NEW_FOLDER instead)"
            )
        return dataclasses.replace(saved, **changes, out=str(folder.path)), True
    if config is None:
        config = resolve({})
    elif resume:
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


@dataclass
class _Run:
    """One training session: what the loop reads and updates, in one place."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    fast: Runtime
    report: Reporter
    folder: RunFolder
    data: RunData
    raw: nn.Module  # the model itself; ``model`` may wrap it in DDP and torch.compile
    model: nn.Module
    optimizer: torch.optim.SGD
    ema: EMA | None
    state: TrainState
    writer: Any = None  # TensorBoard SummaryWriter, if asked for and installed

    @property
    def eval_net(self) -> nn.Module:
        """The weights scored: the EMA's when there is one. Evaluation runs eagerly: each eval
        batch shape (and eval-mode BN) would need its own compiled graph."""
        return self.ema.module if self.ema is not None else self.raw

    def evaluate(self, images: Tensor, labels: Tensor) -> float:
        ds = self.data.ds
        return evaluate(
            self.eval_net,
            images,
            labels,
            mean=ds.mean,
            std=ds.std,
            num_classes=ds.num_classes,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            channels_last=self.fast.channels_last,
            autocast_dtype=self.fast.amp_dtype,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        ).error

    def kept(self) -> str:
        """What a stopped run leaves behind, for its error message."""
        last = self.folder.committed_step() if self.folder.last_json.exists() else None
        if last is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {last}) is kept in {self.folder.ckpt_dir}"

    def columns(self) -> list[str]:
        return [
            "epoch",
            "step",
            "lr",
            "train_loss",
            "train_error",
            "clean_train_error",
            self.data.eval_key,
            "images_per_s",
            "epoch_time",
            "wall_time",
        ]


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
        run = _Run(
            config, dist, device, fast, report, folder, data, raw, raw, optimizer, ema, state
        )
        _resume(run)
        if state.step == 0:
            _snapshot(run)
        run.model = wrap_model(raw, dist, device, fast)
        run.writer = tensorboard_writer(folder.path, config.tensorboard and dist.main, report)
        report.line(
            f"{config.model} ({count_params(raw):,} params) on {data.ds.name}: "
            f"{data.total_steps} steps ({data.num_epochs} epochs of {len(data.loader)}), batch "
            f"{config.batch_size}, {dist.world_size} × {device}{_threads_note(device)}, "
            f"{'bf16' if fast.amp_dtype else 'fp32'}, recipe {config.recipe or '-'} -> "
            f"{folder.path}"
        )
        report.start(data.total_steps, state.step)
        _run_epochs(run)
        return _finish(run)
    finally:
        report.close()
        lock.release()


def _threads_note(device: torch.device) -> str:
    n = torch.get_num_threads()
    return f" ({n} thread{'' if n == 1 else 's'})" if device.type == "cpu" else ""


# --- resume ----------------------------------------------------------------------------------


def _resume(run: _Run) -> None:
    """Load the committed checkpoint, if any, into the model, optimizer, EMA and state."""
    folder, dist = run.folder, run.dist
    checkpoint = folder.load_checkpoint(repair=dist.main)
    if checkpoint is None:
        if dist.main:  # a run killed before its first checkpoint starts over
            folder.drop_metrics()
        return
    saved, weights_path, tensors = checkpoint
    # The step must be where the loader stands: an edited step would train on from the wrong
    # place (the step files' own step is checked by the run folder).
    loader = saved["loader"]
    if loader["epoch"] * len(run.data.loader) + loader["batch"] != saved["step"]:
        raise CheckpointError(
            f"{folder.last_json} says step {saved['step']} but its loader stands at epoch "
            f"{loader['epoch']}, batch {loader['batch']} of {len(run.data.loader)}; it was "
            "edited: restore it, or delete it to resume from the newest intact step files"
        )
    if folder.recovered and dist.main:
        run.report.line(f"resume: {folder.recovered}", always=True)
    load_weights(run.raw, weights_path)
    restore_momentum(run.optimizer, tensors)
    if run.ema is not None:
        run.ema.module.load_state_dict(
            {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
        )
    run.state.load_state_dict(saved)
    if dist.main:
        folder.rewrite_metrics(run.state.records, run.columns())
        run.report.line(
            f"resuming {folder.path} at step {run.state.step} of {run.data.total_steps}"
        )


# --- the epochs ------------------------------------------------------------------------------


def _snapshot(run: _Run) -> None:
    """The weights at a chosen step, kept for probes (e.g. gradient flow over training).

    A resumed run replays the steps after its checkpoint deterministically on CPU and rewrites
    any snapshot among them.
    """
    step = run.state.step
    if run.dist.main and step in run.config.snapshot_steps:
        save_weights(run.raw, run.folder.snapshot_path(step), metadata={"step": str(step)})


def _save_checkpoint(run: _Run) -> None:
    """Rank 0 writes the committed state; called only after a finite-loss check."""
    if not run.dist.main:
        return
    tensors: dict[str, Tensor] = {}
    for i, p in enumerate(run.raw.parameters()):
        buf = run.optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}"] = buf
    if run.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in run.ema.state_dict().items()})
    run.folder.save_checkpoint(run.state.step, run.raw, tensors, run.state.state_dict())


def _check_finite(run: _Run) -> tuple[float, int, int]:
    """The epoch's (loss sum, errors, images) so far; stops the run at a NaN/inf loss."""
    loss_sum, errors, count, bad = run.state.running.totals(run.dist)
    if bad >= 0:
        raise NonFiniteLoss(
            f"training loss became NaN/inf at step {bad} (lr {run.state.schedule.lr(bad):.4g}); "
            f"stopped, {run.kept()}; lower --lr, add --grad-clip or --warmup-steps"
        )
    return loss_sum, errors, count


def _step(
    run: _Run, x: Tensor, y: Tensor, autocast: Any, lr: float, mix: MixDraw | None = None
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


def _run_epochs(run: _Run) -> None:
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
            _snapshot(run)
            # He et al. 2015 §4.2: warm up at warmup_lr until the training error is below the
            # threshold; read every WARMUP_CHECK_EVERY steps (the only mid-epoch sync).
            if schedule.checks_at(state.step):
                window_error = state.running.take_window(run.dist)
                if schedule.observe(state.step, window_error):
                    report.line(
                        f"step {state.step}: training error {window_error:.1f} % < "
                        f"{config.warmup_until_error:g} %, warm-up over, back to the schedule"
                    )
            _progress(run, epoch, epoch_start, images, lr)
            if state.step >= data.total_steps:
                break
            if (
                config.checkpoint_every_steps
                and state.step % config.checkpoint_every_steps == 0
                and loader.state_dict()["batch"] < len(loader)  # the epoch end saves anyway
            ):
                _check_finite(run)
                _save_checkpoint(run)
        _end_epoch(run, epoch, epoch_start, images, lr)


def _progress(run: _Run, epoch: int, epoch_start: float, images: int, lr: float) -> None:
    """Move the progress bar; about ten times an epoch, show the running numbers (rank 0)."""
    report, step = run.report, run.state.step
    if report.wants_stats and step % max(1, len(run.data.loader) // 10) == 0:
        loss_sum, errors, count, _ = run.state.running.totals(None)  # rank 0 only: local
        rate = images / max(time.perf_counter() - epoch_start, 1e-9)
        stats = (
            f"loss {loss_sum / max(count, 1):.3f} err {100 * errors / max(count, 1):.1f}% "
            f"{rate:,.0f} img/s lr {lr:.3g}"
        )
        report.step(step, epoch + 1, stats)
    else:
        report.step(step, epoch + 1)


def _end_epoch(run: _Run, epoch: int, epoch_start: float, images: int, lr: float) -> None:
    """The one sync of an epoch: finite check, evaluation, record, checkpoint, metrics."""
    config, state, data, dist = run.config, run.state, run.data, run.dist
    loss_sum, errors, count = _check_finite(run)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    epoch_time = time.perf_counter() - epoch_start
    clean = held = None
    if (epoch + 1) % config.eval_every == 0 or epoch == data.num_epochs - 1:
        sync_buffers(run.raw, dist)
        clean = run.evaluate(data.loader.images, data.loader.labels)
        held = run.evaluate(data.eval_images, data.eval_labels)
        if dist.main and (state.best_error is None or held < state.best_error):
            state.best_error = held
            save_weights(run.eval_net, run.folder.best_path)
    record = {
        "epoch": epoch + 1,
        "step": state.step,
        "lr": lr,
        "train_loss": loss_sum / max(count, 1),
        "train_error": 100.0 * errors / max(count, 1),
        "clean_train_error": clean,
        data.eval_key: held,
        "images_per_s": images / max(epoch_time, 1e-9),
        "epoch_time": epoch_time,
        "wall_time": state.wall_time(),
    }
    state.records.append(record)
    state.running.reset_epoch()
    _save_checkpoint(run)
    if dist.main:
        run.folder.append_metrics(record, run.columns())
        if run.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and value is not None:
                    run.writer.add_scalar(key, value, state.step)
    run.report.line(
        f"epoch {epoch + 1}/{data.num_epochs} step {state.step} lr {lr:.4g} "
        f"loss {record['train_loss']:.4f} train err {fmt(record['train_error'])} % "
        f"clean train err {fmt(clean)} % {data.eval_key.replace('_error', '')} err "
        f"{fmt(held)} % {record['images_per_s']:,.0f} img/s {epoch_time:.1f} s",
        always=True,
    )


# --- finish ----------------------------------------------------------------------------------


def _finish(run: _Run) -> History:
    """Final errors, checksums and result.json (written last: it marks the run as done)."""
    config, state, data, dist, folder = run.config, run.state, run.data, run.dist, run.folder
    last = state.records[-1]
    final: dict[str, Any] = {
        "status": "finished",
        "model": config.model,
        "dataset": data.ds.name,
        "params": count_params(run.raw),
        "epochs": len(state.records),
        "steps": state.step,
        "train_loss": last["train_loss"],
        "clean_train_error": last["clean_train_error"],
        data.eval_key: last[data.eval_key],
        "best_error": state.best_error,
        "warmup_end_step": state.schedule.warmup_end,
        "images_per_s": sum(r["images_per_s"] for r in state.records) / len(state.records),
        "wall_time": state.wall_time(),
        "world_size": dist.world_size,
        "weights": folder.relative(folder.weights_path),
    }
    if config.val_split:
        full = data.full
        final["test_error"] = run.evaluate(
            full.test_images.to(run.device), full.test_labels.to(run.device)
        )
    if run.ema is not None and dist.main:
        save_weights(run.ema.module, folder.ema_path)
        final["eval_weights"] = folder.relative(folder.ema_path)
    checksum = param_checksum(run.raw)
    if dist.enabled:
        sums: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(sums, checksum)
        final["rank_checksums"] = sums
    else:
        final["rank_checksums"] = [checksum]
    if dist.main:
        folder.write_result(final)
        if run.writer is not None:
            run.writer.close()
    run.report.close()
    run.report.line(
        f"finished {folder.path}: clean train error {fmt(final['clean_train_error'])} %, "
        f"test error {fmt(final.get('test_error'))} %, {final['wall_time']:.1f} s",
        always=True,
    )
    return History(folder.path, state.records, final)
