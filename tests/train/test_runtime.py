"""Devices and the process-wide switches a run sets and restores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reslab.errors import ConfigError
from reslab.train import (
    TrainConfig,
    fit,
    one_cpu_thread,
    resolve,
    setup,
)
from reslab.train.run_folder import RunFolder


def test_device_names() -> None:
    assert resolve({"device": "cuda:1"}).device == "cuda:1"  # a study worker's GPU
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve({"device": "gpu"})


def test_fit_restores_process_settings(small: Callable[..., TrainConfig], tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    fit(small(epochs=1, deterministic=True, threads=1, steps=3))
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def _switches() -> tuple[object, ...]:
    """Every process-wide switch setup() may change, read from torch itself."""
    return (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_anomaly_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )


def test_setup_restores_every_switch_it_sets() -> None:
    """The trainer's and the benchmark's one setup leaves the process as it found it."""
    torch.set_num_threads(1)
    before = _switches()
    config = resolve({"threads": 2, "deterministic": True, "detect_anomaly": True})
    with setup(config, torch.device("cpu")) as fast:
        assert torch.get_num_threads() == 2
        assert torch.are_deterministic_algorithms_enabled() and torch.is_anomaly_enabled()
        assert fast.channels_last and not fast.compile and not fast.cuda_graphs
        tiny = torch.tensor([1e-40])
        assert float(tiny * 1.0) == 0.0  # denormals flushed on CPU
    after = _switches()
    assert after == before
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0
    with pytest.raises(RuntimeError), setup(config, torch.device("cpu")):
        raise RuntimeError("a failing run restores the switches too")
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()


def test_gradient_accumulation_turns_cuda_graphs_off() -> None:
    """pytorch/pytorch#169545: cudagraph trees corrupt gradients accumulated over replays."""
    from reslab.train.runtime import resolve_runtime

    cuda = torch.device("cuda")  # resolving only: no CUDA device is touched with fp32
    assert resolve_runtime(TrainConfig(precision="fp32"), cuda).cuda_graphs
    assert not resolve_runtime(TrainConfig(precision="fp32", accum_steps=2), cuda).cuda_graphs
    assert resolve_runtime(TrainConfig(precision="fp32", accum_steps=2), cuda).compile


def test_default_threads_never_exceed_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr("reslab.train.runtime.available_cores", lambda: [5])  # a 1-CPU quota
        with setup(resolve({}), torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
        monkeypatch.setattr("reslab.train.runtime.available_cores", lambda: [0, 1, 2, 3])
        torch.set_num_threads(1)  # the caller's own choice stands when it is lower
        with setup(resolve({}), torch.device("cpu")):
            assert torch.get_num_threads() == 1
        with setup(resolve({"threads": 3}), torch.device("cpu")):  # --threads overrides
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_the_default_thread_count_is_recorded_and_resumed_with(
    small: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The default reads the load; the run folder keeps what it chose, so a resume on a
    machine whose load has changed trains on with the same count (and the same arithmetic)."""
    before = torch.get_num_threads()
    counts = iter([2])  # what the load allows at the start; a second look would fail
    monkeypatch.setattr("reslab.train.runtime.available_cores", lambda: [0, 1])
    monkeypatch.setattr(
        "reslab.train.runtime.default_threads", lambda requested, cores: next(counts)
    )
    try:
        torch.set_num_threads(2)
        config = small(threads=None, quiet=False)
        original = RunFolder.save_checkpoint
        commits: list[int] = []

        def commit_once(self: RunFolder, step: int, *args: Any) -> None:
            commits.append(step)
            if len(commits) > 1:  # stopped after the first commit, as kill -9 would
                raise KeyboardInterrupt
            original(self, step, *args)

        with monkeypatch.context() as patch:
            patch.setattr(RunFolder, "save_checkpoint", commit_once)
            with pytest.raises(KeyboardInterrupt):
                fit(config)
        folder = Path(config.out or "")
        assert json.loads((folder / "config.json").read_text())["threads"] == 2
        assert "(2 threads)" in capsys.readouterr().out
        fit(config, resume=True)  # threads still None: the saved 2 is used, not a new look
        assert f"resuming {folder}" in capsys.readouterr().out
        reference = fit(small("reference", threads=2))
    finally:
        torch.set_num_threads(before)
    resumed = load_file(folder / "checkpoints" / "last.safetensors")
    straight = load_file(reference.run_dir / "checkpoints" / "last.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_small_nets_run_on_one_cpu_thread_and_the_count_is_restored() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with one_cpu_thread(torch.device("cpu"), small=True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with one_cpu_thread(torch.device("cpu"), small=False):
            assert torch.get_num_threads() == 2
        with one_cpu_thread(torch.device("cuda"), small=True):  # a GPU's host threads stay
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_probes_of_a_digits_study_run_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from reslab.experiments import probing
    from reslab.experiments.config import StudyConfig

    seen: list[int] = []
    monkeypatch.setattr(probing, "_probe_all", lambda *args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        probing.probe_runs(StudyConfig(), [{"seed": 0}], probing.KINDS)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)  # probe_runs turns it on for the study's process
