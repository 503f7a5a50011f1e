"""reslab's pipeline against the hand-written loop and the DataLoader baseline (issue 22).

    python benchmarks/bench_peers.py                      # 3 shapes x fp32/bf16, 3 rounds each
    python benchmarks/bench_peers.py --rounds 5 --steps 20 --precisions fp32
    python benchmarks/bench_peers.py --no-augment         # augmentation off in reslab and hand

The shapes: ResNet-20 and ResNet-56 at 3x32x32, and ResNet-56 at 1x8x8 (the main job's digits),
batch 128, the same threads in every pipeline (`--threads`, default 2). Each table is one
`reslab bench` (`reslab.bench.run_bench`): each pipeline in its own process, rounds alternating
the order; the ratios of each round's pair and of CPU time per step (less disturbed by other
processes than wall time) are printed under each table, with `/proc/loadavg` before it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from reslab.bench import BenchConfig, as_dict, format_results, run_bench
from reslab.cpu import cpu_summary

SHAPES = (("resnet20", 3, 32), ("resnet56", 3, 32), ("resnet56", 1, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", default=None, help="also write every table's record here")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_summary()} x{os.cpu_count()}\n"
    )
    records = []
    for precision in args.precisions.split(","):
        for model, channels, size in SHAPES:
            cfg = BenchConfig(
                model=model,
                channels=channels,
                image_size=size,
                device="cpu",
                steps=args.steps,
                warmup=args.warmup,
                precision=precision,
                threads=args.threads,
                augment=args.augment,
                rounds=args.rounds,
                eval_batches=2,
                eval_batch_size=512,
            )
            load = Path("/proc/loadavg").read_text().split()[:3]
            results = run_bench(cfg)
            print(f"load {' '.join(load)}\n{format_results(cfg, results)}\n", flush=True)
            records.append(as_dict(cfg, results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
