"""Training and inference throughput: reslab's pipeline next to two peers.

The three pipelines train the same network on the same CIFAR-shaped synthetic data with the
same augmentation (pad-4 random crop and horizontal flip; ``augment=False`` leaves it out of
reslab's and the hand-written loop alike), with the same thread count, in one invocation:

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

import contextlib
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
from torch import Tensor, nn

from reslab.cpu import cpu_summary
from reslab.errors import ConfigError

if TYPE_CHECKING:
    from reslab.train import Runtime, TrainConfig

PIPELINES = ("reslab", "hand-written", "baseline")
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
    threads: int | None = None  # torch threads in every pipeline (None: reslab's default, once)
    baseline: bool = True  # also time the DataLoader baseline
    hand_written: bool = True  # also time the hand-written in-memory loop
    augment: bool = True  # crop+flip in reslab's and the hand-written pipeline (baseline: always)
    rounds: int = 1  # each pipeline this many times, alternating; the table gives medians
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
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")
        if self.dataset_size < self.batch_size:
            self.dataset_size = self.batch_size


@dataclass
class Measurement:
    """What one pipeline achieved."""

    pipeline: str  # reslab | hand-written | baseline
    settings: str  # e.g. "bf16, channels_last, compile"
    images_per_s: float  # steady-state training throughput
    step_ms: float  # steady-state time per step
    warmup_s: float  # wall time of the warm-up steps (compilation included)
    peak_memory_mb: float  # training's CUDA allocator peak, or the process's peak RSS on CPU
    inference_images_per_s: float  # eval-mode forward throughput
    device: str  # what ran it
    # CPU time of the pipeline's process per steady-state step, all its threads (not the
    # baseline's DataLoader workers): what a step cost whatever else the machine runs.
    step_cpu_ms: float = 0.0
    rounds_images_per_s: list[float] = dataclasses.field(default_factory=list)  # each round's


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
) -> tuple[float, float, float]:
    """(warm-up seconds, steady-state seconds, steady-state CPU seconds of this process) of
    ``cfg.warmup`` then ``cfg.steps`` steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for n in (cfg.warmup, cfg.steps):
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[0], times[1], time.process_time() - cpu


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


def reslab_step(
    cfg: BenchConfig, train_cfg: TrainConfig, device: torch.device, fast: Runtime
) -> tuple[Callable[[], None], nn.Module, Tensor]:
    """One training step of reslab's pipeline, ready to call (inside :func:`reslab.train.setup`,
    whose runtime is ``fast``): its model, and the loss summed on the device."""
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
        augment="cifar" if cfg.augment else "none",
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

    return step, raw, total


def _reslab_steps(
    cfg: BenchConfig, train_cfg: TrainConfig, device: torch.device, fast: Runtime
) -> Measurement:
    step, raw, total = reslab_step(cfg, train_cfg, device, fast)
    images, _ = _synthetic(cfg)
    warmup_s, elapsed, cpu_s = _time_steps(step, cfg, device)
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
    settings_text = ", ".join(settings) + ", device-resident data" + _augment_note(cfg)
    return _measurement(
        "reslab", settings_text, cfg, device, (warmup_s, elapsed, cpu_s), peak_mb, infer
    )


def _measurement(
    pipeline: str,
    settings: str,
    cfg: BenchConfig,
    device: torch.device,
    times: tuple[float, float, float],
    peak_mb: float,
    inference: float,
) -> Measurement:
    warmup_s, elapsed, cpu_s = times
    return Measurement(
        pipeline=pipeline,
        settings=settings,
        images_per_s=cfg.steps * cfg.batch_size / elapsed,
        step_ms=1000 * elapsed / cfg.steps,
        warmup_s=warmup_s,
        peak_memory_mb=peak_mb,
        inference_images_per_s=inference,
        device=_device_name(device),
        step_cpu_ms=1000 * cpu_s / cfg.steps,
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_summary()}, {torch.get_num_threads()} threads"


def _augment_note(cfg: BenchConfig) -> str:
    return ", crop+flip" if cfg.augment else ", no augmentation"


# --- running -----------------------------------------------------------------------------------


def _measure(pipeline: str, cfg: BenchConfig) -> Measurement:
    """Run one pipeline (in a fresh process when called through :func:`run_bench`)."""
    from reslab.bench_peers import baseline, hand_written

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if pipeline == "reslab":
        return _reslab(cfg)
    return hand_written(cfg) if pipeline == "hand-written" else baseline(cfg)


def pipelines_of(cfg: BenchConfig) -> list[str]:
    """The pipelines ``cfg`` times, reslab first."""
    on = {"reslab": True, "hand-written": cfg.hand_written, "baseline": cfg.baseline}
    return [p for p in PIPELINES if on[p]]


