"""The top-level ``reslab`` namespace: what it exports, what it imports, where the version lives."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import reslab

LAZY = {
    "fit": "reslab.train",
    "TrainConfig": "reslab.train",
    "run_study": "reslab.experiments",
    "StudyConfig": "reslab.experiments",
    "load_dataset": "reslab.data",
}


def test_import_reslab_loads_neither_the_trainer_nor_the_studies() -> None:
    code = (
        "import sys, reslab; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "[['reslab', 'train'], ['reslab', 'experiments'], ['reslab', 'data'], "
        "['reslab', 'report']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("name", "package"), LAZY.items())
def test_lazy_names_are_the_packages_own(name: str, package: str) -> None:
    exported = getattr(reslab, name)  # a function behind the API's argument check
    exported = getattr(exported, "__wrapped__", exported)
    assert exported is getattr(importlib.import_module(package), name)
    assert name in reslab.__all__ and name in dir(reslab)


def test_everything_in_all_exists_and_unknown_names_fail() -> None:
    for name in reslab.__all__:
        assert getattr(reslab, name) is not None
    with pytest.raises(AttributeError, match="module 'reslab' has no attribute 'nope'"):
        _ = reslab.nope  # type: ignore[attr-defined]


def test_the_version_lives_in_one_place() -> None:
    # pyproject.toml has no version of its own: setuptools reads reslab.__version__.
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    path = Path(__file__).parents[1] / "pyproject.toml"
    assert "version" in pyprojecttoml.read_configuration(path, expand=False)["project"]["dynamic"]
    project = pyprojecttoml.read_configuration(path, expand=True)["project"]
    assert project["version"] == reslab.__version__
