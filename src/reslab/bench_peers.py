"""reslab's two peers in ``reslab bench``: the per-sample DataLoader baseline and the hand-written
in-memory loop. Each is what a user writes without reslab, kept deliberately plain: the point of
the benchmark is to compare reslab's trainer with them, not to tune them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.bench import (
    _MEAN,
    _STD,
    BenchConfig,
    Measurement,
    _augment_note,
    _forever,
    _inference,
    _measurement,
    _peak_memory_mb,
    _stats,
    _synthetic,
    _time_steps,
)

__all__ = ["PerSampleCifar", "baseline", "hand_written", "hand_written_step"]

# --- the hand-written loop ---------------------------------------------------------------------


def _peer_bf16(cfg: BenchConfig, device: torch.device) -> bool:
    """The precision reslab's pipeline runs in, so the two compare like with like."""
    from reslab.train import TrainConfig, resolve_runtime

    return resolve_runtime(TrainConfig(precision=cfg.precision), device).amp_dtype is not None


def hand_crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Pad-4 random crop and horizontal flip of a batch, as a user writes it by hand."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, b), generator=generator).tolist()
    x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last)


def hand_written_step(
    cfg: BenchConfig, device: torch.device, bf16: bool
) -> tuple[Callable[[], None], nn.Module]:
    """One training step of the hand-written loop (and its model), ready to call."""
    from reslab.models import create_model

    images, labels = _synthetic(cfg)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _stats(cfg))
    data = ((images.float() / 255 - mean) / std).to(device)
    data = data.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.channels)
    model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.dataset_size // cfg.batch_size * cfg.batch_size
    order = torch.randperm(cfg.dataset_size, generator=gen)[:n].view(-1, cfg.batch_size)
    batches = _forever(order.to(device))  # one shuffle, its rows the batches

    def step() -> None:
        idx = next(batches)
        x, y = data[idx], labels[idx]
        if cfg.augment:
            x = hand_crop_flip(x, gen)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, model


def hand_written(cfg: BenchConfig) -> Measurement:
    """The loop of the issue's author: data as one normalised in-memory tensor, channels_last,
    eager, bf16 autocast when reslab trains in bf16, a plain SGD, no host sync."""
    from reslab.train import pick_device

    device = pick_device(cfg.device, 0)
    bf16 = _peer_bf16(cfg, device)
    step, model = hand_written_step(cfg, device, bf16)
    times = _time_steps(step, cfg, device)
    peak_mb = _peak_memory_mb(device)
    amp = torch.bfloat16 if bf16 else None
    images, _ = _synthetic(cfg)
    infer = _inference(model, images, cfg, device, channels_last=True, amp_dtype=amp)
    settings = (
        f"{'bf16 autocast' if bf16 else 'fp32'}, channels_last, eager, in-memory float tensor"
        + _augment_note(cfg)
    )
    return _measurement("hand-written", settings, cfg, device, times, peak_mb, infer)


# --- the baseline ------------------------------------------------------------------------------


class PerSampleCifar(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """A dataset that augments one image at a time, as torchvision-style transforms do."""

    def __init__(self, images: Tensor, labels: Tensor, seed: int) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as PIL/ndarray data
        self.labels = labels.tolist()
        self.mean = np.array(_MEAN * 2, dtype=np.float32)[: self.images.shape[-1]]
        self.std = np.array(_STD * 2, dtype=np.float32)[: self.images.shape[-1]]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        h, w = img.shape[:2]
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))  # RandomCrop(size, padding=4)
        top, left = self.rng.integers(0, 9, size=2)
        img = padded[top : top + h, left : left + w]
        if self.rng.random() < 0.5:  # RandomHorizontalFlip()
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255  # ToTensor
        return (x - torch.from_numpy(self.mean)[:, None, None]) / torch.from_numpy(self.std)[
            :, None, None
        ], self.labels[i]  # Normalize


def baseline(cfg: BenchConfig) -> Measurement:
    """Most CIFAR repositories' loop: a per-sample DataLoader, eager fp32 NCHW, loss.item()."""
    from reslab.models import create_model
    from reslab.train import pick_device

    device = pick_device(cfg.device, 0)
    images, labels = _synthetic(cfg)
    data = PerSampleCifar(images, labels, cfg.seed)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.workers > 0,
    )
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.channels)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    stream = _forever(loader)

    def step() -> None:
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the per-step logging read most training loops do

    times = _time_steps(step, cfg, device)
    peak_mb = _peak_memory_mb(device)  # training's peak, before the inference pass
    infer = _inference(model, images, cfg, device, channels_last=False, amp_dtype=None)
    settings = f"fp32, NCHW, eager, DataLoader per-sample ({cfg.workers} workers)"
    return _measurement("baseline", settings, cfg, device, times, peak_mb, infer)
