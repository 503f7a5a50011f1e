"""How long from Ctrl-C (or SIGTERM) to exit, for ``reslab train`` and a study (issue 20, class 2)

    python benchmarks/bench_stop.py [--src SRC] [--signal SIGINT|SIGTERM] [--tries 3]

Starts the command in its own process group, waits until a run has committed its first
checkpoint (training is under way), sends the signal (SIGINT to the group, as a terminal's
Ctrl-C does; SIGTERM to the command alone, as ``kill`` does), and times the exit. Then runs the
resume command the stop line names and checks it finishes. Prints one line per try.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SMALL = ["--width", "0.25", "--dataset", "digits"]
COMMANDS = {
    "train": ["train", "--model", "resnet8", *SMALL, "--epochs", "10", "--threads", "1"],
    "study": ["degradation", "--depths", "8,14", "--seeds", "0", *SMALL, "--steps", "100"],
}


def _try(src: Path, what: str, signum: signal.Signals, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "reslab", *COMMANDS[what], "--out", str(out)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    while not list(out.glob("**/checkpoints/last.json")):
        if process.poll() is not None:
            return f"{what}: ended before training ({process.returncode})"
        time.sleep(0.02)
    sent = time.perf_counter()
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, err = process.communicate(timeout=600)
    took = time.perf_counter() - sent
    line = err.strip().splitlines()[-1] if err.strip() else ""
    resume = line.split("resume with: ", 1)[1].split() if "resume with: " in line else []
    rerun = subprocess.run(
        [sys.executable, "-m", "reslab", *resume[1:]], env=env, capture_output=True, timeout=1800
    )
    return (
        f"{what}: exit {process.returncode} {took:.2f} s after {signum.name} "
        f"({len(err.splitlines())} line(s)); resume exit {rerun.returncode}; "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=HERE / "src")
    parser.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--what", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.tries):
            for what in args.what:
                out = Path(tmp) / f"{what}{i}"
                print(_try(args.src, what, signal.Signals[args.signal], out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
