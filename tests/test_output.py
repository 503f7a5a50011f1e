"""The console never stops the work (issue 20, class 5): a closed pipe, a narrow encoding or a
user's name full of escapes changes what is shown, never what is trained or saved."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_png
from reslab.cli import main
from reslab.output import View, fit, say

# What must never reach a terminal from a user's name: C0/C1 controls (ESC starts every ANSI
# sequence), bidi embeddings, overrides and isolates, invisible marks and separators.
FORBIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)
NASTY = [
    "\x1b[31m",
    "\x1b[2J\x1b[H",
    "\x1b]0;owned\x07",
    "\u202e",
    "\u2066",
    "\x07",
    "\r",
    "\x9b1m",
    "[bold]",
    "×±‖",
    "é",
]
FAULTS = ("closed stdout", "closed stderr", "both closed", "ascii", "latin-1")


@contextmanager
def faulty(fault: str) -> Iterator[Callable[[], str]]:
    """sys.stdout/sys.stderr under ``fault``; yields what was shown (for an encoding)."""
    saved = sys.stdout, sys.stderr
    opened: list[Any] = []

    def closed_pipe() -> io.TextIOWrapper:
        read, write = os.pipe()
        os.close(read)  # the reader went away (`| head -1` after its line)
        stream = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        opened.append(stream)
        return stream

    buffer = io.BytesIO()
    if fault in ("ascii", "latin-1"):
        sys.stdout = sys.stderr = io.TextIOWrapper(buffer, encoding=fault, errors="strict")
    else:
        sys.stdout = closed_pipe() if fault != "closed stderr" else saved[0]
        sys.stderr = closed_pipe() if fault != "closed stdout" else saved[1]

    def shown() -> str:
        sys.stdout.flush()
        return buffer.getvalue().decode(fault) if fault in ("ascii", "latin-1") else ""

    try:
        yield shown
    finally:
        sys.stdout, sys.stderr = saved
        for stream in opened:
            stream.close()  # its descriptor now points at /dev/null: nothing to raise


def names() -> st.SearchStrategy[str]:
    """A name as a user's data may spell it: letters around escapes, bidi overrides, markup."""
    piece = st.sampled_from(NASTY) | st.text("abc", min_size=1, max_size=3)
    return st.lists(piece, min_size=1, max_size=4).map(lambda p: "n" + "".join(p))


def check_shown(text: str, fault: str) -> None:
    assert not FORBIDDEN.search(text), repr(text)
    text.encode(fault)  # all of it can be written in the stream's encoding (else it raised)


# --- the writer -----------------------------------------------------------------------------------


@given(text=st.text(), encoding=st.sampled_from(["ascii", "latin-1", "cp1252", "utf-8"]))
def test_the_writer_shows_any_text_on_any_stream(text: str, encoding: str) -> None:
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding=encoding, errors="strict")
    View(stream).write(text + "\n")
    stream.flush()
    shown = buffer.getvalue().decode(encoding)
    assert not FORBIDDEN.search(shown), repr(shown)


def test_our_symbols_read_as_ascii() -> None:
    assert fit("1 × cpu, 2.0 ± 0.1, ‖∂L/∂x‖ ≥ 1", "ascii") == "1 x cpu, 2.0 +/- 0.1, ||dL/dx|| >= 1"
    assert fit("1 × cpu", "latin-1") == "1 × cpu"  # latin-1 has × and ±: kept
    assert fit("→ ✓", "no-such-codec") == "-> ?"


def test_a_closed_pipe_silences_the_writer_and_points_it_at_dev_null() -> None:
    read, write = os.pipe()
    os.close(read)
    stream = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    view = View(stream)
    for i in range(3):
        view.write(f"line {i}\n")  # the first raises EPIPE inside, the rest are dropped
    assert view.gone
    assert os.path.samestat(os.fstat(write), os.stat(os.devnull))
    stream.close()  # the interpreter's last flush: nothing to complain about


def test_say_goes_through_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer, encoding="ascii"))
    say("a\x1b[2J × \u202eb")
    sys.stdout.flush()
    assert buffer.getvalue() == b"a x b\n"


# --- every command that prints --------------------------------------------------------------------

TRAIN = ["train", "--model", "resnet8", "--width", "0.25", "--epochs", "1", "--threads", "1"]


def imagefolder(root: Path, classes: list[str]) -> Path:
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            for j in range(2):
                write_png(root / split / name / f"{j}.png", (8, 8), (60 * i + 20 * j, 0, 0))
    return root


