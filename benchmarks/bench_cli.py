"""How fast the command line answers, next to ``import torch`` alone (docs/PERFORMANCE.md).

    python benchmarks/bench_cli.py [--rounds 9]

Each command runs as a fresh process, as a user's shell runs it, ``--rounds`` times in turn
with the others (so a burst of load hits them all alike); the median wall time of each is
printed. The target: ``reslab --help`` and ``--version`` well under half of ``import torch``,
which they used to import before reading a flag (2.5-2.9 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c 'import torch'": ["-c", "import torch"],
    "reslab --help": ["-m", "reslab", "--help"],
    "reslab --version": ["-m", "reslab", "--version"],
    "reslab models": ["-m", "reslab", "models"],
    "reslab train --epochs x (refused)": ["-m", "reslab", "train", "--epochs", "x"],
    "python -c 'pass'": ["-c", "pass"],
}


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--src", type=Path, help="the reslab source folder to time (default: this checkout's)"
    )
    given = parser.parse_args()
    rounds = given.rounds
    # This checkout's reslab, installed or not; --src another's, to time a before and an after.
    src = given.src or Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    for args in COMMANDS.values():  # warm the page cache: the first run reads every file
        timed(args, env)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, args in COMMANDS.items():
            times[name].append(timed(args, env))
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(f"{src}: median of {rounds} rounds, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:36} {median:6.3f} s  ({median / torch_s:5.1%} of import torch)")


if __name__ == "__main__":
    main()
