"""Devices and the process-wide switches a run sets and restores."""

from __future__ import annotations

import json
import math
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


AVX2 = {"sse4_2", "avx", "avx2", "fma"}  # this project's EPYC VM (lscpu)
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}  # the issue author's EPYC: AVX-512-bf16, no AMX
SAPPHIRE = AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


def _probe(ratio: float, calls: list[int]) -> Callable[[], float]:
    def speedup() -> float:
        calls.append(1)
        return ratio

    return speedup


def test_auto_precision_is_fp32_without_native_bf16_and_never_probes() -> None:
    from reslab.train.runtime import choose_cpu_precision

    calls: list[int] = []
    choice = choose_cpu_precision(AVX2, _probe(9.0, calls))
    assert not choice.bf16 and choice.why.startswith("fp32") and "no native bf16" in choice.why
    assert calls == []  # the probe costs time: not where the flags rule bf16 out


@pytest.mark.parametrize(("flags", "native"), [(ZEN4, "avx512_bf16"), (SAPPHIRE, "amx_bf16")])
@pytest.mark.parametrize("ratio", [0.7, 1.0, 1.6])
def test_auto_precision_with_native_bf16_follows_the_probe(
    flags: set[str], native: str, ratio: float
) -> None:
    from reslab.train.runtime import choose_cpu_precision

    calls: list[int] = []
    choice = choose_cpu_precision(flags, _probe(ratio, calls))
    assert calls == [1]
    assert choice.bf16 == (ratio > 1.0)
    assert choice.why.startswith("bf16" if ratio > 1.0 else "fp32") and native in choice.why


def test_resolve_runtime_auto_on_cpu_reads_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from reslab.train import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_cpu_features", lambda: frozenset(AVX2))
    fast = runtime.resolve_runtime(TrainConfig(), cpu)
    assert fast.amp_dtype is None and "no native bf16" in fast.precision_note
    monkeypatch.setattr(runtime, "_cpu_features", lambda: frozenset(ZEN4))
    monkeypatch.setattr(runtime, "bf16_speedup", lambda threads: 1.5)
    fast = runtime.resolve_runtime(TrainConfig(), cpu)
    assert fast.amp_dtype is torch.bfloat16 and "1.5x fp32" in fast.precision_note
    asked = runtime.resolve_runtime(TrainConfig(precision="fp32"), cpu)
    assert asked.amp_dtype is None and asked.precision_note == ""  # asked for: no reason shown


def test_this_machines_auto_precision_matches_its_flags() -> None:
    from reslab.cpu import cpu_flags
    from reslab.train.runtime import NATIVE_BF16_FLAGS, resolve_runtime

    if set(NATIVE_BF16_FLAGS) & cpu_flags():
        pytest.skip("this CPU runs bf16 natively: the choice depends on the probe")
    assert resolve_runtime(TrainConfig(), torch.device("cpu")).amp_dtype is None


def test_the_bf16_probe_measures_a_ratio_once_per_thread_count() -> None:
    from reslab.train.runtime import bf16_speedup

    bf16_speedup.cache_clear()
    ratio = bf16_speedup(1, batch=4)  # small: this test's CPU may emulate bf16
    assert math.isfinite(ratio) and ratio > 0
    assert bf16_speedup(1, batch=4) == ratio and bf16_speedup.cache_info().hits == 1


def test_the_compile_note_says_what_it_costs_and_when_it_pays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reslab.train import runtime

    monkeypatch.setattr(runtime, "CPU_COMPILE_COST", {8: (30.0, 50.0, 50.0), 56: (100.0, 300, 200)})
    never = runtime.compile_cost_note("resnet8", 1000)
    assert "about 30 s" in never and "never pays off" in never and "depth-8" in never
    pays = runtime.compile_cost_note("plain110", 500)  # nearest measured depth: 56
    assert "about 100 s" in pays and "depth-56" in pays
    assert "after about 1,000 steps (more than this run's 500)" in pays
    assert "(within this run's 5,000)" in runtime.compile_cost_note("resnet56", 5000)
    monkeypatch.setattr(runtime, "CPU_COMPILE_COST", {56: (96.2, 178.9, 178.3)})
    # 160,333 steps from two measured figures: said with the digits they carry
    assert "after about 160,000 steps" in runtime.compile_cost_note("resnet56", 1100)


def test_a_cpu_run_with_compile_prints_the_cost_before_compiling(
    small: Callable[..., TrainConfig],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[str] = []

    def lazy_compile(model: Any, **kw: Any) -> Any:
        """torch.compile's contract, without its minutes on a CPU: it compiles at the first
        call, which is when the real one would start."""

        def first_call(*args: Any) -> Any:
            if not calls:
                print("compiling now")
            calls.append(kw["mode"])
            return model(*args)

        return first_call

    monkeypatch.setattr(torch, "compile", lazy_compile)
    fit(small(epochs=1, steps=2, compile=True, quiet=False))
    out = capsys.readouterr().out
    assert calls and "--compile on a CPU: about" in out
    assert out.index("--compile on a CPU: about") < out.index("compiling now")
