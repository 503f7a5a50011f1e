"""Are two study folders the same study? Every number and verdict of results.json, and every run.

    python scripts/same_study.py STUDY_A STUDY_B

Used to prove that a refactor keeps behaviour: run the same study command on the old and the
new code (same machine, ``--jobs 2``: one thread per worker) and compare. What may differ is
left out: timings, creation time, versions and machine, and paths that name the folder itself.
Each run folder is then compared with scripts/same_run.py's test (weights, buffers, metrics).
Exits 0 when everything else is identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from same_run import differences as run_differences

# Keys whose values are not results: how long things took, when and where they ran.
IGNORED = {
    "wall_time",
    "scan_time",
    "epoch_time",
    "images_per_s",
    "created",
    "machine",
    "reslab_version",
    "torch_version",
    "python_version",
    "out",
    "source",
}


def json_differences(a: Any, b: Any, where: str, roots: tuple[str, str]) -> list[str]:
    """Every place where ``a`` and ``b`` differ, ignoring :data:`IGNORED` keys and the study
    folders' own paths inside strings."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            if key not in a or key not in b:
                found.append(f"{where}.{key}: only in {'B' if key not in a else 'A'}")
                continue
            found += json_differences(a[key], b[key], f"{where}.{key}", roots)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in json_differences(x, y, f"{where}[{i}]", roots)
        ]
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(roots[0], "<study>"), b.replace(roots[1], "<study>")
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def differences(a: Path, b: Path) -> list[str]:
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    found = json_differences(ra, rb, "results", (str(a), str(b)))
    runs = sorted(p.name for p in (a / "runs").iterdir()) if (a / "runs").is_dir() else []
    for name in runs:
        found += [
            f"runs/{name}: {d}" for d in run_differences(a / "runs" / name, b / "runs" / name)
        ]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = differences(Path(argv[0]), Path(argv[1]))
    for line in found[:50]:
        print(line)
    if not found:
        print(f"same study: every number, verdict and run is identical ({argv[0]} = {argv[1]})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
