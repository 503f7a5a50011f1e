"""Ctrl-C and SIGTERM stop a study (issue 20, class 2): the queued runs never start, the runs in
flight commit a checkpoint and end, the study says in one line how to resume and exits 130/143
within seconds; a second signal ends it at once; nothing is left running; the rerun finishes.

(The trainer's side, and the mechanism itself: tests/test_stop.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reslab
from reslab.cli import main

SRC = Path(reslab.__file__).resolve().parents[1]  # the study runs the reslab under test
# 4 runs of 50 steps (11 an epoch), two at a time: each still in flight when its first epoch
# has committed.
ARGS = ["degradation", "--depths", "8,14", "--seeds", "0", "--width", "0.25", "--steps", "50"]
ARGS += ["--jobs", "2"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
]


def _start(out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "reslab", *ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )


def _training(out: Path, timeout: float = 240) -> None:
    """Wait until a run has committed a checkpoint: runs are in flight."""
    deadline = time.monotonic() + timeout
    while not list(out.glob("runs/*/checkpoints/last.json")):
        assert time.monotonic() < deadline, "no run started training"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(pgid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _group_alive(pgid)


def test_ctrl_c_stops_the_runs_at_a_checkpoint_and_the_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "study"
    study = _start(out)
    _training(out)
    os.killpg(study.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    sent = time.monotonic()
    _, err = study.communicate(timeout=120)
    took = time.monotonic() - sent
    assert study.returncode == 130, err
    command = " ".join(["reslab", *ARGS, "--out", str(out)])
    assert err.splitlines() == [f"reslab: interrupted; resume with: {command}"]
    assert took < 30, f"{took:.1f} s from Ctrl-C to exit"  # 2-4 s here; slack for loaded CI
    assert _gone(study.pid), "a worker outlived the study"
    runs = sorted(out.glob("runs/*"))
    assert 1 <= len(runs) <= 3  # the queued runs never started
    assert not list(out.glob("runs/*/result.json"))  # the runs in flight stopped, unfinished
    # The same command again, from this process (the stopped study's processes are all gone).
    assert main([*ARGS, "--out", str(out)]) == 0
    assert len(list(out.glob("runs/*/result.json"))) == 4
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("signum, group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_second_signal_ends_the_study_at_once(
    tmp_path: Path, signum: signal.Signals, group: bool
) -> None:
    """Two Ctrl-C's to the group (before: a hang, for good), or two SIGTERMs to the study."""
    out = tmp_path / "study"
    study = _start(out)
    _training(out)

    def send() -> None:
        if group:
            os.killpg(study.pid, signum)
        else:
            study.send_signal(signum)

    send()
    time.sleep(0.1)
    send()
    sent = time.monotonic()
    _, err = study.communicate(timeout=60)
    assert study.returncode == 128 + signum, err
    assert len(err.splitlines()) == 1 and "resume with: reslab degradation" in err, err
    assert time.monotonic() - sent < 10
    assert _gone(study.pid), "a worker outlived the study"
