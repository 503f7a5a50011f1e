"""One training run in progress: its state (:class:`Run`) and what the loop does to it at
its commit points — resume from the committed checkpoint, snapshots, checkpoints, the
finite-loss check, the end of an epoch and the finish (result.json last).

:func:`reslab.train.fit` (:mod:`reslab.train.loop`) drives one run through these, and
:func:`reslab.train.fit_pack` drives every member of a pack through the same ones, so a packed
member's folder is an ordinary run's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reslab.checks import shown
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.models import count_params
from reslab.train.config import RESUME_OVERRIDABLE, TrainConfig
from reslab.train.console import Reporter, fmt
from reslab.train.distributed import Dist, param_checksum, sync_buffers
from reslab.train.evaluate import evaluate
from reslab.train.run_folder import RunFolder
from reslab.train.runtime import Runtime
from reslab.train.session import RunData
from reslab.train.state import TrainState
from reslab.train.step import EMA, restore_momentum
from reslab.weights import load_weights, save_weights

__all__ = [
    "History",
    "NonFiniteLoss",
    "Run",
    "check_agreement",
    "check_finite",
    "end_epoch",
    "finish",
    "progress",
    "resume_run",
    "save_checkpoint",
    "snapshot",
    "trained_settings",
]


@dataclass
class History:
    """What :func:`fit` returns: the run folder, one record per epoch, and the final result."""

    run_dir: Path
    records: list[dict[str, Any]]
    final: dict[str, Any]


class NonFiniteLoss(ReslabError):
    """The training loss became NaN or inf; the message names the step and the lr."""


@dataclass
class Run:
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


# --- resume ----------------------------------------------------------------------------------


def resume_run(run: Run) -> None:
    """Load the committed checkpoint, if any, into the model, optimizer, EMA and state."""
    folder, dist = run.folder, run.dist
    checkpoint = folder.load_checkpoint(repair=dist.main)
    if checkpoint is None:
        if dist.main:  # a run killed before its first checkpoint starts over
            folder.drop_metrics()
        return
    saved, weights_path, tensors = checkpoint
    check_agreement(run, saved)
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


def trained_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide what a run trains, as JSON: every field a resume may not
    change. Each checkpoint records them; a resume compares config.json's with them."""
    values = json.loads(json.dumps(config.to_dict()))
    return {k: v for k, v in values.items() if k not in RESUME_OVERRIDABLE | {"out"}}


def check_agreement(run: Run, saved: dict[str, Any]) -> None:
    """Refuse a resume whose config.json disagrees with the checkpoint it continues.

    config.json is the run's one source of settings; an edit after a checkpoint would train on
    from it with another schedule, model or data, and write a result that contradicts both
    (issue 20: epochs lowered from 3 to 1 resumed "at step 36 of 11" and finished).
    Checkpoints from before the settings were recorded are checked for the step alone.
    """
    path, step, total = run.folder.config_path, saved["step"], run.data.total_steps
    fix = f"restore it, or start a new run with --config {path} --out NEW_FOLDER"
    recorded, now = saved.get("config") or {}, trained_settings(run.config)
    differ = [k for k in sorted(recorded) if k in now and recorded[k] != now[k]]
    if differ:
        edits = ", ".join(f"{k} {shown(recorded[k], 30)} -> {shown(now[k], 30)}" for k in differ)
        raise ConfigError(
            f"{path} was edited after the checkpoint at step {step} was written ({edits}); {fix}"
        )
    if step > total:
        raise ConfigError(
            f"{path} asks for {total} steps ({run.data.num_epochs} epochs of "
            f"{len(run.data.loader)}) but the run's checkpoint stands at step {step}; {fix}"
        )


# --- snapshots, checkpoints, the end of an epoch -----------------------------------------------


def snapshot(run: Run) -> None:
    """The weights at a chosen step, kept for probes (e.g. gradient flow over training).

    A resumed run replays the steps after its checkpoint deterministically on CPU and rewrites
    any snapshot among them.
    """
    step = run.state.step
    if run.dist.main and step in run.config.snapshot_steps:
        save_weights(run.raw, run.folder.snapshot_path(step), metadata={"step": str(step)})


def save_checkpoint(run: Run) -> None:
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
    state = {**run.state.state_dict(), "config": trained_settings(run.config)}
    run.folder.save_checkpoint(run.state.step, run.raw, tensors, state)


def check_finite(run: Run) -> tuple[float, int, int]:
    """The epoch's (loss sum, errors, images) so far; stops the run at a NaN/inf loss."""
    loss_sum, errors, count, bad = run.state.running.totals(run.dist)
    if bad >= 0:
        raise NonFiniteLoss(
            f"training loss became NaN/inf at step {bad} (lr {run.state.schedule.lr(bad):.4g}); "
            f"stopped, {run.kept()}; lower --lr, add --grad-clip or --warmup-steps"
        )
    return loss_sum, errors, count


def progress(run: Run, epoch: int, epoch_start: float, images: int, lr: float) -> None:
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


def end_epoch(run: Run, epoch: int, epoch_start: float, images: int, lr: float) -> None:
    """The one sync of an epoch: finite check, evaluation, record, checkpoint, metrics."""
    config, state, data, dist = run.config, run.state, run.data, run.dist
    loss_sum, errors, count = check_finite(run)
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
    save_checkpoint(run)
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


def finish(run: Run) -> History:
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
