"""Ctrl-C and SIGTERM mean stop (issue 20, class 2): ``reslab train`` stops at the next step
with a checkpoint, says in one line how to resume, exits 130/143, and the resume ends with the
weights of the uninterrupted run; a second signal ends the process at once.

(The studies' workers: tests/experiments/test_pool_stop.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reslab
import reslab.train.loop as loop
from reslab import stop
from reslab.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from same_run import differences  # noqa: E402

# 2 epochs of 11 steps: resnet8 at a quarter width on the bundled digits, deterministic.
ARGS = ["--model", "resnet8", "--width", "0.25", "--dataset", "digits", "--epochs", "2"]
ARGS += ["--deterministic", "--threads", "1", "--quiet"]
STEPS = 22


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stop") / "whole"
    assert main(["train", *ARGS, "--out", str(out)]) == 0
    return out


def _signal_at(monkeypatch: pytest.MonkeyPatch, signum: int, step: int) -> None:
    """A real signal to this process: while the data load (step 0), after training step
    ``step``, or while the run finishes (step ``STEPS``)."""

    def send() -> None:
        os.kill(os.getpid(), signum)

    def wrap(name: str, when: Any) -> None:
        real = getattr(loop, name)

        def hooked(*args: Any, **kw: Any) -> Any:
            if when(args):
                send()
            return real(*args, **kw)

        monkeypatch.setattr(loop, name, hooked)

    if step == 0:
        wrap("load_data", lambda args: True)
    elif step == STEPS:
        wrap("finish", lambda args: True)
    else:
        wrap("snapshot", lambda args: args[0].state.step == step)


@pytest.mark.slow  # 6 examples of two real runs each: about 20 s on 2 idle cores
@settings(max_examples=6)
@given(signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]), step=st.integers(0, STEPS))
def test_a_signal_at_any_step_stops_with_one_line_and_the_resume_is_identical(
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    step: int,
) -> None:
    out = tmp_path / f"run-{signum}-{step}"
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _signal_at(patch, signum, step)
        code = main(["train", *ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 128 + signum
    what = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    if step == 0:  # stopped before the folder held a run: nothing to resume
        assert err == [f"reslab: {what}"]
        assert main(["train", *ARGS, "--out", str(out)]) == 0
    else:
        assert err == [f"reslab: {what}; resume with: reslab train --resume {out}"]
        # committed at that step: mid-epoch by the stop, at an epoch's end by the epoch end
        assert (out / "checkpoints" / f"step-{step:09d}.json").is_file()
        assert main(["train", "--resume", str(out)]) == 0
    assert differences(out, reference) == []


_STOP = ROOT / "src" / "reslab" / "stop.py"
# reslab.stop alone, without the package (and torch): a process that starts in milliseconds.
_SCRIPT = textwrap.dedent(
    f"""
    import importlib.util, os, signal, sys, time
    spec = importlib.util.spec_from_file_location("stop", {str(_STOP)!r})
    stop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stop)
    with stop.handling(["train", "--out", "x"]):
        stop.resume_with(lambda: "reslab train --resume x")
        with stop.deferring():
            os.kill(os.getpid(), int(sys.argv[1]))
            assert stop.requested()  # deferred: the loop below stands for a step
            print("deferred", flush=True)
            os.kill(os.getpid(), int(sys.argv[2]))
            time.sleep(30)
    """
)


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (2, 15), (15, 15)])
def test_a_second_signal_ends_the_process_at_once_with_one_line(first: int, second: int) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert time.monotonic() - started < 10  # not the 30 s the "step" sleeps
    assert done.stdout == "deferred\n"
    assert done.returncode == 128 + second
    name = "interrupted" if second == signal.SIGINT else "stopped by SIGTERM"
    assert done.stderr == f"reslab: {name}; resume with: reslab train --resume x\n"


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_ctrl_c_while_the_command_loads_prints_one_line_and_no_traceback() -> None:
    """A signal while ``import reslab`` loads torch: the first 1.5-2 s of every command."""
    env = {**os.environ, "PYTHONPATH": str(Path(reslab.__file__).parents[1])}
    # The command is recognised by its name (or -m reslab); then reslab.cli, torch and all.
    script = "import sys; sys.argv[0] = 'reslab'; import reslab.cli; print('loaded')"
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not _catches(process.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.001)  # Python catches SIGINT itself; SIGTERM only once reslab.stop does
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert out == b""  # it never finished loading
    assert err == b"reslab: interrupted\n"
    assert process.returncode == 130


def test_a_library_caller_keeps_pythons_keyboard_interrupt() -> None:
    """Without the CLI (a user's script, a notebook), nothing is installed: deferring is a
    no-op and Ctrl-C is Python's KeyboardInterrupt, where it hits."""
    before = signal.getsignal(signal.SIGINT)
    with stop.deferring():
        assert signal.getsignal(signal.SIGINT) is before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert not stop.requested()
