"""The CPU targets of docs/PERFORMANCE.md, measured in one run on this machine.

    python benchmarks/bench_cpu.py            # training throughput and the main job
    python benchmarks/bench_cpu.py --skip-main-job

1. Training throughput at batch 128 on CIFAR-shaped data, reslab's pipeline vs the per-sample
   DataLoader baseline (``reslab bench``), for resnet20 (target: >= 1.3x) and resnet56.
2. The main job, ``reslab degradation`` with its defaults, from an empty study folder: wall
   time (target <= 90 s) and the margins it must show (plain-deep clean training error >= 10
   points above plain-shallow; residual-deep <= residual-shallow + 1 point).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reslab.bench import BenchConfig, format_results, run_bench


def throughput(steps: int) -> None:
    for model in ("resnet20", "resnet56"):
        cfg = BenchConfig(model=model, batch_size=128, device="cpu", steps=steps)
        results = run_bench(cfg)
        print(format_results(cfg, results), "\n", flush=True)


def main_job() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "reslab", "degradation", "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        results = json.loads((out / "results.json").read_text())
    verdict = results["verdict"]
    ok = verdict["plain_gap"] >= 10 and verdict["residual_gap"] <= 1 and wall <= 90
    print(f"main job: `reslab degradation` {wall:.1f} s wall")
    for row in results["summary"]:
        print(
            f"  {row['label']:<10} train {row['clean_train_error_mean']:5.1f} ± "
            f"{row['clean_train_error_std']:.1f} %   test {row['test_error_mean']:5.1f} ± "
            f"{row['test_error_std']:.1f} %"
        )
    print(f"  verdict: {verdict['text']}")
    print(
        f"  plain gap {verdict['plain_gap']:+.1f} points (>= 10), residual gap "
        f"{verdict['residual_gap']:+.1f} points (<= 1), {wall:.0f} s (<= 90): "
        + ("all targets met" if ok else "TARGET MISSED")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per pipeline")
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or 'CPU'}"
        f" x{os.cpu_count()}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}\n"
    )
    throughput(args.steps)
    if not args.skip_main_job:
        main_job()


if __name__ == "__main__":
    main()