def resolved_threads(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with the thread count every pipeline uses: the one asked for, else the count
    reslab's own setup picks on a CPU (torch's, cut to the cores free now), read once here so
    no pipeline gets more threads than another."""
    from reslab.cpu import available_cores, default_threads
    from reslab.train import pick_device

    if cfg.threads is not None or pick_device(cfg.device, 0).type != "cpu":
        return cfg
    threads = default_threads(torch.get_num_threads(), available_cores())
    return dataclasses.replace(cfg, threads=threads)


def run_bench(cfg: BenchConfig, *, isolate: bool = True) -> list[Measurement]:
    """Measure reslab's pipeline and its peers, ``cfg.rounds`` times each, alternating.

    Isolated, each pipeline has its own spawned process for all its rounds (its peak memory is
    its own, and imports are paid once); round r runs the pipelines in reverse order when r is
    odd, so a drift in the machine's load does not favour whichever runs first.
    """
    from reslab.train import pick_device

    pick_device(cfg.device, 0)  # a clear error for --device cuda without CUDA, before spawning
    cfg = resolved_threads(cfg)
    names = pipelines_of(cfg)
    runs: dict[str, list[Measurement]] = {p: [] for p in names}
    with contextlib.ExitStack() as stack:
        pools = {
            p: stack.enter_context(ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")))
            for p in (names if isolate else [])
        }
        for r in range(cfg.rounds):
            for p in names if r % 2 == 0 else names[::-1]:
                if isolate:
                    runs[p].append(pools[p].submit(_measure, p, cfg).result())
                else:
                    runs[p].append(_measure(p, cfg))
    return [combine(runs[p]) for p in names]


def combine(rounds: list[Measurement]) -> Measurement:
    """One row for a pipeline's rounds: median throughputs, the first (coldest) warm-up, the
    highest peak memory, and every round's training throughput."""
    train = [m.images_per_s for m in rounds]
    mid = sorted(rounds, key=lambda m: m.images_per_s)[len(rounds) // 2]
    return dataclasses.replace(
        mid,
        warmup_s=rounds[0].warmup_s,
        peak_memory_mb=max(m.peak_memory_mb for m in rounds),
        inference_images_per_s=float(np.median([m.inference_images_per_s for m in rounds])),
        step_cpu_ms=float(np.median([m.step_cpu_ms for m in rounds])),
        rounds_images_per_s=train,
    )


def ratios(results: list[Measurement]) -> dict[str, dict[str, Any]]:
    """reslab over each peer: training (the medians' ratio, each round's pair's, and the peer's
    CPU time per step over reslab's, which a busy machine disturbs less) and inference."""
    by = {r.pipeline: r for r in results}
    ours = by.get("reslab")
    out: dict[str, dict[str, Any]] = {}
    for name, peer in by.items():
        if ours is None or name == "reslab":
            continue
        pairs = zip(ours.rounds_images_per_s, peer.rounds_images_per_s, strict=False)
        out[name] = {
            "training": ours.images_per_s / peer.images_per_s,
            "training_rounds": [a / b for a, b in pairs],
            "inference": ours.inference_images_per_s / peer.inference_images_per_s,
        }
        if name != "baseline" and ours.step_cpu_ms > 0:  # its loader workers' CPU is not seen
            out[name]["training_cpu"] = peer.step_cpu_ms / ours.step_cpu_ms
    return out


def format_results(cfg: BenchConfig, results: list[Measurement]) -> str:
    """The table ``reslab bench`` prints, with reslab's ratios to each peer."""
    rounds = f", median of {cfg.rounds} alternating rounds" if cfg.rounds > 1 else ""
    lines = [
        f"{cfg.model}, batch {cfg.batch_size}, {cfg.channels}x{cfg.image_size}x{cfg.image_size}, "
        f"{results[0].device}, torch {torch.__version__}{rounds}",
        f"{'pipeline':<13}{'train img/s':>12}{'step ms':>10}{'cpu ms':>9}{'warm-up s':>10}"
        f"{'peak MB':>9}{'infer img/s':>12}  settings",
    ]
    for r in results:
        lines.append(
            f"{r.pipeline:<13}{r.images_per_s:>12,.0f}{r.step_ms:>10.1f}{r.step_cpu_ms:>9.1f}"
            f"{r.warmup_s:>10.1f}{r.peak_memory_mb:>9,.0f}{r.inference_images_per_s:>12,.0f}  "
            f"{r.settings}"
        )
    for name, ratio in ratios(results).items():
        each = ""
        if len(ratio["training_rounds"]) > 1:
            each = " (rounds: " + " ".join(f"{x:.2f}" for x in ratio["training_rounds"]) + ")"
        cpu = ratio.get("training_cpu")
        by_cpu = f", by CPU time per step {cpu:.2f}x" if cpu is not None else ""
        lines.append(
            f"reslab / {name}: training {ratio['training']:.2f}x{each}{by_cpu}, "
            f"inference {ratio['inference']:.2f}x"
        )
    return "\n".join(lines)


def as_dict(cfg: BenchConfig, results: list[Measurement]) -> dict[str, Any]:
    """JSON-ready record of a benchmark."""
    return {
        "config": dataclasses.asdict(cfg),
        "torch_version": str(torch.__version__),
        "results": [dataclasses.asdict(r) for r in results],
        "ratios": ratios(results),
    }
