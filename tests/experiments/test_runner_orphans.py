"""kill -9 of a study's parent: its workers and the resource tracker die with it, and a rerun
finishes the study without redoing the runs that had finished (issue 11, class 6)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reslab
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.runner import execute

SRC = Path(reslab.__file__).resolve().parents[1]  # the study runs the reslab under test
GRACE_S = 5.0  # the watchdog polls every 0.5 s; the parent-death signal is immediate

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, start time) of a live, non-zombie process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (int(fields[1]), fields[19])


def _children(parent: int) -> dict[int, str]:
    """pid -> start time of every live process whose parent is ``parent``."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None and info[0] == parent:
                found[int(entry)] = info[1]
    return found


def _study(out: Path) -> StudyConfig:
    """4 runs of 8 steps; the same settings as the command line below."""
    return StudyConfig(
        depths=(8, 14), seeds=(0,), width=0.25, steps=8, batch_size=16, jobs=1, out=str(out)
    )


def _study_args(out: Path) -> list[str]:
    return [
        "degradation", "--depths", "8,14", "--seeds", "0", "--width", "0.25", "--steps", "8",
        "--batch-size", "16", "--jobs", "2", "--out", str(out),
    ]  # fmt: skip


def test_kill9_of_the_study_parent_leaves_no_orphans_and_the_rerun_finishes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    study = subprocess.Popen(
        [sys.executable, "-m", "reslab", *_study_args(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the test can clean up the whole group if it fails
    )
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180  # a loaded machine
        # Kill once a run has finished and the workers are training the queued ones.
        while not list(out.glob("runs/*/result.json")):
            assert study.poll() is None and time.monotonic() < deadline, "the study did not start"
            seen.update(_children(study.pid))
            time.sleep(0.05)
        seen.update(_children(study.pid))
        assert len(seen) >= 3, seen  # two workers and the resource tracker
        finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
        study.send_signal(signal.SIGKILL)
        study.wait()
        grace = time.monotonic() + GRACE_S
        alive = seen
        while alive and time.monotonic() < grace:
            time.sleep(0.1)
            alive = {p: t for p, t in seen.items() if (_stat(p) or (0, ""))[1] == t}
        assert not alive, f"orphans still running {GRACE_S} s after the kill: {sorted(alive)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(study.pid, signal.SIGKILL)
    assert len(finished) < 4  # the kill came with runs left to train

    # The rerun, cut to what is tested (the analysis costs 30 s here, each run a few): the
    # finished runs, read again, and a run a worker had started (and may have locked).
    config = _study(out)
    specs = get_study("degradation").plan(config)
    busy = [s for s in specs if (out / "runs" / s.name).is_dir()]  # started (maybe locked)
    done = {p.parent.name for p in finished}
    chosen = [s for s in specs if s.name in done] + [s for s in busy if s.name not in done][:1]
    assert len(chosen) == len(done) + 1
    records = execute(config, chosen, log=lambda _: None)
    assert [r["status"] for r in records] == ["finished"] * len(chosen)  # no "in use by ..."
    # The runs that had finished were read, not trained again.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
