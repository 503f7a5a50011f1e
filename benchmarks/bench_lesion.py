"""The lesion study's measurement, before and after shared prefixes, on one machine.

    python benchmarks/bench_lesion.py                        # ResNet-56, 10,000 32x32 images
    python benchmarks/bench_lesion.py --images 2000 --before-images 500

Times :func:`reslab.measure.lesion.lesion_net` with the study's defaults (5 draws per k, up to
12 k) on a ResNet-56 with random BN statistics and CIFAR-shaped random images (the data set
does not change the cost; no download), two ways:

* **before**: every lesion applied and the whole net run over the images (an error function,
  which is how the study measured until now), on ``--before-images`` images: its cost is
  linear in the images, so it is also extrapolated to ``--images``;
* **after**: :class:`~reslab.measure.lesion.Top1Error`, the input of every block recorded once
  per batch and each lesion run from its first changed block, on ``--images`` images.

Both are run on the first ``--before-images`` images and must give the same numbers; the
script prints the times, the ratio and whether the results are equal, then exits 1 if not.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from torch import nn

from reslab.cpu import cpu_summary
from reslab.measure.lesion import Top1Error, lesion_net
from reslab.models import create_model


def _net(name: str, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # not identities: a trained net's are not either
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _images(n: int, side: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, side, side, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def _timed(model: nn.Module, error: Any, sample: torch.Tensor, args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = lesion_net(model, error, sample, draws=args.draws)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--before-images", type=int, default=500)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _net(args.model, args.channels_last)
    x, y = _images(args.images, args.side, args.channels_last)
    n = min(args.before_images, args.images)
    print(
        f"{cpu_summary()}, torch {torch.__version__}, "
        f"{args.threads} threads, load {os.getloadavg()[0]:.2f}, {args.model} "
        f"{args.side}x{args.side}, draws {args.draws}",
        flush=True,
    )
    subset = Top1Error(x[:n], y[:n])
    before, slow = _timed(model, lambda m: subset(m), x[:1], args)
    after_n, fast_n = _timed(model, subset, x[:1], args)
    print(
        f"{n} images: before {before:.1f} s, after {after_n:.1f} s, "
        f"{before / after_n:.2f}x, results equal: {slow == fast_n}",
        flush=True,
    )
    if args.images > n:
        after, _ = _timed(model, Top1Error(x, y), x[:1], args)
        print(
            f"{args.images} images: after {after:.1f} s; before, extrapolated "
            f"{before * args.images / n:.0f} s",
            flush=True,
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    if slow != fast_n:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
