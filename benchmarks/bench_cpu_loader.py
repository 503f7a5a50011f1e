"""CPU training throughput: reslab's device-resident loader + engine vs a per-sample DataLoader.

Measures, in one run, images/s of training steps (forward, backward, SGD step) on CIFAR-shaped
synthetic data (3×32×32 uint8, batch 128, pad-4 crop + flip):

* ``reslab``: :func:`reslab.train.fit` itself (DeviceLoader: whole split on the device, batched
  augmentation; the engine's step with on-device metrics), read from its per-epoch
  ``images_per_s``, which excludes evaluation and checkpoints; the first epoch is warm-up;
* ``dataloader``: what most CIFAR repositories do: a ``torch.utils.data.DataLoader`` over a
  dataset whose ``__getitem__`` crops, flips and normalises one image at a time (as
  torchvision's ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``Normalize`` do on
  tensors), feeding a plain eager loop with ``loss.item()`` every step.

Also compares channels-last against contiguous (NCHW) activations for the reslab engine.

    python benchmarks/bench_cpu_loader.py                  # resnet20 and resnet56
    python benchmarks/bench_cpu_loader.py --steps 10 --models resnet20 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from reslab.data import channel_stats, load_dataset
from reslab.models import create_model
from reslab.train import TrainConfig, fit

N_TRAIN = 512  # synthetic train images: load_dataset's default, 4 steps per epoch at batch 128
SHAPE = (3, 32, 32)


class PerSampleCifar(Dataset[tuple[torch.Tensor, int]]):
    """One image at a time: pad 4 + random 32×32 crop, random flip, to float, normalise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        mean, std = channel_stats(images)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = F.pad(self.images[i], (4, 4, 4, 4))  # RandomCrop(32, padding=4)
        top, left = torch.randint(0, 9, (2,)).tolist()
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:  # RandomHorizontalFlip
            img = img.flip(-1)
        x = img.float().div_(255)  # ToTensor
        return (x - self.mean) / self.std, int(self.labels[i])  # Normalize


def bench_dataloader(model_name: str, steps: int, warmup: int, workers: int) -> float:
    ds = load_dataset("synthetic", synthetic_shape=SHAPE, synthetic_size=(N_TRAIN, 128))
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(
        PerSampleCifar(ds.train_images, ds.train_labels),
        batch_size=128,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    model.train()
    done, start = 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging sync
            done += 1
            if done == warmup + steps:
                break
    return steps * 128 / (time.perf_counter() - start)


def bench_reslab(
    model_name: str, steps: int, channels_last: bool, compile: bool
) -> tuple[float, float]:
    """(steady images/s, seconds of the first, warm-up epoch) of fit() on the synthetic set."""
    per_epoch = N_TRAIN // 128
    epochs = 1 + -(-steps // per_epoch)  # one warm-up epoch, then the measured ones
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            model=model_name,
            dataset="synthetic",
            augment="cifar",
            batch_size=128,
            epochs=epochs,
            lr=0.1,
            weight_decay=1e-4,
            channels_last=channels_last,
            compile=compile,
            eval_every=10_000,  # evaluate only after the last epoch (not timed anyway)
            eval_batch_size=512,
            quiet=True,
            out=str(Path(tmp) / "run"),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # fit's per-epoch lines
            history = fit(config)
    measured = history.records[1:]
    images = sum(r["images_per_s"] * r["epoch_time"] for r in measured)
    return images / sum(r["epoch_time"] for r in measured), history.records[0]["epoch_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56", help="comma-separated")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed DataLoader steps")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, python {platform.python_version()}, {sys.platform}")
    print(f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()}")
    print(f"batch 128, {SHAPE} uint8 synthetic, pad-4 crop + flip, {args.steps} timed steps\n")
    print(f"{'model':<10} {'pipeline':<34} {'img/s':>8}  first epoch ({4 * 128} images)")
    for name in args.models.split(","):
        base = bench_dataloader(name, args.steps, args.warmup, args.workers)
        print(f"{name:<10} {f'DataLoader per-sample, {args.workers} workers':<34} {base:>8.1f}")
        nchw, first = bench_reslab(name, args.steps, channels_last=False, compile=False)
        print(f"{name:<10} {'reslab DeviceLoader + fit, NCHW':<34} {nchw:>8.1f}  {first:.1f} s")
        nhwc, first = bench_reslab(name, args.steps, channels_last=True, compile=False)
        print(f"{name:<10} {'reslab DeviceLoader + fit, NHWC':<34} {nhwc:>8.1f}  {first:.1f} s")
        if args.compile:
            for cl, label in ((False, "NCHW"), (True, "NHWC")):
                comp, first = bench_reslab(name, args.steps, channels_last=cl, compile=True)
                row = f"reslab + torch.compile, {label}"
                print(f"{name:<10} {row:<34} {comp:>8.1f}  {first:.1f} s (compiling)")
        print(
            f"{name:<10} reslab / DataLoader: {nchw / base:.2f}x same layout (NCHW), "
            f"{nhwc / base:.2f}x with reslab's default NHWC; NHWC / NCHW = {nhwc / nchw:.2f}x\n"
        )


if __name__ == "__main__":
    main()
