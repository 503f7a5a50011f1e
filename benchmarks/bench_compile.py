"""What `--compile` costs on a CPU and what it saves per step, for the study nets.

    python benchmarks/bench_compile.py                       # resnet8/20/56 on 1x8x8, 1 thread
    python benchmarks/bench_compile.py --models resnet20 --threads 2

Each model runs in its own fresh process (so nothing is cached from another model; inductor's
on-disk cache is pointed at a fresh folder too, so every compile is cold): the trainer's step
(`reslab.train.train_step`, channels_last, fp32, foreach SGD) eager for `--steps` steps, then
`torch.compile` (`max-autotune-no-cudagraphs`, the trainer's CPU mode): the first compiled
steps (where compilation happens) timed apart, then `--steps` compiled steps. Break-even is the
compile time over the time saved per step; "never" where compiled steps are no faster. Step
times are the process's CPU time on one thread, and break-even uses the compile's CPU time
(this process and inductor's compile workers), so a busy machine disturbs them less than the
wall times, which are printed too.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from reslab.cpu import cpu_summary


def measure(model_name: str, args: dict[str, Any]) -> dict[str, float]:
    import torch

    from reslab.models import create_model
    from reslab.train import TrainConfig, build_optimizer, compile_mode, train_step

    torch.set_num_threads(args["threads"])
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    b, c, s = args["batch"], args["channels"], args["size"]
    raw = create_model(model_name, num_classes=10, in_channels=c)
    raw.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = build_optimizer(TrainConfig(lr=0.01), raw, torch.device("cpu"))
    x = torch.randn(b, c, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,))
    none = torch.autocast("cpu", enabled=False)

    def steps(model: Any, n: int) -> tuple[float, float]:
        """(wall, CPU of this process) seconds of n steps; on one thread the CPU time is what
        the steps cost whatever else the machine runs."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            train_step(model, opt, x, y, none)
        return time.perf_counter() - start, time.process_time() - cpu

    n = args["steps"]
    steps(raw, 3)  # oneDNN's primitives
    eager = min(steps(raw, n)[1] for _ in range(2)) / n
    compiled = torch.compile(raw, mode=compile_mode(False))
    first_wall, first_cpu = steps(compiled, 2)  # compiles the forward and backward graphs
    fast = min(steps(compiled, n)[1] for _ in range(2)) / n
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # inductor's compile workers
    return {
        "eager_ms": 1000 * eager,
        "compiled_ms": 1000 * fast,
        "compile_s": first_wall - 2 * fast,
        "compile_cpu_s": first_cpu + children.ru_utime + children.ru_stime - 2 * fast,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet8,resnet20,resnet56")
    parser.add_argument("--threads", type=int, default=1, help="the study workers': 1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=8, help="8: the digits")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, best of 2 passes")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_summary()} "
        f"x{os.cpu_count()}, load {os.getloadavg()[0]:.1f}; batch {args.batch}, "
        f"{args.channels}x{args.size}x{args.size}, {args.threads} thread(s), fp32"
    )
    print(
        f"{'model':<10}{'compile s':>10}{'(CPU s)':>9}{'eager ms':>10}{'compiled ms':>13}"
        "  pays off after (step times: CPU ms, best of 2 passes)"
    )
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, every model
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                r = pool.submit(measure, name, vars(args)).result()
        saved = r["eager_ms"] - r["compiled_ms"]
        after = f"{1000 * r['compile_cpu_s'] / saved:,.0f} steps" if saved > 0 else "never"
        print(
            f"{name:<10}{r['compile_s']:>10.1f}{r['compile_cpu_s']:>9.1f}{r['eager_ms']:>10.1f}"
            f"{r['compiled_ms']:>13.1f}  {after}",
            flush=True,
        )


if __name__ == "__main__":
    main()
