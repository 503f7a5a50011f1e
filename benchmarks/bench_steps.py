"""reslab's training step against the hand-written one, in one process (issue 22).

    python benchmarks/bench_steps.py                               # resnet20, 3x32x32
    python benchmarks/bench_steps.py --model resnet56 --size 8     # the main job's shape

`reslab bench` times each pipeline in its own process; this times the two steps side by side in
one, so what differs between processes (allocator state, where the scheduler puts them) drops
out and only the steps remain: reslab's (`DeviceLoader` with crop and flip, `build_optimizer`,
`train_step`: `reslab.bench.reslab_step`) and the hand-written loop's
(`reslab.bench_peers.hand_written_step`: an in-memory float tensor, a per-sample crop, a plain
SGD), each on its own model from the same seed, fp32, with and without
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

from reslab.bench import BenchConfig, reslab_step
from reslab.bench_peers import hand_written_step
from reslab.cpu import cpu_summary
from reslab.train import TrainConfig, resolve_runtime

Step = Callable[[], None]


def steps(cfg: BenchConfig) -> dict[str, tuple[Step, bool]]:
    """The four variants: name -> (a step, whether denormals are flushed around it)."""
    device = torch.device("cpu")
    train_cfg = TrainConfig(model=cfg.model, dataset="synthetic", batch_size=cfg.batch_size,
                            precision="fp32", device="cpu", threads=cfg.threads, lr=0.05,
                            weight_decay=1e-4)  # fmt: skip
    fast = resolve_runtime(train_cfg, device)  # what `reslab.train.setup` yields

    def ours() -> Step:
        return reslab_step(cfg, train_cfg, device, fast)[0]

    def hand() -> Step:
        return hand_written_step(cfg, device, bf16=False)[0]

    return {"reslab, flush": (ours(), True), "hand-written": (hand(), False),
            "hand-written, flush": (hand(), True), "reslab": (ours(), False)}  # fmt: skip


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
    cfg = BenchConfig(
        model=args.model, image_size=args.size, channels=channels, threads=args.threads
    )
    variants = steps(cfg)
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
