"""The README's blocks that come from the program (scripts/readme.py): the models table equals
``reslab models``; the demo's output is marked machine-dependent and reads as the program
prints it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reslab.cli.models import model_rows
from reslab.experiments.runner import summary_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def readme() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme", ROOT / "scripts" / "readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _blocks(readme: ModuleType) -> dict[str, tuple[str, str]]:
    blocks: dict[str, tuple[str, str]] = readme.blocks((ROOT / "README.md").read_text("utf-8"))
    return blocks


def test_the_readmes_model_table_is_reslab_models(readme: ModuleType) -> None:
    # It listed the plain CIFAR nets as one row and the WRNs in another order than the program.
    _, body = _blocks(readme)["models"]
    assert body == readme.models_block(model_rows()), "run python scripts/readme.py"
    names = [line.split(" | ")[0].lstrip("| ") for line in body.splitlines()[2:]]
    assert names == [row[0] for row in model_rows()]


def _parsed(table: list[str]) -> dict[str, Any]:
    """The README's table read back into results.json's summary rows."""
    rows = []
    number = r"(\d+\.\d) ± (\d+\.\d|\?)"
    for line in table[1:]:
        m = re.fullmatch(rf"(\S+)\s+(\d+)\s+{number}\s+{number}", line)
        assert m, f"not a row the program prints: {line!r}"
        label, n, train, train_std, test, test_std = m.groups()
        std = [None if s == "?" else float(s) for s in (train_std, test_std)]
        rows.append(
            {
                "label": label,
                "n_seeds": int(n),
                "clean_train_error_mean": float(train),
                "clean_train_error_std": std[0],
                "test_error_mean": float(test),
                "test_error_std": std[1],
            }
        )
    return {"summary": rows}


def test_the_demo_block_is_marked_and_has_the_programs_format(readme: ModuleType) -> None:
    note, body = _blocks(readme)["demo"]
    assert note.startswith("(machine-dependent; scripts/readme.py --demo: ")
    assert re.search(r"torch \S+, \d{4}-\d\d-\d\d\)$", note), note
    lines = body.splitlines()
    assert lines[0] == lines[-1] == "```"
    table = lines[1 : lines.index("")]
    # The table the program would print for these numbers is the table shown, to the space.
    assert summary_table(_parsed(table)).splitlines() == table
    verdict, report = lines[lines.index("") + 1 : -1]
    assert re.match(r"plain-\d+ trains (worse|as well) ", verdict)
    assert report == "report: runs/degradation/report.html"


def test_the_script_writes_the_demo_block_from_a_results_file(
    readme: ModuleType, tmp_path: Path
) -> None:
    summary = _parsed(
        [
            "header",
            "plain-20             2         1.5 ± 0.5         3.0 ± 1.0",
            "resnet-20            2         0.5 ± 0.1         2.0 ± 0.2",
        ]
    )["summary"]
    results = {
        "experiment": "degradation",
        "machine": "a test machine",
        "torch_version": "9.9",
        "created": "2030-01-02T03:04:05+00:00",
        "config": {"out": "runs/degradation"},
        "verdict": {"text": "plain-20 trains worse than nothing"},
        "summary": summary,
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    text = (ROOT / "README.md").read_text("utf-8")
    (tmp_path / "README.md").write_text(text)
    args = ["--readme", str(tmp_path / "README.md")]
    assert readme.main([*args, "--demo", str(tmp_path / "results.json")]) == 0
    written = (tmp_path / "README.md").read_text("utf-8")
    note, body = readme.blocks(written)["demo"]
    assert (
        note
        == "(machine-dependent; scripts/readme.py --demo: a test machine, torch 9.9, 2030-01-02)"
    )
    assert body == f"```\n{summary_table(results)}\n\nplain-20 trains worse than nothing\n" + (
        "report: runs/degradation/report.html\n```\n"
    )
    # Only the block changed, and the models table is current: --check passes.
    for cut, keep in (("<!-- begin: demo", 0), ("<!-- end: demo -->", 1)):
        assert written.split(cut)[keep] == text.split(cut)[keep]
    assert readme.main([*args, "--check"]) == 0
