"""Training and inference throughput: reslab's pipeline next to a peer-style baseline.

Both pipelines train the same network on the same CIFAR-shaped synthetic data with the same
augmentation (pad-4 random crop and horizontal flip), in one invocation:

* **reslab** — exactly what ``reslab train`` does on the device: the uint8 data lives on the
  device (:class:`reslab.data.DeviceLoader`), augmentation runs per batch as tensor ops, and the
  step is :func:`reslab.train.train_step` under the trainer's own :func:`reslab.train.setup`
  (threads, cuDNN/TF32 and denormal switches, channels_last, bf16 autocast where it helps,
  ``torch.compile`` and CUDA graphs on CUDA, a fused or multi-tensor SGD), with no host sync
  inside the loop.
* **baseline** — what most CIFAR repositories do: a ``torch.utils.data.DataLoader`` whose
  dataset pads, crops, flips and normalises one image at a time, feeding an eager fp32 NCHW loop
  that reads ``loss.item()`` every step.

Each pipeline runs in its own spawned process, so peak memory (CUDA's allocator peak, or the
process's peak RSS on CPU) belongs to it alone. Warm-up steps — where ``torch.compile`` compiles
— are timed and reported separately from the steady state.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.errors import ConfigError

if TYPE_CHECKING:
    from reslab.train import Runtime, TrainConfig

PIPELINES = ("reslab", "baseline")
# Per-channel statistics used by both pipelines (any fixed values do; these are CIFAR-10's).
_MEAN = (0.4914, 0.4822, 0.4465)
_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class BenchConfig:
    """One benchmark: a model, a batch size and a device."""

    model: str = "resnet20"  # registry name
    batch_size: int = 128  # training batch
    device: str = "auto"  # auto | cpu | cuda
    image_size: int = 32  # square input side (224 for the ImageNet nets)
    channels: int = 3  # input channels
    num_classes: int = 10  # classifier outputs
    steps: int = 30  # timed training steps
    warmup: int = 5  # untimed-for-throughput steps first (compilation happens here)
    dataset_size: int = 2048  # synthetic images held by each pipeline
    precision: str = "auto"  # reslab pipeline: auto | fp32 | bf16
    compile: bool | None = None  # reslab pipeline: None = the trainer's default for the device
    cuda_graphs: bool | None = None  # reslab pipeline: None = the trainer's default
    channels_last: bool | None = None  # reslab pipeline: None = the trainer's default
    workers: int = 2  # baseline DataLoader workers (what peer repositories use)
    eval_batch_size: int = 1024  # inference batch, both pipelines
    eval_batches: int = 5  # timed inference batches
    threads: int | None = None  # torch.set_num_threads in each pipeline process
    baseline: bool = True  # also time the baseline
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "image_size", "channels", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            raise ConfigError("--warmup must be 0 or more")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.dataset_size < self.batch_size:
            self.dataset_size = self.batch_size


@dataclass
class Measurement:
    """What one pipeline achieved."""

    pipeline: str  # reslab | baseline
    settings: str  # e.g. "bf16, channels_last, compile"
    images_per_s: float  # steady-state training throughput
    step_ms: float  # steady-state time per step
    warmup_s: float  # wall time of the warm-up steps (compilation included)
    peak_memory_mb: float  # training's CUDA allocator peak, or the process's peak RSS on CPU
    inference_images_per_s: float  # eval-mode forward throughput
    device: str  # what ran it


def _synthetic(cfg: BenchConfig) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.dataset_size, cfg.channels, cfg.image_size, cfg.image_size)
    images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, cfg.num_classes, (cfg.dataset_size,), generator=gen)
    return images, labels


def _stats(cfg: BenchConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    reps = (cfg.channels + 2) // 3
    return (_MEAN * reps)[: cfg.channels], (_STD * reps)[: cfg.channels]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _forever(loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader


def _time_steps(
    step: Callable[[], None], cfg: BenchConfig, device: torch.device
) -> tuple[float, float]:
    """(warm-up seconds, steady-state seconds) of ``cfg.warmup`` then ``cfg.steps`` steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for n in (cfg.warmup, cfg.steps):
        start = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def _inference(
    model: nn.Module,
    images: Tensor,
    cfg: BenchConfig,
    device: torch.device,
    *,
    channels_last: bool,
    amp_dtype: torch.dtype | None,
) -> float:
    from reslab.data import normalize_batch

    mean, std = _stats(cfg)
    n = min(cfg.eval_batch_size, len(images))
    x = normalize_batch(images[:n].to(device), mean, std, channels_last=channels_last)
    model.eval()
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else torch.autocast(device.type, enabled=False)
    )
    with torch.no_grad(), autocast:
        model(x)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(cfg.eval_batches):
            model(x)
        _sync(device)
    return n * cfg.eval_batches / (time.perf_counter() - start)


# --- the reslab pipeline -----------------------------------------------------------------------


def _reslab(cfg: BenchConfig) -> Measurement:
    from reslab.train import TrainConfig, pick_device, setup

    device = pick_device(cfg.device, 0)
    train_cfg = TrainConfig(
        model=cfg.model,
        dataset="synthetic",
        batch_size=cfg.batch_size,
        precision=cfg.precision,
        compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs,
        channels_last=cfg.channels_last,
        device=str(device),
        threads=cfg.threads,
        lr=0.05,
        weight_decay=1e-4,
    )
    # The trainer's own setup: the same threads, cuDNN/TF32, denormal and precision switches.
    with setup(train_cfg, device) as fast:
        return _reslab_steps(cfg, train_cfg, device, fast)


