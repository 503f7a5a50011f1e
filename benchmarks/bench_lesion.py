"""The lesion study's measurement before and after fast inference, on one machine.

    python benchmarks/bench_lesion.py --images 200 --rounds 2      # before vs after, alternated
    python benchmarks/bench_lesion.py --pieces                      # each piece alone
    python benchmarks/bench_lesion.py --bf16 --images 200 --draws 2 # fp32 vs bf16 lesion errors

A ResNet-56 with random BN statistics and CIFAR-shaped random images (the data set does not
change the cost; no download); :func:`reslab.measure.lesion.study_lesions` with the study's
defaults (5 draws per k, up to 12 k: 148 lesions). CPU time is the process's, all threads:
other jobs on the machine inflate wall time far more than CPU time, so the CPU figures are the
ones to compare, and before and after alternate round by round.

* default: **before**, :class:`~reslab.measure.lesion.Top1Error` as main had it (``fast=False``:
  shared prefixes, the unfolded net, NCHW, the batch ``cache_bytes`` allows), against
  **after** (each BN folded into its convolution, channels_last, ``--batch``); their
  predictions compared image by image (``results equal`` or ``within N flips``); then the
  default lesion on 10,000 images extrapolated from the measured rate, and its arithmetic:
  the FLOPs the lesions need (``reslab.models.counting.count_macs``, block by block), the rate
  reached, and the time at a matrix product's rate on this machine.
* ``--pieces``: plain forward passes of the net, each piece alone: BN folded or not, NCHW or
  channels_last, and the batch size, alternated over ``--rounds``.
* ``--bf16``: the fast path in fp32 and in bf16 autocast on the same images: the largest
  difference of a lesion's error (percentage points) and the flipped predictions.
"""

# ruff: noqa: I001  (reslab before torch: OpenMP then waits passively, so CPU time is work)
from __future__ import annotations

import reslab  # noqa: F401

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reslab.cpu import cpu_summary
from reslab.measure.inference import fold_batchnorm
from reslab.measure.lesion import Lesion, Top1Error, block_sites, study_lesions
from reslab.measure.lesion_sites import BlockSite, named_blocks
from reslab.models import count_macs, create_model

