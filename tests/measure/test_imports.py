"""reslab.measure measures models and nothing else: it imports the standard library, torch,
numpy and the public names of reslab.blocks, reslab.models and reslab.errors, never the data,
the trainer, the studies or the report (data flows one way: models -> measure -> experiments)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import reslab.measure

MEASURE = Path(reslab.measure.__file__).parent
ALLOWED_THIRD_PARTY = {"torch", "numpy"}
ALLOWED_RESLAB = {"reslab.blocks", "reslab.models", "reslab.errors", "reslab.measure"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in ``path``, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            found.append(("reslab.measure", [alias.name for alias in node.names]))
    return found


def _violations(path: Path) -> list[str]:
    bad = []
    for module, names in _imports(path):
        top = module.split(".")[0]
        if top == "reslab":
            owner = ".".join(module.split(".")[:2])
            if owner not in ALLOWED_RESLAB or (module != owner and owner != "reslab.measure"):
                bad.append(f"{path.name}: imports {module}")
            bad += [f"{path.name}: imports private {module}.{n}" for n in names if n[0] == "_"]
        elif top not in ALLOWED_THIRD_PARTY and top not in sys.stdlib_module_names:
            bad.append(f"{path.name}: imports {module}")
    return bad


@pytest.mark.parametrize("path", sorted(MEASURE.glob("*.py")), ids=lambda p: p.name)
def test_measure_imports_only_models_and_blocks(path: Path) -> None:
    assert _violations(path) == []


def test_the_rule_catches_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from reslab.train import fit\nfrom reslab.blocks import _Block\n"
        "from reslab.models.resnet import ResNet\nimport pandas\nimport torch\n"
    )
    assert _violations(bad) == [
        "bad.py: imports reslab.train",
        "bad.py: imports private reslab.blocks._Block",
        "bad.py: imports reslab.models.resnet",
        "bad.py: imports pandas",
    ]