def _reslab_steps(
    cfg: BenchConfig, train_cfg: TrainConfig, device: torch.device, fast: Runtime
) -> Measurement:
    from reslab.data import DeviceLoader
    from reslab.models import create_model
    from reslab.train import autocast_context, build_optimizer, compile_mode, train_step

    images, labels = _synthetic(cfg)
    mean, std = _stats(cfg)
    loader = DeviceLoader(
        images,
        labels,
        batch_size=cfg.batch_size,
        mean=mean,
        std=std,
        device=device,
        augment="cifar",
        seed=cfg.seed,
        channels_last=fast.channels_last,
    )
    torch.manual_seed(cfg.seed)
    raw = create_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.channels)
    raw.to(device)
    if fast.channels_last:
        raw.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(train_cfg, raw, device)
    model: nn.Module = raw
    if fast.compile:
        model = torch.compile(raw, mode=compile_mode(fast.cuda_graphs))  # type: ignore[assignment]
    autocast = autocast_context(device, fast.amp_dtype)

    stream = _forever(loader)
    total = torch.zeros((), device=device)

    def step() -> None:
        x, y = next(stream)
        loss, _ = train_step(model, optimizer, x, y, autocast, cuda_graphs=fast.cuda_graphs)
        total.add_(loss.detach())  # on the device: no host sync inside the loop

    warmup_s, elapsed = _time_steps(step, cfg, device)
    peak_mb = _peak_memory_mb(device)  # training's peak, before the inference pass
    if not torch.isfinite(total):
        raise RuntimeError("the benchmark's loss became non-finite")
    settings = [
        "bf16" if fast.amp_dtype is not None else "fp32",
        "channels_last" if fast.channels_last else "NCHW",
    ]
    if fast.compile:
        settings.append("compile+cudagraphs" if fast.cuda_graphs else "compile")
    infer = _inference(
        raw, images, cfg, device, channels_last=fast.channels_last, amp_dtype=fast.amp_dtype
    )
    settings_text = ", ".join(settings) + ", device-resident data"
    return _measurement("reslab", settings_text, cfg, device, warmup_s, elapsed, peak_mb, infer)


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


def _baseline(cfg: BenchConfig) -> Measurement:
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

    warmup_s, elapsed = _time_steps(step, cfg, device)
    peak_mb = _peak_memory_mb(device)  # training's peak, before the inference pass
    infer = _inference(model, images, cfg, device, channels_last=False, amp_dtype=None)
    settings = f"fp32, NCHW, eager, DataLoader per-sample ({cfg.workers} workers)"
    return _measurement("baseline", settings, cfg, device, warmup_s, elapsed, peak_mb, infer)


def _measurement(
    pipeline: str,
    settings: str,
    cfg: BenchConfig,
    device: torch.device,
    warmup_s: float,
    elapsed: float,
    peak_mb: float,
    inference: float,
) -> Measurement:
    return Measurement(
        pipeline=pipeline,
        settings=settings,
        images_per_s=cfg.steps * cfg.batch_size / elapsed,
        step_ms=1000 * elapsed / cfg.steps,
        warmup_s=warmup_s,
        peak_memory_mb=peak_mb,
        inference_images_per_s=inference,
        device=_device_name(device),
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


# --- running -----------------------------------------------------------------------------------


def _measure(pipeline: str, cfg: BenchConfig) -> Measurement:
    """Run one pipeline (in a fresh process when called through :func:`run_bench`)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return _reslab(cfg) if pipeline == "reslab" else _baseline(cfg)


def run_bench(cfg: BenchConfig, *, isolate: bool = True) -> list[Measurement]:
    """Measure reslab's pipeline (and the baseline); each in its own process when isolated."""
    from reslab.train import pick_device

    pick_device(cfg.device, 0)  # a clear error for --device cuda without CUDA, before spawning
    pipelines = PIPELINES if cfg.baseline else PIPELINES[:1]
    if not isolate:
        return [_measure(p, cfg) for p in pipelines]
    results = []
    for pipeline in pipelines:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            results.append(pool.submit(_measure, pipeline, cfg).result())
    return results


def format_results(cfg: BenchConfig, results: list[Measurement]) -> str:
    """The table ``reslab bench`` prints, with the reslab/baseline ratios."""
    lines = [
        f"{cfg.model}, batch {cfg.batch_size}, {cfg.channels}x{cfg.image_size}x{cfg.image_size}, "
        f"{results[0].device}, torch {torch.__version__}",
        f"{'pipeline':<10}{'train img/s':>13}{'step ms':>10}{'warm-up s':>11}"
        f"{'peak MB':>10}{'infer img/s':>13}  settings",
    ]
    for r in results:
        lines.append(
            f"{r.pipeline:<10}{r.images_per_s:>13,.0f}{r.step_ms:>10.1f}{r.warmup_s:>11.1f}"
            f"{r.peak_memory_mb:>10,.0f}{r.inference_images_per_s:>13,.0f}  {r.settings}"
        )
    if len(results) == 2:
        ours, base = results
        lines.append(
            f"reslab / baseline: training {ours.images_per_s / base.images_per_s:.2f}x, "
            f"inference {ours.inference_images_per_s / base.inference_images_per_s:.2f}x"
        )
    return "\n".join(lines)


def as_dict(cfg: BenchConfig, results: list[Measurement]) -> dict[str, Any]:
    """JSON-ready record of a benchmark."""
    return {
        "config": dataclasses.asdict(cfg),
        "torch_version": str(torch.__version__),
        "results": [dataclasses.asdict(r) for r in results],
    }