N_DEFAULT = 10_000  # the CIFAR-10 test set


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # not identities: a trained net's are not either
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _images(n: int, side: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, side, side, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _clock(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(CPU seconds of this process, all threads; wall seconds; the result) of ``fn(*args)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall, out


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


# --- each piece alone: forward passes ------------------------------------------------------------


def _forward(model: nn.Module, x: Tensor, batch: int) -> None:
    with torch.inference_mode():
        for chunk in x.split(batch):
            model(chunk)


def pieces(args: argparse.Namespace, model: nn.Module, x: Tensor, cache_batch: int) -> None:
    folded = fold_batchnorm(model)
    nhwc = {id(m): _nhwc_copy(m) for m in (model, folded)}
    xs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
    configs: list[tuple[str, nn.Module, bool, int]] = []
    for fold, net in (("unfolded", model), ("folded", folded)):
        for cl in (False, True):
            for batch in sorted({cache_batch, *args.batches}):
                layout = "NHWC" if cl else "NCHW"
                configs.append(
                    (f"{fold} {layout} batch {batch}", nhwc[id(net)] if cl else net, cl, batch)
                )
    times: dict[str, list[tuple[float, float]]] = {c[0]: [] for c in configs}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for name, net, cl, batch in order:
            _forward(net, xs[cl][:batch], batch)  # oneDNN's primitives for this shape: not timed
            cpu, wall, _ = _clock(_forward, net, xs[cl], batch)
            times[name].append((cpu, wall))
    # The baseline: what main ran, the unfolded net in NCHW at the batch cache_bytes allows.
    base = statistics.median(c for c, _ in times[f"unfolded NCHW batch {cache_batch}"])
    print(f"forward passes of {len(x)} images, medians of {args.rounds} rounds, load {_load()}:")
    for name, measured in times.items():
        cpu = statistics.median(c for c, _ in measured)
        wall = statistics.median(w for _, w in measured)
        print(
            f"  {name:28s} CPU {1e3 * cpu / len(x):6.2f} ms/img ({base / cpu:4.2f}x), "
            f"wall {1e3 * wall / len(x):6.2f} ms/img, {len(x) / wall:5.0f} img/s"
        )


def _nhwc_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# --- before vs after --------------------------------------------------------------------------


def before_after(args: argparse.Namespace, model: nn.Module, x: Tensor, y: Tensor) -> None:
    sites = block_sites(model, x[:1])
    lesions = study_lesions(sites, args.draws)
    ways = {
        "before": Top1Error(x, y, fast=False),
        "after": Top1Error(x, y, batch_size=args.batch),
    }
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    found: dict[str, Tensor] = {}
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            error = ways[name]
            cpu, wall, found[name] = _clock(error.predictions, model, sites, lesions)
            times[name].append((cpu, wall))
            print(f"  round {r + 1} {name}: CPU {cpu:.1f} s, wall {wall:.1f} s, load {_load()}")
    cpu = {k: statistics.median(c for c, _ in v) for k, v in times.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in times.items()}
    flips = int((found["before"] != found["after"]).sum())
    errors = {k: ((v != y).sum(1).double() * 100 / len(y)).tolist() for k, v in found.items()}
    same = "results equal" if errors["before"] == errors["after"] else "errors differ"
    print(
        f"{len(x)} images, {len(lesions)} lesions: before CPU {cpu['before']:.1f} s "
        f"(wall {wall['before']:.1f} s), after CPU {cpu['after']:.1f} s (wall "
        f"{wall['after']:.1f} s): {cpu['before'] / cpu['after']:.2f}x by CPU time, "
        f"{wall['before'] / wall['after']:.2f}x by wall; {same}, {flips} flipped predictions "
        f"of {found['after'].numel()}"
    )
    _arithmetic(args, model, sites, lesions, cpu["after"] / len(x), wall["after"] / len(x))


def _block_macs(model: nn.Module, sites: Sequence[BlockSite]) -> tuple[list[int], list[int], int]:
    """Per block its MACs a image and its shortcut's (what a deleted block still runs), and the
    whole net's."""
    blocks = [b for _, b in named_blocks(model)]
    whole = count_macs(model)
    run, kept = [], []
    for site, block in zip(sites, blocks, strict=True):
        run.append(count_macs(block, site.in_shape))
        shortcut = getattr(block, "downsample", None)
        kept.append(count_macs(shortcut, site.in_shape) if isinstance(shortcut, nn.Module) else 0)
    return run, kept, whole


def _arithmetic(
    args: argparse.Namespace,
    model: nn.Module,
    sites: Sequence[BlockSite],
    lesions: Sequence[Lesion],
    cpu_per_image: float,
    wall_per_image: float,
) -> None:
    """The default lesion on 10,000 images, extrapolated, and the FLOPs it needs."""
    run, kept, whole = _block_macs(model, sites)
    # The classifier runs on every image each time; the stem, on one (prefix.run_from).
    fc = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    macs, block_runs = whole, len(sites)  # the intact pass that records every block's input
    for lesion in lesions[1:]:
        for i in range(lesion.first_block or 0, len(sites)):
            macs += kept[i] if i in lesion.deleted else run[i]
            block_runs += i not in lesion.deleted
        macs += fc
    flops = 2 * macs * N_DEFAULT
    threads = torch.get_num_threads()
    peak = _matmul_rate()
    per_image = wall_per_image if args.wall else cpu_per_image / threads
    print(
        f"default lesion of {args.model} on {N_DEFAULT:,} images ({len(lesions)} lesions): "
        f"{block_runs:,} block-runs, {macs / whole:.0f} whole passes' MACs ({whole / 1e6:.0f} M "
        f"MACs a pass), {flops / 1e12:.0f} TFLOP; "
        f"after, extrapolated: {per_image * N_DEFAULT:,.0f} s on {threads} cores "
        f"({'wall' if args.wall else 'CPU time / cores'}), "
        f"{flops / (per_image * N_DEFAULT) / 1e9:.0f} GFLOP/s; at this machine's fp32 "
        f"matrix-product rate ({peak:.0f} GFLOP/s, "
        f"{threads} threads) the floor is {flops / peak / 1e9:,.0f} s"
    )


def _matmul_rate(n: int = 2048) -> float:
    """GFLOP/s of an fp32 n×n matrix product on torch's threads: the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_clock(torch.mm, a, b)[1] for _ in range(5))
    return 2 * n**3 / best / 1e9


# --- fp32 vs bf16 ------------------------------------------------------------------------------


def bf16(args: argparse.Namespace, model: nn.Module, x: Tensor, y: Tensor) -> None:
    sites = block_sites(model, x[:1])
    lesions = study_lesions(sites, args.draws)
    found, took = {}, {}
    for precision in ("fp32", "bf16"):
        error = Top1Error(x, y, batch_size=args.batch, precision=precision)
        cpu, wall, found[precision] = _clock(error.predictions, model, sites, lesions)
        took[precision] = f"CPU {cpu:.1f} s, wall {wall:.1f} s"
    err = {k: (v != y).sum(1).double() * 100 / len(y) for k, v in found.items()}
    flipped = found["fp32"] != found["bf16"]
    print(
        f"fp32 vs bf16 autocast, {len(x)} images, {len(lesions)} lesions (load {_load()}): "
        f"fp32 {took['fp32']}, bf16 {took['bf16']}; largest difference of a lesion's error "
        f"{(err['fp32'] - err['bf16']).abs().max():.2f} points (mean "
        f"{(err['fp32'] - err['bf16']).abs().mean():.2f}); {int(flipped.sum())} flipped "
        f"predictions of {flipped.numel()}, on {int(flipped.any(0).sum())} of {len(x)} images"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000, help="after's batch size, at most")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pieces", action="store_true")
    parser.add_argument("--batches", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--wall", action="store_true", help="extrapolate wall time, not CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _net(args.model)
    x, y = _images(args.images, args.side)
    sites = block_sites(model, x[:1])
    per_image = sum(torch.Size(s.in_shape).numel() for s in sites) * x.element_size()
    cache_batch = Top1Error(x, y).cache_bytes // per_image
    print(
        f"{cpu_summary()}, torch {torch.__version__}, "
        f"{args.threads} threads, load {_load()}, {args.model} {args.side}x{args.side}, "
        f"draws {args.draws}, batch before {cache_batch}, after {min(args.batch, cache_batch)}",
        flush=True,
    )
    if args.pieces:
        pieces(args, model, x, cache_batch)
    elif args.bf16:
        bf16(args, model, x, y)
    else:  # near-ties may flip (tests/measure/test_inference.py bounds where): printed, not failed
        before_after(args, model, x, y)
    print(f"load at the end {_load()}")


if __name__ == "__main__":
    main()
