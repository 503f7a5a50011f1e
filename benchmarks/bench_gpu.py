"""The GPU targets of docs/PERFORMANCE.md, measured in one prepared run on one GPU.

    python benchmarks/bench_gpu.py --json gpu.json

Targets (one H100, bf16, CIFAR-shaped synthetic data unless noted):
  resnet56 batch 128 >= 16,000 img/s and >= 4x the baseline; resnet56 batch 512 >= 30,000;
  resnet20 batch 128 >= 28,000; resnet50 at 224 px batch 256 >= 7,000.
Each case runs reslab's pipeline (the trainer's defaults for CUDA: data on the device,
channels_last, bf16, torch.compile with CUDA graphs for the CIFAR nets) in its own process; the
baseline (per-sample DataLoader, eager fp32) is timed for the first case only, to save device
time. Compile time is reported apart from the steady state.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reslab.bench import BenchConfig, as_dict, format_results, run_bench

CASES = [
    # (model, batch, image size, target img/s, with baseline, compile with CUDA graphs)
    ("resnet56", 128, 32, 16_000, True, True),
    ("resnet56", 512, 32, 30_000, False, True),
    ("resnet20", 128, 32, 28_000, False, True),
    # Large images: compute-bound, so autotuned kernels matter more than launch overhead.
    ("resnet50", 256, 224, 7_000, False, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per case")
    parser.add_argument("--only", default=None, help="comma-separated models to run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    records = []
    for model, batch, size, target, baseline, graphs in CASES:
        if args.only and model not in args.only.split(","):
            continue
        cfg = BenchConfig(
            model=model,
            batch_size=batch,
            image_size=size,
            num_classes=1000 if size == 224 else 10,
            device="cuda",
            steps=args.steps if size == 32 else max(20, args.steps // 4),
            warmup=15,  # compilation and CUDA-graph capture happen in the first steps
            dataset_size=max(4 * batch, 2048) if size == 32 else 2 * batch,
            cuda_graphs=graphs,
            workers=8,
            eval_batch_size=1024 if size == 32 else 256,
            baseline=baseline,
        )
        start = time.perf_counter()
        results = run_bench(cfg)
        ours = results[0].images_per_s
        verdict = "meets" if ours >= target else "MISSES"
        print(format_results(cfg, results))
        print(f"target {target:,} img/s: {verdict} ({time.perf_counter() - start:.0f} s)\n")
        records.append({**as_dict(cfg, results), "target": target, "meets": ours >= target})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
