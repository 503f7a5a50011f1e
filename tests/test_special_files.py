"""Issue 20, class 4: inputs and outputs that are not regular files.

Every path reslab opens is classified first and opened without blocking
(:func:`reslab.checks.open_input`; a run's ``train.log`` through
:func:`reslab.fileio.open_append`, a run's JSON files through ``run_schema.read_bounded``,
neither following a symlink), then checked again on the descriptor. On the main of
2026-12-07 a FIFO as ``--weights`` or ``--config`` hung forever, a FIFO ``train.log`` hung the
study, a symlinked one appended outside the study, and odd entries ended in a traceback. A
:func:`deadline` turns a hang into a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reslab
from reslab.errors import ReslabError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.runner import _run_one, train_config
from reslab.train import RunFolder

SECONDS = 10


@contextlib.contextmanager
def deadline(seconds: int = SECONDS) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO."""

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _make(path: Path, kind: str, outside: Path) -> Any:
    """Put a ``kind`` of special file at ``path``; returns what must outlive the example."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    elif kind == "symlink-outside":
        outside.write_text("outside\n")
        os.symlink(outside, path)
    elif kind == "fifo-symlink":
        os.mkfifo(outside)
        os.symlink(outside, path)
    return None


KINDS = ("fifo", "directory", "dev-zero", "socket", "symlink-outside", "fifo-symlink")
NOT_FILES = ("fifo", "directory", "dev-zero", "socket", "fifo-symlink")


# --- inputs -------------------------------------------------------------------------------------


def test_a_fifo_as_weights_or_config_is_one_line_not_a_hang(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe")
    with deadline():
        for argv in (
            ["eval", "--weights", "pipe"],
            ["eval", "--weights", "pipe", "--model", "resnet8"],
            ["lesion", "--weights", "pipe", "--model", "resnet8", "--out", "s"],
            ["train", "--config", "pipe", "--out", "out"],
        ):
            assert "pipe" in (line := cli_error(argv)) and "FIFO" in line, line
        for call in (
            lambda: reslab.load_model("pipe"),
            lambda: reslab.load_weights(reslab.create_model("resnet8"), "pipe"),
        ):
            with pytest.raises(ReslabError, match="FIFO"):
                call()
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@given(
    kind=st.sampled_from(NOT_FILES),
    role=st.sampled_from(["eval", "lesion", "config", "load_model", "load_weights", "from"]),
)
def test_fuzz_special_files_at_every_input_path(tmp_path: Path, kind: str, role: str) -> None:
    """A FIFO, a folder, /dev/zero, a socket or a link to a FIFO, at each input path: one
    ReslabError line naming it, within the deadline."""
    path, outside = tmp_path / "x", tmp_path / "elsewhere"
    if role == "from":  # a study folder whose results.json is the special file
        path.mkdir()
        keep = _make(path / "results.json", kind, outside)
    else:
        keep = _make(path, kind, outside)
    model = reslab.create_model("resnet8")
    calls: dict[str, Callable[[], Any]] = {
        "eval": lambda: reslab.train.eval_run(weights=path, model="resnet8"),
        "lesion": lambda: StudyConfig(experiment="lesion", options={"weights": str(path)}),
        "config": lambda: reslab.train.load_config_file(path),
        "load_model": lambda: reslab.load_model(path),
        "load_weights": lambda: reslab.load_weights(model, path),
        "from": lambda: StudyConfig(experiment="lesion", options={"from_dir": str(path)}),
    }
    try:
        with deadline(), pytest.raises(ReslabError) as info:
            calls[role]()
            if role in ("lesion", "from"):
                get_study("lesion").check(calls[role]())
        assert "\n" not in str(info.value)
    finally:
        if keep is not None:
            keep.close()
        for p in (path / "results.json", path, outside):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif os.path.lexists(p):
                p.unlink()


# --- a study's run folders ----------------------------------------------------------------------


@pytest.fixture
def run_config(tmp_path: Path) -> Any:
    """The config of a study's first run, its folder made: the log is opened before the run
    is trained, resumed or read, so no training is needed to reach it."""
    study = StudyConfig(
        experiment="degradation", depths=(8, 14), seeds=(0,), width=0.25, steps=2,
        out=str(tmp_path / "study"),
    )  # fmt: skip
    config = train_config(study, get_study("degradation").plan(study)[0], 1)
    config.run_dir().mkdir(parents=True)
    return config


def test_a_study_run_folder_with_odd_entries_is_one_line(run_config: Any, tmp_path: Path) -> None:
    run = run_config.run_dir()
    log = run / "train.log"
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    os.symlink(outside, log)  # main appended the run's lines to outside.txt
    with deadline(), pytest.raises(ReslabError, match="symlink"):
        _run_one(run_config)
    assert outside.read_text() == "mine\n"
    log.unlink()
    os.mkfifo(log)  # main hung here: a FIFO with no reader
    with deadline(), pytest.raises(ReslabError, match="FIFO"):
        _run_one(run_config)
    log.unlink()
    log.mkdir()  # main: IsADirectoryError, a 37-line _RemoteTraceback through the pool
    with deadline(), pytest.raises(ReslabError, match=r"train\.log"):
        _run_one(run_config)
    log.rmdir()
    (tmp_path / "result.json").write_text('{"status": "finished"}')
    os.symlink(tmp_path / "result.json", run / "result.json")  # a link out of the run
    with deadline(), pytest.raises(ReslabError, match="symlink"):
        RunFolder(run).read_result()


def test_a_file_where_the_run_folder_belongs_is_one_line(run_config: Any) -> None:
    run_config.run_dir().rmdir()
    run_config.run_dir().write_text("not a folder")  # main: FileExistsError, a traceback
    with deadline(), pytest.raises(ReslabError, match=r"cannot use .* as a run folder"):
        _run_one(run_config)


@given(kind=st.sampled_from(KINDS))
def test_fuzz_special_files_as_a_runs_log(tmp_path: Path, kind: str) -> None:
    """Whatever is at a run's train.log that is not its own regular file: one line, within
    the deadline, and nothing outside the run written."""
    from reslab.fileio import open_append  # new with this class's fix

    log, outside = tmp_path / "train.log", tmp_path / "elsewhere"
    keep = _make(log, kind, outside)
    before = outside.read_bytes() if kind == "symlink-outside" else None
    try:
        with deadline(), pytest.raises(ReslabError) as info:
            open_append(log, "the run's log").close()
        assert "\n" not in str(info.value) and str(log) in str(info.value)
        if before is not None:
            assert outside.read_bytes() == before
    finally:
        if keep is not None:
            keep.close()
        for p in (log, outside):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif os.path.lexists(p):
                p.unlink()
