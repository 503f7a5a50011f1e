"""tests/conftest.py's rules for running the suite under pytest-xdist: the machine lock that lets
a test measure the machine alone, and the names the rules give, which must name real tests."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from conftest import ALONE, NOTEBOOKS, RAY_MODULES, _machine

ROOT = Path(__file__).resolve().parents[1]


def _enter(folder: Path, alone: bool, inside: threading.Event, leave: threading.Event) -> None:
    with _machine(folder, alone):
        inside.set()
        leave.wait(10)


class _Test:
    """A test in another worker: a thread holding the machine lock until told to leave."""

    def __init__(self, folder: Path, alone: bool) -> None:
        self.inside, self.leave = threading.Event(), threading.Event()
        args = (folder, alone, self.inside, self.leave)
        self.thread = threading.Thread(target=_enter, args=args, daemon=True)
        self.thread.start()

    def done(self) -> None:
        self.leave.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_tests_share_the_machine_and_an_alone_test_waits_for_them(tmp_path: Path) -> None:
    first, second = _Test(tmp_path, False), _Test(tmp_path, False)
    assert first.inside.wait(10) and second.inside.wait(10)  # tests run side by side
    alone = _Test(tmp_path, True)
    time.sleep(0.3)
    assert not alone.inside.is_set()  # not while another test runs
    first.done()
    time.sleep(0.3)
    assert not alone.inside.is_set()
    second.done()
    assert alone.inside.wait(10)
    alone.done()


def test_no_test_starts_beside_an_alone_test_nor_while_it_waits(tmp_path: Path) -> None:
    running = _Test(tmp_path, False)
    assert running.inside.wait(10)
    alone = _Test(tmp_path, True)
    time.sleep(0.3)
    # The other worker ends its test and asks for the next: without the turnstile it would get
    # the shared lock at once (flock favours no one), and the alone test might wait for ever.
    later = _Test(tmp_path, False)
    time.sleep(0.3)
    assert not later.inside.is_set() and not alone.inside.is_set()
    running.done()
    assert alone.inside.wait(10)
    time.sleep(0.3)
    assert not later.inside.is_set()  # not beside the alone test either
    alone.done()
    assert later.inside.wait(10)
    later.done()


@pytest.mark.parametrize("nodeid", ALONE)
def test_each_alone_name_is_a_real_test(nodeid: str) -> None:
    """A renamed test would quietly lose its lock: the names must stay those of real tests."""
    path, name = nodeid.split("::")
    function, _, param = name.partition("[")
    spec = importlib.util.spec_from_file_location("alone_module", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    test = getattr(module, function)
    if param:
        marks = [mark for mark in test.pytestmark if mark.name == "parametrize"]
        ids = {str(v) for mark in marks for v in mark.args[1]}
        assert param.rstrip("]") in ids


def _modules_saying(*needles: str) -> set[str]:
    found = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        if path == Path(__file__).resolve():  # this file names the needles
            continue
        text = path.read_text(encoding="utf-8")
        if any(needle in text for needle in needles):
            found.add(path.relative_to(ROOT).as_posix())
    return found


def test_ray_heads_and_notebook_kernels_start_in_one_module_each() -> None:
    """`--dist loadscope` runs a module in one worker: two modules starting Ray heads, or two
    starting notebook kernels, could run side by side and fight over ports."""
    assert _modules_saying('"--head"', "ray.init(") == set(RAY_MODULES)
    assert _modules_saying("nbclient", "NotebookClient", "jupyter_client") == set(NOTEBOOKS)
