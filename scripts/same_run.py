"""Are two run folders the same training run? Weights tensor by tensor, metrics, checksums.

    python scripts/same_run.py RUN_A RUN_B

Used to prove that a refactor keeps behaviour: train the same command on the old and the new
code (same machine, same thread count) and compare. File bytes are not compared: safetensors
writes its metadata map in no fixed order, so two identical runs can differ in header bytes.
Exits 0 when every weight, optimizer buffer and recorded number (timings aside) is identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = {"images_per_s", "epoch_time", "wall_time"}


def differences(a: Path, b: Path) -> list[str]:
    """What differs between run folders ``a`` and ``b`` (empty: the same run)."""
    found = []
    for name in ("last.safetensors", "last.optim.safetensors", "best.safetensors"):
        ta, tb = load_file(a / "checkpoints" / name), load_file(b / "checkpoints" / name)
        if ta.keys() != tb.keys():
            found.append(f"{name}: different tensors")
        found += [f"{name}: {k} differs" for k in ta if k in tb and not torch.equal(ta[k], tb[k])]
    ra = json.loads((a / "result.json").read_text())
    rb = json.loads((b / "result.json").read_text())
    if ra["rank_checksums"] != rb["rank_checksums"]:
        found.append("result.json: parameter checksums differ")
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(rows_a, rows_b, strict=False):
        if {k: v for k, v in x.items() if k not in TIMING} != {
            k: v for k, v in y.items() if k not in TIMING
        }:
            found.append(f"metrics.jsonl: epoch {x.get('epoch')} differs")
    if len(rows_a) != len(rows_b):
        found.append("metrics.jsonl: different number of epochs")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = differences(Path(argv[0]), Path(argv[1]))
    for line in found:
        print(line)
    if not found:
        print(f"same run: every weight, buffer and number is identical ({argv[0]} = {argv[1]})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
