"""``reslab bench``: training and inference throughput, reslab vs two peers (a hand-written
in-memory loop and a per-sample DataLoader baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reslab.checks import Bounds, conform, max_threads


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="training/inference images/s, step time and peak memory, next to two peers",
        description="Time reslab's training pipeline, a hand-written eager loop over an "
        "in-memory tensor (channels_last, reslab's precision) and a peer-style baseline "
        "(per-sample DataLoader, eager fp32) on the same model, batch, threads and device, in "
        "one run.",
    )
    p.add_argument("--model", default="resnet20", help="registry name (default resnet20)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--image-size", type=int, default=32, help="input side (224 for ImageNet)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps, timed apart")
    p.add_argument("--precision", default="auto", help="reslab pipeline: auto | fp32 | bf16")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reslab pipeline: torch.compile (default: on for CUDA, off on CPU)",
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reslab pipeline: CUDA graphs when compiling (default on for CUDA)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reslab pipeline: NHWC memory format (default on)",
    )
    p.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads per pipeline")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the DataLoader baseline (default on)",
    )
    p.add_argument(
        "--hand-written",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the hand-written in-memory loop (default on)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="crop+flip in reslab's and the hand-written loop (default on; the baseline always)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each pipeline this many times, alternating; report medians (default 1)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=_cmd_bench)


# Every number `reslab bench` takes, bounded (reslab.checks) before anything is built.
_BOUNDS = {
    "batch_size": Bounds(int, 1, 4096),
    "image_size": Bounds(int, 1, 512),
    "steps": Bounds(int, 1, 100_000),
    "warmup": Bounds(int, 0, 100_000),
    "workers": Bounds(int, 0, max_threads),
    "threads": Bounds(int, 1, max_threads),
    "rounds": Bounds(int, 1, 100),
}


def _cmd_bench(args: argparse.Namespace) -> int:
    from reslab.bench import BenchConfig, as_dict, format_results, run_bench
    from reslab.fileio import atomic_write_json, output_kind
    from reslab.models import model_layout

    for name, bounds in _BOUNDS.items():
        if getattr(args, name) is not None:
            bounds.check("--" + name.replace("_", "-"), getattr(args, name))
    conform("--model", args.model, str)
    model_layout(args.model)  # a bad or oversized name, refused before timing anything

    if args.json:
        output_kind(Path(args.json))  # a directory or a device is refused before the work
    cfg = BenchConfig(
        model=args.model,
        batch_size=args.batch_size,
        device=args.device,
        image_size=args.image_size,
        steps=args.steps,
        warmup=args.warmup,
        precision=args.precision,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        channels_last=args.channels_last,
        workers=args.workers,
        threads=args.threads,
        baseline=args.baseline,
        hand_written=args.hand_written,
        augment=args.augment,
        rounds=args.rounds,
    )
    results = run_bench(cfg)
    print(format_results(cfg, results))
    if args.json:
        atomic_write_json(args.json, as_dict(cfg, results))
    return 0
