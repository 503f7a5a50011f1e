"""The main job against its floor: `reslab degradation` next to its 12 runs' step loops alone.

    python benchmarks/bench_floor.py                  # 2 alternating rounds of floor and main job
    python benchmarks/bench_floor.py --rounds 3
    python benchmarks/bench_floor.py --skip-main-job  # the floor alone

**The floor** is what no implementation of the demo can go below on this machine: the training
steps of the study's runs and nothing else, hand-written. Each run is the one `reslab
degradation` trains with its defaults (the same models and shortcut option, the digits split,
batch 128, 11 steps an epoch for 10 epochs, SGD with the recipe's momentum and weight decay, the
warm-up and cosine schedule, channels_last, fp32, denormals flushed, one thread), in two worker
processes taking the runs in the study's order (deepest first), as the study's two workers do.
The floor is the time the two workers spend in their step loops, as the slower of the two
(the makespan); no process start, import, evaluation, probe or report counts. The CPU seconds
of the loops (summed) and of the main job (its process and its workers, from `getrusage`) are
printed too: on a busy machine their ratio is the steadier figure.

**The main job** is `reslab degradation --out TMP` in a fresh process, timed from outside.
Rounds alternate (floor, main job, floor, ...), so a change in the machine's load falls on both
alike; the ratio of each round's pair is printed, with `/proc/loadavg` before each.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reslab.cpu import cpu_summary
from reslab.data import load_dataset
from reslab.experiments.config import StudyConfig
from reslab.experiments.registry import get_study
from reslab.experiments.runner import train_config
from reslab.models import create_model
from reslab.train.session import model_kwargs


def _worker_init() -> None:
    torch.set_num_threads(1)  # the study's workers: one per core, one thread each
    torch.set_flush_denormal(True)  # as the trainer does: deep plain nets make denormals


def step_loop(spec: dict[str, Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run's training steps, hand-written: the floor of that run."""
    ds = load_dataset("digits")
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    data = ((ds.train_images.float() / 255 - mean) / std).contiguous(
        memory_format=torch.channels_last
    )
    labels = ds.train_labels
    torch.manual_seed(spec["seed"])
    model = create_model(spec["model"], **spec["kwargs"]).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=spec["lr"],
        momentum=spec["momentum"],
        weight_decay=spec["weight_decay"],
        foreach=True,
    )
    b, epochs, warmup = spec["batch_size"], spec["epochs"], spec["warmup_steps"]
    per_epoch = len(labels) // b
    total = per_epoch * epochs
    step = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        order = torch.randperm(len(labels))[: per_epoch * b].view(per_epoch, b)
        for idx in order:
            lr = spec["lr"] * min(1.0, (step + 1) / warmup)
            lr *= 0.5 * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(data[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return time.perf_counter() - start, time.process_time() - cpu


def run_specs() -> list[dict[str, Any]]:
    """The default degradation study's runs, in its order, as plain dicts for the workers."""
    study = StudyConfig(experiment="degradation")
    specs = []
    for spec in get_study("degradation").plan(study):
        cfg = train_config(study, spec, threads=1)
        specs.append(
            {
                "name": spec.name,
                "model": cfg.model,
                "kwargs": model_kwargs(cfg, 10, 1),
                "seed": cfg.seed,
                "batch_size": cfg.batch_size,
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "momentum": cfg.momentum,
                "weight_decay": cfg.weight_decay,
                "warmup_steps": cfg.warmup_steps,
            }
        )
    return specs


def floor(jobs: int) -> tuple[float, float, float, dict[str, float]]:
    """(makespan of the step loops over ``jobs`` workers, pool wall time, the loops' CPU
    seconds summed, each run's loop)."""
    specs = run_specs()
    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
        measured = list(pool.map(step_loop, specs))
    wall = time.perf_counter() - start
    times = [t for t, _ in measured]
    # The study's queue: each run goes to the first worker free, in plan order.
    busy = [0.0] * jobs
    for t in times:
        busy[busy.index(min(busy))] += t
    cpu = sum(c for _, c in measured)
    return max(busy), wall, cpu, {s["name"]: t for s, t in zip(specs, times, strict=True)}


def main_job() -> dict[str, float]:
    """Wall time of `reslab degradation` and where it went (from its run folders)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        start_epoch = time.time()
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, "-m", "reslab", "degradation", "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the study and its workers
        cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
        results = json.loads((out / "results.json").read_text())
        done = max(p.stat().st_mtime for p in out.glob("runs/*/result.json")) - start_epoch
        run_times = [float(r.get("wall_time") or 0) for r in results["runs"]]
    return {"wall": wall, "cpu": cpu, "training_done": done, "runs_sum": sum(run_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="workers (the study's default: 2)")
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_summary()} "
        f"x{os.cpu_count()}, torch {torch.__version__}, the default degradation study (12 runs)"
    )
    print(f"{'round':>5} {'what':<10} {'load':>5} {'wall s':>8} {'CPU s':>8}  note")
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        makespan, wall, cpu, each = floor(args.jobs)
        note = f"pool wall {wall:.1f} s; loops: " + " ".join(
            f"{k} {v:.1f}" for k, v in each.items()
        )
        print(f"{r + 1:>5} {'floor':<10} {load:>5.1f} {makespan:>8.1f} {cpu:>8.1f}  {note}")
        if args.skip_main_job:
            continue
        load = os.getloadavg()[0]
        job = main_job()
        ratios.append(job["wall"] / makespan)
        cpu_ratios.append(job["cpu"] / cpu)
        note = (
            f"training done at {job['training_done']:.0f} s, runs' own wall times summed / "
            f"{args.jobs}: {job['runs_sum'] / args.jobs:.0f} s; main / floor {ratios[-1]:.2f}x "
            f"wall, {cpu_ratios[-1]:.2f}x CPU"
        )
        print(
            f"{r + 1:>5} {'main job':<10} {load:>5.1f} {job['wall']:>8.1f} {job['cpu']:>8.1f}  "
            f"{note}",
            flush=True,
        )
    if ratios:
        print("main job / floor, each round: " + " ".join(f"{x:.2f}x" for x in ratios))
        print(
            "by CPU time (the study's processes vs the loops): "
            + " ".join(f"{x:.2f}x" for x in cpu_ratios)
        )


if __name__ == "__main__":
    main()