def _train(tmp: Path, name: str) -> list[str]:
    data = imagefolder(tmp / "imgs", [name, f"other{name}"])
    return [*TRAIN, "--dataset", "imagefolder", "--data-dir", str(data), "--batch-size", "4"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run on an imagefolder whose class names are escapes, in an escape-named
    folder."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "run\x1b[2J\u202e"
    assert main([*_train(tmp, "\x1b[31mred\u202e"), "--out", str(out), "--quiet"]) == 0
    return out


def _command(name: str, tmp: Path, user: str, finished: Path) -> tuple[list[str], Path | None]:
    """The command line of ``name`` with ``user`` in its names, and the file it must save."""
    if name == "train":
        out = tmp / f"out{user}"
        return [*_train(tmp, user), "--out", str(out)], out / "result.json"
    if name == "resume":  # a run that must write its result again
        (finished / "result.json").unlink()
        return ["train", "--resume", str(finished)], finished / "result.json"
    if name == "eval":
        weights = finished / "checkpoints" / "best.safetensors"
        data = imagefolder(tmp / "imgs", [user, f"other{user}"])
        saved = tmp / f"eval{user}.json"
        argv = ["eval", "--weights", str(weights), "--data-dir", str(data), "--batch-size", "4"]
        return [*argv, "--json", str(saved)], saved
    if name == "bench":
        saved = tmp / f"bench{user}.json"
        argv = ["bench", "--model", "resnet8", "--steps", "1", "--warmup", "0", "--batch-size", "2"]
        # 8x8 images: its inference pass (6 batches of 1,024 images) took 25 s at 32x32.
        return [*argv, "--image-size", "8", "--threads", "1", "--json", str(saved)], saved
    if name == "explain":
        saved = tmp / f"explain{user}.png"
        return ["explain", "--figure", str(saved)], saved
    return ["models", "--filter", "resnet2"], None


@pytest.fixture
def in_process_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    import reslab.bench

    run_bench = reslab.bench.run_bench
    monkeypatch.setattr(reslab.bench, "run_bench", lambda cfg: run_bench(cfg, isolate=False))


@settings(max_examples=max(6, settings.default.max_examples // 4))  # about 1 s an example
@given(
    command=st.sampled_from(["train", "resume", "eval", "bench", "explain", "models"]),
    fault=st.sampled_from(FAULTS),
    user=names(),
)
def test_every_command_finishes_whatever_the_console(
    command: str,
    fault: str,
    user: str,
    tmp_path: Path,
    finished: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_process_bench: None,
) -> None:
    monkeypatch.delenv("RESLAB_QUIET", raising=False)  # print everything a user sees
    tmp = Path(tmp_path / f"{len(list(tmp_path.iterdir()))}")
    tmp.mkdir()
    argv, saved = _command(command, tmp, user, finished)
    with faulty(fault) as shown:
        code = main(argv)
        text = shown()
    assert code == 0
    assert saved is None or saved.is_file()
    check_shown(text, fault if fault in ("ascii", "latin-1") else "utf-8")
    if fault in ("ascii", "latin-1") and command != "bench":  # bench prints a table of numbers
        assert text.strip()


def test_a_closed_pipe_does_not_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails before the writer: the first epoch line raised BrokenPipeError out of `fit`."""
    monkeypatch.delenv("RESLAB_QUIET", raising=False)
    out = tmp_path / "run"
    with faulty("both closed"):
        code = main([*TRAIN, "--dataset", "digits", "--epochs", "2", "--out", str(out)])
    assert code == 0
    assert (out / "checkpoints" / "last.json").is_file()
    assert (out / "result.json").is_file()


def test_an_ascii_console_does_not_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails before the writer: `1 × cpu` in the first line raised UnicodeEncodeError."""
    monkeypatch.delenv("RESLAB_QUIET", raising=False)
    out = tmp_path / "run"
    with faulty("ascii") as shown:
        code = main([*TRAIN, "--dataset", "digits", "--out", str(out)])
        text = shown()
    assert code == 0 and (out / "result.json").is_file()
    assert "1 x cpu" in text and "finished" in text


def test_piped_to_head_the_process_exits_cleanly(tmp_path: Path) -> None:
    """`reslab train ... | head -1` with an ASCII stdout, as a real process: the run finishes,
    saves, exits 0, and the interpreter prints no 'Exception ignored ... BrokenPipeError'."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RESLAB_QUIET", None)
    argv = [*TRAIN, "--dataset", "digits", "--epochs", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reslab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline().decode("ascii")
    proc.stdout.close()  # head -1 exits
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "1 x cpu" in first
    assert err == ""
    assert (out / "result.json").is_file()


@pytest.mark.slow
def test_a_study_piped_to_a_closed_reader_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESLAB_QUIET", raising=False)
    out = tmp_path / "study\x1b[1m\u202e"
    argv = ["gradients", "--depths", "8", "--probe-steps", "0", "--steps", "2", "--width", "0.25"]
    with faulty("both closed"):
        assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
    with faulty("ascii") as shown:  # resumed: every run is read back, the report redrawn
        assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
        check_shown(shown(), "ascii")
