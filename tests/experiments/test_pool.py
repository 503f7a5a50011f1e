"""The one worker pool: tasks in order, switches restored, and no re-run of the user's script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import reslab
from reslab.experiments import pool

SRC = Path(reslab.__file__).resolve().parents[1]  # the workers import the reslab under test


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _threads_now() -> int:
    return torch.get_num_threads()


def test_run_tasks_keeps_the_order_and_reports_each_task_once() -> None:
    seen: dict[int, int] = {}
    out = pool.run_tasks(
        _square,
        [(i,) for i in range(5)],
        pool.Workers(2, "cpu", threads=1),
        done=lambda i, result: seen.setdefault(i, result[0]),
    )
    assert [o[0] for o in out] == [0, 1, 4, 9, 16]
    assert seen == {i: i * i for i in range(5)}
    assert os.getpid() not in {o[1] for o in out}  # in worker processes


def test_one_job_runs_in_this_process() -> None:
    out = pool.run_tasks(_square, [(3,), (4,)], pool.Workers(1, "cpu", threads=1))
    assert out == [(9, os.getpid()), (16, os.getpid())]


def test_measuring_restores_the_thread_count_and_denormals() -> None:
    before = torch.get_num_threads()
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal
    with pool.measuring(1):
        assert torch.get_num_threads() == 1
        assert float(tiny * 1.0) == 0.0 or not torch.set_flush_denormal(True)
    assert torch.get_num_threads() == before
    assert float(tiny * 1.0) != 0.0  # flushing is off again


def test_measure_all_gives_each_worker_its_thread_count() -> None:
    out = pool.measure_all(_threads_now, [(), ()], "cpu", jobs=2)
    assert out == [1, 1] or len(os.sched_getaffinity(0)) > 2


def test_the_error_of_a_task_reaches_the_caller() -> None:
    with pytest.raises(ZeroDivisionError):
        pool.run_tasks(divmod, [(1, 0), (4, 2)], pool.Workers(2, "cpu", threads=1))


def test_a_script_without_a_main_guard_runs_a_study(tmp_path: Path) -> None:
    """The README's snippet saved as a script: spawned workers used to re-run it (the banner
    printed once per worker) and die bootstrapping, ~155 lines of traceback."""
    script = tmp_path / "study.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import reslab
            print("banner")
            config = reslab.StudyConfig(
                experiment="degradation", depths=(8, 14), seeds=(0,), steps=2, jobs=2,
                width=0.25, device="cpu", out={str(tmp_path / "deg")!r},
            )
            results = reslab.run_study(config, log=lambda line: None)
            print("runs", len(results["runs"]))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["banner", "runs", "4"]
    assert "Traceback" not in done.stderr
