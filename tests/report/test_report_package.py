"""The report toolkit knows no study: nothing in reslab/report imports the trainer or a study."""

from __future__ import annotations

import ast
from pathlib import Path

import reslab.report

# reslab.version for __version__; reslab.checks: the one validation mechanism (stdlib only)
ALLOWED = {"reslab.checks", "reslab.errors", "reslab.fileio", "reslab.version"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_toolkit_imports_only_errors_fileio_and_itself() -> None:
    files = sorted(Path(reslab.report.__file__).parent.glob("*.py"))
    assert {f.stem for f in files} >= {"schema", "stats", "figures", "html"}
    for path in files:
        own = {n for n in _imports(path) if n.split(".")[0] == "reslab"}
        # A leaf's own modules count as the leaf (reslab.checks.document is reslab.checks).
        outside = {n for n in own if not _within(n, {"reslab.report", *ALLOWED})}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def _within(name: str, packages: set[str]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in packages)
