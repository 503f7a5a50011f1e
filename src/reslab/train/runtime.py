"""How a run uses its machine: device, precision, compile, threads and the global torch switches.

:func:`resolve_runtime` resolves the fast path a config asks for on a device; :func:`setup`
applies the process-wide switches (threads, deterministic kernels, cuDNN/TF32, anomaly mode,
denormals) for the length of a ``with`` block and restores every one of them afterwards. The trainer
(:func:`reslab.train.fit`) and the benchmark (:mod:`reslab.bench`) both call it, so they cannot
drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from reslab.cpu import available_cores, cpu_flags, default_threads
from reslab.errors import ConfigError, ReslabError
from reslab.train.config import DEVICES, TrainConfig

__all__ = [
    "PrecisionChoice",
    "Runtime",
    "autocast_context",
    "bf16_speedup",
    "choose_cpu_precision",
    "compile_cost_note",
    "compile_mode",
    "one_cpu_thread",
    "pick_device",
    "record_threads",
    "resolve_runtime",
    "setup",
]


@dataclass(frozen=True)
class Runtime:
    """How a run uses its device. The fast path is the default; each part has a flag to turn
    it off (``--no-channels-last``, ``--precision fp32``, ``--no-compile``, ``--no-cuda-graphs``).
    """

    channels_last: bool  # NHWC activations and weights
    compile: bool  # torch.compile the model
    cuda_graphs: bool  # compile with CUDA graphs (mode reduce-overhead)
    amp_dtype: torch.dtype | None  # autocast dtype, None for fp32
    precision_note: str = ""  # why this precision, for the start banner ("" = asked for)


#: CPU flags with which oneDNN runs bf16 convolutions natively: AMX tiles (Sapphire Rapids and
#: later) and AVX-512-bf16 (Cooper Lake, Zen 4 and later). Without them it converts bf16 to fp32
#: and back around fp32 arithmetic, which is slower than fp32 alone.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The automatic CPU precision and the one-line reason the start banner shows."""

    bf16: bool
    why: str


@functools.cache
def _cpu_features() -> frozenset[str]:
    """/proc/cpuinfo's flags, or torch's own probes where that file is missing."""
    flags = cpu_flags()
    if flags:
        return flags
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return frozenset(f for f, probe in probes.items() if getattr(torch.cpu, probe, lambda: 0)())


