"""reslab's training step against the hand-written one, in one process (issue 22).

    python benchmarks/bench_steps.py                               # resnet20, 3x32x32
    python benchmarks/bench_steps.py --model resnet56 --size 8     # the main job's shape

`reslab bench` times each pipeline in its own process; this times the two steps side by side in
one, so what differs between processes (allocator state, where the scheduler puts them) drops
out and only the steps remain: reslab's (`DeviceLoader` with crop and flip, `build_optimizer`,
`train_step`) and the hand-written loop's (`reslab.bench_peers`: an in-memory float tensor, a
per-sample crop, a plain SGD), each on its own model from the same seed, with and without
`torch.set_flush_denormal` (which reslab's `setup` turns on). Blocks of ``--steps`` steps
alternate, the order reversing each round; it prints the median wall and CPU ms per step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import reslab  # noqa: F401  (first: passive OpenMP waiting, as in every reslab process)

# isort: split

import torch
import torch.nn.functional as F

from reslab.bench import BenchConfig, _forever, _stats, _synthetic
from reslab.bench_peers import hand_crop_flip
from reslab.cpu import cpu_summary
from reslab.data import DeviceLoader
from reslab.models import create_model
from reslab.train import TrainConfig, autocast_context, build_optimizer, train_step

Step = Callable[[], None]


def reslab_step(cfg: BenchConfig) -> Step:
    images, labels = _synthetic(cfg)
    mean, std = _stats(cfg)
    device = torch.device("cpu")
    loader = DeviceLoader(images, labels, batch_size=cfg.batch_size, mean=mean, std=std,
                          device=device, augment="cifar", seed=0, channels_last=True)  # fmt: skip
    torch.manual_seed(0)
    model = create_model(cfg.model, in_channels=cfg.channels)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(TrainConfig(lr=0.05, weight_decay=1e-4), model, device)
    stream, autocast, total = _forever(loader), autocast_context(device, None), torch.zeros(())

    def step() -> None:
        x, y = next(stream)
        loss, _ = train_step(model, optimizer, x, y, autocast)
        total.add_(loss.detach())

    return step


def hand_step(cfg: BenchConfig) -> Step:
    images, labels = _synthetic(cfg)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _stats(cfg))
    data = ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    model = create_model(cfg.model, in_channels=cfg.channels)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = cfg.dataset_size // cfg.batch_size * cfg.batch_size
    batches = _forever(torch.randperm(cfg.dataset_size, generator=gen)[:n].view(-1, cfg.batch_size))

    def step() -> None:
        idx = next(batches)
        x = hand_crop_flip(data[idx], gen)
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=32, help="32: 3x32x32; other: 1xSIZExSIZE")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    channels = 3 if args.size == 32 else 1
    cfg = BenchConfig(model=args.model, image_size=args.size, channels=channels)
    variants = {
        "reslab, flush": (reslab_step(cfg), True),
        "hand-written": (hand_step(cfg), False),
        "hand-written, flush": (hand_step(cfg), True),
        "reslab": (reslab_step(cfg), False),
    }
    for step, flush in variants.values():  # warm-up
        torch.set_flush_denormal(flush)
        step(), step()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step, flush = variants[name]
            torch.set_flush_denormal(flush)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            wall[name].append(1000 * (time.perf_counter() - start) / args.steps)
            cpu[name].append(1000 * (time.process_time() - cpu_start) / args.steps)
    torch.set_flush_denormal(False)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"{args.model}, batch {cfg.batch_size}, {channels}x{args.size}x{args.size}, "
          f"{cpu_summary()}, {args.threads} threads, {args.rounds} rounds of {args.steps} steps, "
          f"load after {' '.join(load)}")  # fmt: skip
    for name in names:
        rounds = " ".join(f"{v:.0f}" for v in wall[name])
        print(f"  {name:20} wall {statistics.median(wall[name]):7.1f} ms  "
              f"cpu {statistics.median(cpu[name]):7.1f} ms  (wall by round: {rounds})")  # fmt: skip


if __name__ == "__main__":
    main()
