"""scripts/same_study.py: the check that proves a refactor kept a study's numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "same_study.py"


def _load() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("same_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(folder: Path, **changes: Any) -> Path:
    results = {
        "experiment": "shattering",
        "created": "2026-12-07T00:00:00+00:00",
        "config": {"out": str(folder), "seeds": [0, 1]},
        "shattering": {"nets": [{"lag1": 0.5, "scan_time": 1.0, "source": f"{folder}/runs/a"}]},
        "verdict": {"text": "plain falls faster", "gap": 0.25},
    }
    results.update(changes)
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_timings_dates_and_the_folder_itself_do_not_count(tmp_path: Path) -> None:
    same = _load()
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b", created="2027-01-01T00:00:00+00:00")
    assert same.differences(a, b) == []


def test_a_changed_number_or_verdict_is_named(tmp_path: Path) -> None:
    same = _load()
    a = _study(tmp_path / "a")
    b = _study(tmp_path / "b", verdict={"text": "plain falls faster", "gap": 0.26})
    assert same.differences(a, b) == ["results.verdict.gap: 0.25 vs 0.26"]
    assert same.main([str(a), str(b)]) == 1