@functools.cache
def bf16_speedup(threads: int, batch: int = 64) -> float:
    """fp32 time over bf16-autocast time of a small conv's forward and backward (32 channels,
    3x3, ``batch`` at 16x16, channels_last: a CIFAR ResNet's first stage), best of 3 each, on
    the ``threads`` torch uses now (the argument keys the cache).

    Well under 0.2 s where bf16 is native, once per process and thread count;
    :func:`choose_cpu_precision` calls it only where the CPU's flags make bf16 plausible."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 32, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def best(bf16: bool) -> float:
        times = []
        for _ in range(4):  # the first creates oneDNN's primitives: left out
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                conv(x).float().sum().backward()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(False) / best(True)


def choose_cpu_precision(
    flags: Collection[str] | None = None, speedup: Callable[[], float] | None = None
) -> PrecisionChoice:
    """bf16 autocast where the CPU runs bf16 natively *and* a probe measures it faster than
    fp32 (:func:`bf16_speedup`); fp32 elsewhere, without probing (AVX2 CPUs emulate bf16)."""
    have = _cpu_features() if flags is None else frozenset(flags)
    native = [f for f in NATIVE_BF16_FLAGS if f in have]
    if not native:
        return PrecisionChoice(False, "fp32 (auto: this CPU has no native bf16, no AVX-512-bf16 "
                               "or AMX)")  # fmt: skip
    ratio = speedup() if speedup is not None else bf16_speedup(torch.get_num_threads())
    if ratio > 1.0:
        return PrecisionChoice(
            True, f"bf16 (auto: {native[0]} on this CPU, {ratio:.1f}x fp32 in a conv probe)"
        )
    return PrecisionChoice(
        False, f"fp32 (auto: {native[0]} on this CPU, but bf16 measured {ratio:.2f}x fp32)"
    )


def resolve_runtime(config: TrainConfig, device: torch.device) -> Runtime:
    """The settings ``config`` resolves to on ``device`` (``None`` fields pick the fast path).

    * channels_last: on everywhere; tensor-core convolutions want NHWC, and on this project's
      CPU it measured 1.14-1.21x faster too (docs/PERFORMANCE.md).
    * compile: on for CUDA; off on CPU, where it paid back for resnet20 after a ~19 s compile
      but made resnet56 slower.
    * CUDA graphs: on for compiled CUDA runs. A ResNet-56 step is ~600 kernel launches around
      ~0.1 ms of arithmetic, so replaying one captured graph removes the launch-bound time.
      Off with ``accum_steps`` > 1: cudagraph trees hand the first micro-batch's gradient to
      ``.grad`` from the graph pool and later replays overwrite it (pytorch/pytorch#169545).
    * bf16 autocast: on CUDA devices that support it, and on CPUs that run bf16 natively
      (AMX, AVX-512-bf16) where a quick probe measures it faster than fp32
      (:func:`choose_cpu_precision`); with AMX tiles oneDNN's bf16 convolutions measured 2.6x
      faster for resnet20 at 32x32.
    """
    cuda = device.type == "cuda"
    use_compile = config.compile if config.compile is not None else cuda
    graphs = config.cuda_graphs if config.cuda_graphs is not None else config.accum_steps == 1
    note = ""
    if config.precision != "auto":
        bf16 = config.precision == "bf16"
    elif cuda:
        # Native bf16 tensor cores from compute capability 8.0 (Ampere); older cards emulate.
        bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    else:
        choice = choose_cpu_precision()
        bf16, note = choice.bf16, choice.why
    return Runtime(
        channels_last=config.channels_last if config.channels_last is not None else True,
        compile=use_compile,
        cuda_graphs=graphs and cuda and use_compile,
        amp_dtype=torch.bfloat16 if bf16 else None,
        precision_note=note,
    )


#: ``torch.compile`` on a CPU, measured by benchmarks/bench_compile.py on the digits' 1x8x8 at
#: batch 128, one thread, fp32 (docs/PERFORMANCE.md, "--compile on a CPU"): depth -> (a cold
#: compile's CPU seconds, eager ms per step, compiled ms per step, both CPU time). Approximate:
#: one 2-core AVX2 EPYC (depths 8 and 20 while it was busy with other jobs, 56 on it idle);
#: other depths are looked up at the nearest measured one and the note says which.
CPU_COMPILE_COST = {8: (41.0, 31.2, 35.8), 20: (64.8, 104.2, 70.1), 56: (96.2, 178.9, 178.3)}


def compile_cost_note(model: str, total_steps: int) -> str:
    """The line a CPU run prints before it compiles: what the compile will cost and after how
    many steps it pays off, if ever (:data:`CPU_COMPILE_COST`)."""
    digits = re.search(r"(\d+)$", model)
    depth = int(digits.group(1)) if digits else 20
    nearest = min(CPU_COMPILE_COST, key=lambda d: abs(d - depth))
    seconds, eager_ms, compiled_ms = CPU_COMPILE_COST[nearest]
    head = (
        f"--compile on a CPU: about {seconds:.0f} s of compiling (CPU time) before the first step "
        f"(approximate: measured for a depth-{nearest} net on 8x8 inputs, one thread, "
        "docs/PERFORMANCE.md)"
    )
    if compiled_ms >= eager_ms:
        return head + "; compiled steps measured no faster than eager there: it never pays off"
    payoff = float(f"{1000 * seconds / (eager_ms - compiled_ms):.2g}")  # measured: 2 digits
    within = "more than" if payoff > total_steps else "within"
    return (
        f"{head}; it saved {eager_ms - compiled_ms:.0f} ms a step there, so it pays off only "
        f"after about {payoff:,.0f} steps ({within} this run's {total_steps:,})"
    )


def compile_mode(cuda_graphs: bool) -> str:
    """torch.compile mode: CUDA graphs for launch-bound nets, else autotuned kernels."""
    return "reduce-overhead" if cuda_graphs else "max-autotune-no-cudagraphs"


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``dtype`` is set, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N``; under torchrun, CUDA ranks use their local rank."""
    if name not in DEVICES and re.fullmatch(r"cuda:\d+", name) is None:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReslabError(
            f"--device {name} was asked for but CUDA is not available (no GPU or a CPU-only "
            "PyTorch build); use --device cpu"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        index = local_rank
    elif ":" in name:
        index = int(name.split(":")[1])
    else:  # the current device: a study worker sets it to its own GPU
        index = torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ReslabError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


@contextlib.contextmanager
def setup(config: TrainConfig, device: torch.device) -> Iterator[Runtime]:
    """Apply ``config``'s process-wide torch switches on ``device``; restore them all on exit.

    Yields the :class:`Runtime` (precision, compile, channels_last) the run uses.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_anomaly_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    cuda = device.type == "cuda"
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        elif not cuda:
            # Default: torch's count (or the caller's own torch.set_num_threads), cut to the
            # cores this process may use — torch counts the affinity mask but not a cgroup CPU
            # quota — and to those other processes leave free: more threads than free cores
            # is what collapses under load (reslab.cpu). record_threads keeps the choice.
            torch.set_num_threads(default_threads(torch.get_num_threads(), available_cores()))
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if cuda:
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        torch.autograd.set_detect_anomaly(config.detect_anomaly)
        if not cuda:
            # Deep plain nets produce denormal activations and gradients, which x86 CPUs
            # process tens of times slower; flushing them to zero is invisible at fp32 training
            # precision.
            torch.set_flush_denormal(True)
        yield resolve_runtime(config, device)
    finally:
        torch.set_flush_denormal(False)  # torch has no getter; off is its default
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.autograd.set_detect_anomaly(saved[2])
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved[3:]


def record_threads(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``config`` with the thread count :func:`setup` chose for a CPU run that named none.

    The count changes the arithmetic (how oneDNN splits its reductions), and the default
    reads the load, so the run folder's config.json keeps it: a resume, or a rerun with
    ``--config``, trains with the same count whatever the machine is doing then.
    """
    if config.threads is not None or device.type != "cpu":
        return config
    return dataclasses.replace(config, threads=torch.get_num_threads())


@contextlib.contextmanager
def one_cpu_thread(device: torch.device, small: bool = True) -> Iterator[None]:
    """One intra-op CPU thread for the block when ``small`` (the count restored after): the
    operations of a small net on small images are too small to split, and two threads of one
    process on a busy 2-core machine wait on each other (the default study's probes at load 6:
    239 s with two threads, 18.8 s with one, docs/PERFORMANCE.md). One count, whatever the
    load, keeps the measurements reproducible to the bit."""
    before = torch.get_num_threads()
    if small and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
