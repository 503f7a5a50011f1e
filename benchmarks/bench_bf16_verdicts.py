"""Does a study say the same thing in bf16 as in fp32? (issue 22: "the science must not move")

    python benchmarks/bench_bf16_verdicts.py                          # every study that trains
    python benchmarks/bench_bf16_verdicts.py --studies degradation    # the main job only
    python benchmarks/bench_bf16_verdicts.py --studies shortcuts -- --seeds 0

Each study runs twice with its defaults (and any flags after ``--``), ``--precision fp32`` and
``--precision bf16``, each in its own ``reslab`` process and folder under ``--out``; then every
true/false field of the two verdicts is compared, and the numbers beside them are printed
(fp32 | bf16). Exits 1 if any verdict differs. On a CPU without native bf16 (AVX2) the bf16
runs are emulated and slower, but they compute what a native-bf16 CPU computes to within its
rounding (autocast's op lists are the same): the comparison holds there too, the timing does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reslab.cpu import cpu_summary

#: The studies that train nets (``shattering`` measures nets at initialisation only).
TRAINING_STUDIES = (
    "degradation",
    "shortcuts",
    "gradients",
    "responses",
    "lesion",
    "landscape",
    "ablation",
    "trainability",
)


def run(study: str, precision: str, out: Path, extra: list[str]) -> tuple[dict[str, Any], float]:
    """The study's results.json and its wall time, run in a fresh ``reslab`` process."""
    folder = out / f"{study}-{precision}"
    argv = [sys.executable, "-m", "reslab", study, "--precision", precision, "--out", str(folder)]
    start = time.perf_counter()
    done = subprocess.run([*argv, *extra], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads((folder / "results.json").read_text()), elapsed


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def compare(study: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Print the two verdicts field by field; True when every true/false field agrees."""
    same = True
    for key in dict.fromkeys([*a["verdict"], *b["verdict"]]):  # a declined verdict has fewer
        x, y = a["verdict"].get(key), b["verdict"].get(key)
        if key == "text":
            continue
        if isinstance(x, bool) or x is None:
            mark = "same" if x == y else "DIFFERENT"
            same &= x == y
            print(f"  {key:<28} {x!s:>10} | {y!s:<10} {mark}")
        elif isinstance(x, int | float) or isinstance(y, int | float):
            print(f"  {key:<28} {_num(x):>10} | {_num(y):<10}")
    print(f"  fp32: {a['verdict']['text']}")
    print(f"  bf16: {b['verdict']['text']}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", default=",".join(TRAINING_STUDIES))
    parser.add_argument("--out", default="/tmp/reslab-bf16-verdicts")
    parser.add_argument("extra", nargs="*", help="flags for every study, after --")
    args = parser.parse_args()
    out = Path(args.out)
    load = Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else []
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_summary()} "
        f"x{os.cpu_count()}, load {' '.join(load)}, extra flags: {' '.join(args.extra) or '-'}"
    )
    all_same = True
    for study in args.studies.split(","):
        fp32, t32 = run(study, "fp32", out, args.extra)
        bf16, t16 = run(study, "bf16", out, args.extra)
        print(f"\n{study}: fp32 {t32:.0f} s, bf16 {t16:.0f} s")
        all_same &= compare(study, fp32, bf16)
    print("\nverdicts " + ("the same in bf16 and fp32" if all_same else "DIFFER"))
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
