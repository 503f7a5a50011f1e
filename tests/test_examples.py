"""examples/: every notebook runs top to bottom in a real kernel, and git holds them stripped.

Each notebook is executed with nbclient in a copy under ``tmp_path`` (its ``runs/`` and figures
land there, never in the repository), on the ``python3`` kernel of the interpreter running the
tests: ipykernel's own spec, built from ``sys.executable``, so neither a user's kernel of that
name nor a missing ``jupyter kernelspec install`` changes which Python and which reslab run.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Lines a cell may print: a run's epochs and a study's runs, never a progress bar's redraws.
MAX_LINES = 60


def _build_script() -> ModuleType:
    path = ROOT / "scripts" / "build_notebooks.py"
    spec = importlib.util.spec_from_file_location("build_notebooks", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _ThisPython(KernelSpecManager):
    """Every kernel name means ipykernel on this interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())


def _text(output: Any) -> str:
    if output.output_type == "stream":
        return str(output.text)
    if output.output_type == "error":
        return "\n".join(output.traceback)
    return str(output.get("data", {}).get("text/plain", ""))


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


def test_notebooks_are_built_from_their_sources() -> None:
    build = _build_script()
    targets = build.targets()
    assert sorted(targets.values()) == NOTEBOOKS  # no notebook without a source, and none missing
    for source, notebook in targets.items():
        rendered = build.render(source.read_text(encoding="utf-8"))
        assert notebook.read_text(encoding="utf-8") == rendered, (
            f"{notebook.name} is out of date: run python scripts/build_notebooks.py"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_git_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_the_kernel_is_this_interpreter() -> None:
    spec = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisPython()).kernel_spec
    assert spec is not None and spec.argv[0] == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copy(path, tmp_path / path.name))
    nb = nbformat.read(copy, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisPython())
    client = NotebookClient(
        nb,
        km=km,
        timeout=600,  # per cell, on a busy 2-core machine
        allow_errors=False,  # a failing cell raises CellExecutionError: the test fails
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        text = "".join(_text(o) for o in cell.outputs)
        assert not ANSI.search(text), f"ANSI codes in the output of {cell.source[:60]!r}"
        assert text.count("\n") <= MAX_LINES, f"{cell.source[:60]!r} printed a flood"
        assert all(o.output_type != "error" for o in cell.outputs)
    assert not (EXAMPLES / "runs").exists()  # the notebook wrote into its copy's folder only
