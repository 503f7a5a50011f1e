"""How often does a two-rank torchrun of ``reslab train`` fail? (issue 20, class 8)

    python benchmarks/ddp_loop.py --runs 50 --hogs 2 [--src SRC ...] [--test-script]

Runs the same torchrun command ``tests/cli/test_train_cli.py`` runs (``--test-script``: the
test's own monkeypatched script; default: ``python -m reslab train``, the path a user runs)
``--runs`` times, beside ``--hogs`` CPU-bound busy loops, and counts the runs that exit non-zero,
with the first line of each failure's cause. ``--src`` picks the code under test (a checkout's
``src``); given twice (main's and a branch's), the runs alternate between the two, so both see
the same load. Prints one line per failure and a summary per ``src``; exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "resnet8", "--width", "0.25", "--dataset", "digits", "--steps", "2"]
TRAIN += ["--batch-size", "64", "--quiet"]


def _hog() -> None:
    while True:
        pass


def _test_script() -> str:
    """The test's script, read from the test file so the loop runs exactly what CI runs."""
    text = (HERE / "tests" / "cli" / "test_train_cli.py").read_text()
    found = re.search(r'_RANKS_SCRIPT = """(.*?)"""', text, re.S)
    if found is None:
        raise SystemExit("tests/cli/test_train_cli.py has no _RANKS_SCRIPT")
    return found.group(1)


def _cause(stderr: str) -> str:
    for key in ("terminate called", "Traceback", "Error", "error"):
        for line in stderr.splitlines():
            if key in line:
                return line.strip()[:160]
    return stderr.strip().splitlines()[-1][:160] if stderr.strip() else "(no stderr)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--src", type=Path, action="append")
    parser.add_argument("--test-script", action="store_true")
    args = parser.parse_args()
    sources = args.src or [HERE / "src"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    hogs = [mp.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    failed, started = dict.fromkeys(sources, 0), time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "ranks.py"
            script.write_text(_test_script())
            for i in range(args.runs):
                for k, src in enumerate(sources):
                    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": "2"}
                    out = Path(tmp) / f"run{i}-{k}"
                    if args.test_script:
                        command = [*launch, str(script), str(out)]
                    else:
                        command = [*launch, "-m", "reslab", "train", *TRAIN, "--out", str(out)]
                    done = subprocess.run(
                        command, capture_output=True, text=True, env=env, timeout=600
                    )
                    if done.returncode != 0:
                        failed[src] += 1
                        print(f"{src} run {i}: exit {done.returncode}: {_cause(done.stderr)}")
                print(f"{i + 1} runs each, {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
    what = "test script" if args.test_script else "reslab train"
    for src, count in failed.items():
        print(
            f"{count} of {args.runs} runs failed ({what}, {args.hogs} hogs, src {src}, "
            f"{time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f})"
        )
    return 1 if any(failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
