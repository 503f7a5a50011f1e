"""Training on a busy machine: reslab's default thread policy beside explicit thread counts,
with 0, 1 and 2 CPU-bound background processes, in one run (issue: no collapse under load).

    python benchmarks/bench_load.py                       # resnet20 on digits, 2 epochs
    python benchmarks/bench_load.py --hogs 0,2 --repeats 2 --model resnet56
    python benchmarks/bench_load.py --dataset synthetic --epochs 3   # CIFAR-shaped 3x32x32
    python benchmarks/bench_load.py --hog-nice 19        # background jobs run under `nice`

Each cell is one fresh ``reslab train`` process (so the OpenMP runtime starts as a user's
would), training ``--model`` with the same seed on the embedded digits (1x8x8, 1,437 training
images) or on ``synthetic`` data of CIFAR's shape (3x32x32, 512 training images): the wait
policy costs most where operations are smallest, so both sizes are worth a run. A hog is
``python -c 'while True: pass'``, under ``nice`` with ``--hog-nice``. Reported per cell: the
process's wall time, training images per second over all epochs (first epoch included: that
is where the collapse was worst) and over the last epoch alone, and the thread count the run
used (its config.json), for the best of ``--repeats`` rounds (which alternate the policies),
with the median img/s of the rounds. ``old default`` is reslab before this work: one thread
per core and libgomp's own wait (``GOMP_SPINCOUNT=300000``: a waiting thread spins ~300k
times before it sleeps).
The ratio compares the default with the best explicit thread count at
the same load; the target is >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOG = "while True: pass"
WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # how OpenMP threads wait


@contextmanager
def hogs(n: int, nice: int = 0) -> Iterator[None]:
    """``n`` busy-loop processes, at priority ``nice``, for the length of the block."""
    code = f"import os\nos.nice({nice})\n{HOG}"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def train_once(args: argparse.Namespace, threads: int | None, env: dict[str, str]) -> dict:
    """One ``reslab train`` in a fresh process: wall time and img/s from its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "reslab", "train", "--model", args.model, "--dataset"]
        cmd += [
            args.dataset,
            "--epochs",
            str(args.epochs),
            "--seed",
            "0",
            "--quiet",
            "--out",
            str(out),
        ]
        cmd += ["--device", "cpu"]  # the CPU's threads are the subject, on a GPU machine too
        if threads is not None:
            cmd += ["--threads", str(threads)]
        start = time.perf_counter()
        # The old-default row drops reslab's wait policy and sets libgomp's own spin count.
        base = {k: v for k, v in os.environ.items() if k not in env and k not in WAIT}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**base, **env})
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        used = json.loads((out / "config.json").read_text())["threads"]  # what the run chose
    images = sum(r["images_per_s"] * r["epoch_time"] for r in records)
    return {
        "wall": wall,
        "img_s": images / sum(r["epoch_time"] for r in records),
        "last_img_s": records[-1]["images_per_s"],
        "threads": used,
    }


def policies(threads: list[int], cores: int) -> list[tuple[str, int | None, dict[str, str]]]:
    rows: list[tuple[str, int | None, dict[str, str]]] = [("default", None, {})]
    rows += [(f"--threads {n}", n, {}) for n in threads]
    # reslab before the busy-machine work: one thread per core, libgomp's spinning wait.
    rows.append(("old default", cores, {"GOMP_SPINCOUNT": "300000"}))
    return rows


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def best_of(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["img_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hogs", default="0,1,2", help="background hog counts, comma-separated")
    parser.add_argument("--hog-nice", type=int, default=0, help="the hogs' niceness (0..19)")
    parser.add_argument("--threads", default=None, help="explicit thread counts (default 1..cores)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per cell: the best, and the median"
    )
    args = parser.parse_args()
    from reslab.cpu import available_cores

    cores = len(available_cores())
    threads = (
        [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
        f"{cores} usable cores, load {os.getloadavg()[0]:.1f} before the run; "
        f"{args.model} on {args.dataset}, {args.epochs} epochs, best of {args.repeats}, "
        f"hogs at nice {args.hog_nice}"
    )
    head = f"{'hogs':>4}  {'policy':<20}{'threads':>8}{'wall s':>8}{'img/s':>9}{'last epoch':>12}"
    print(head + f"{'median':>9}")
    for n in (int(h) for h in args.hogs.split(",")):
        with hogs(n, args.hog_nice):
            rows = policies(threads, cores)
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
            for _ in range(args.repeats):  # rounds alternate policies, so drift hits all alike
                for name, t, env in rows:
                    runs[name].append(train_once(args, t, env))
            cells = {name: best_of(results) for name, results in runs.items()}
            for name, r in cells.items():
                middle = statistics.median(x["img_s"] for x in runs[name])
                print(
                    f"{n:>4}  {name:<20}{r['threads']:>8}{r['wall']:>8.1f}{r['img_s']:>9.0f}"
                    f"{r['last_img_s']:>12.0f}{middle:>9.0f}"
                )
            explicit = best_of([cells[f"--threads {t}"] for t in threads])
            ratio = cells["default"]["img_s"] / explicit["img_s"]
            verdict = "ok" if ratio >= 0.8 else "BELOW 0.8"
            print(f"{n:>4}  default / best explicit: {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    main()
