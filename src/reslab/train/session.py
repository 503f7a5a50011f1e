"""What a training session is made of: its data on the device, its model, its claimed folder.

:func:`reslab.train.fit` calls these in order before the first step (see
:mod:`reslab.train.loop`); each is a plain function of the config so the order of RNG draws,
and with it every weight, is fixed by the loop alone.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reslab import checks
from reslab.data import Dataset, DeviceLoader, holdout, load_dataset
from reslab.errors import ConfigError, ReslabError
from reslab.models import create_model, model_layout
from reslab.models.counting import training_bytes
from reslab.models.resnet import ResNetLayout
from reslab.train.config import TrainConfig, model_options
from reslab.train.distributed import Dist
from reslab.train.run_folder import RunFolder, RunLock
from reslab.train.runtime import Runtime, compile_mode

__all__ = ["RunData", "build_model", "check_memory", "claim_folder", "load_data", "wrap_model"]


@dataclass
class RunData:
    """The splits a run trains and evaluates on, already on its device."""

    ds: Dataset  # the training dataset (a held-out split removed when val_split is set)
    full: Dataset  # the dataset as loaded (its test split is scored at the end)
    eval_key: str  # val_error or test_error: what the held-out error is called
    loader: DeviceLoader  # the training batches
    eval_images: Tensor  # the held-out split, on the device
    eval_labels: Tensor
    total_steps: int
    num_epochs: int


def load_data(config: TrainConfig, dist: Dist, device: torch.device, fast: Runtime) -> RunData:
    full = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    # One fixed held-out split: every seed trains on the same images.
    ds = holdout(full, config.val_split, seed=0) if config.val_split else full
    if config.batch_size > len(ds.train_labels):
        n_train = len(ds.train_labels)
        raise ConfigError(
            f"--batch-size {config.batch_size} is more than the {n_train:,} training images of "
            f"{ds.name}; use --batch-size {n_train} or less"
        )
    loader = DeviceLoader(
        ds.train_images,
        ds.train_labels,
        batch_size=config.batch_size // dist.world_size,  # batch_size is the global batch
        mean=ds.mean,
        std=ds.std,
        device=device,
        augment=config.augment or ds.augment,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=fast.channels_last,
    )
    total_steps = config.steps or config.epochs * len(loader)
    return RunData(
        ds=ds,
        full=full,
        eval_key="val_error" if config.val_split else "test_error",
        loader=loader,
        eval_images=ds.test_images.to(device),
        eval_labels=ds.test_labels.to(device),
        total_steps=total_steps,
        num_epochs=math.ceil(total_steps / len(loader)),
    )


def model_kwargs(config: TrainConfig, num_classes: int, in_channels: int) -> dict[str, Any]:
    """``create_model``'s keyword arguments for the config's net (options it leaves unset are
    not passed, so each model keeps its own defaults)."""
    return {"num_classes": num_classes, "in_channels": in_channels, **model_options(config)}


def build_model(
    config: TrainConfig, ds: Dataset, dist: Dist, device: torch.device, fast: Runtime
) -> nn.Module:
    """The net the config names, sized for ``ds``, on ``device`` in the run's memory format."""
    kwargs = model_kwargs(config, ds.num_classes, ds.in_channels)
    check_memory(config, model_layout(config.model, **kwargs), ds, dist, device)
    raw = create_model(config.model, **kwargs)
    if config.sync_bn and dist.enabled and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel")
    if config.sync_bn and dist.enabled:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw.to(device)
    if fast.channels_last:
        raw.to(memory_format=torch.channels_last)
    return raw


def check_memory(
    config: TrainConfig, layout: ResNetLayout, ds: Dataset, dist: Dist, device: torch.device
) -> None:
    """Refuse, before building, a net × batch whose training step needs more memory than the
    device has (:func:`reslab.models.counting.training_bytes`), naming a batch that fits."""
    batch = max(config.batch_size // dist.world_size, 1)
    size = tuple(ds.train_images.shape[1:])
    need = training_bytes(layout, batch, size)
    have, where = None, "this machine"
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[0], str(device)
    elif (have := checks.budget.available_memory()) is None:
        return
    per_image = (training_bytes(layout, 2, size) - training_bytes(layout, 1, size)) or 1
    fits = (have - training_bytes(layout, 0, size)) // per_image * dist.world_size
    fix = f"use --batch-size {fits} or less" if fits >= 1 else "use a smaller --model or --width"
    checks.check_memory(
        need,
        f"training {config.model} at --batch-size {config.batch_size}",
        fix,
        have=have,
        where=where,
        error=ConfigError,
    )


def claim_folder(
    folder: RunFolder,
    dist: Dist,
    resume: bool,
    config: TrainConfig,
    explicit: Sequence[str] | None,
) -> RunLock:
    """Lock the run folder and write config.json (rank 0 decides, every rank learns the verdict)."""
    lock = RunLock(folder.path)
    error: str | None = None
    if dist.main:
        try:
            lock.acquire()
            if folder.has_run() and not resume:
                raise ReslabError(
                    f"run folder {folder.path} already holds a run; pass --resume "
                    f"{folder.path} to continue it, or choose another --out"
                )
            elif not folder.config_path.is_file():
                folder.write_config(config, explicit)
        except ReslabError as exc:
            lock.release()
            error = str(exc)
        except BaseException:
            lock.release()
            raise
    dist.agree(error)
    return lock


def wrap_model(raw: nn.Module, dist: Dist, device: torch.device, fast: Runtime) -> nn.Module:
    """The module the steps call: DDP across ranks, then torch.compile."""
    model = raw
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if fast.compile:
        # Runs of a study share this process: forget earlier models' graphs so the recompile
        # limit is not reached. Compiling the DDP wrapper keeps its comm/compute overlap.
        torch._dynamo.reset()
        model = typing.cast(nn.Module, torch.compile(model, mode=compile_mode(fast.cuda_graphs)))
    return model
