"""reslab.cpu: the cores a process may use, split without overlap, and OpenMP's wait policy."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from reslab import cpu


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in cpu._WAIT_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_sets_passive_waiting_before_torch_loads() -> None:
    code = "import os, reslab, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(code) == "PASSIVE"


@pytest.mark.slow
def test_a_users_own_wait_settings_stand() -> None:
    code = "import os, reslab; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _python(code, GOMP_SPINCOUNT="1000") == "None"


@pytest.mark.slow
def test_too_late_once_torch_is_loaded() -> None:
    code = "import os, torch, reslab; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(code) == "None"


def _cgroup_v2(tmp_path: Path, quota: str, parent: str | None = None) -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (root / "a" / "b").mkdir(parents=True)
    proc.mkdir()
    (proc / "cgroup").write_text("0::/a/b\n")
    (root / "a" / "b" / "cpu.max").write_text(quota)
    if parent is not None:
        (root / "a" / "cpu.max").write_text(parent)
    return root, proc


@pytest.mark.parametrize(
    ("quota", "parent", "expected"),
    [
        ("max 100000\n", None, math.inf),
        ("150000 100000\n", None, 1.5),
        ("max 100000\n", "50000 100000\n", 0.5),  # an ancestor's quota binds too
        ("300000 100000\n", "100000 100000\n", 1.0),
        ("garbage\n", None, math.inf),
    ],
)
def test_cgroup_v2_quota(tmp_path: Path, quota: str, parent: str | None, expected: float) -> None:
    root, proc = _cgroup_v2(tmp_path, quota, parent)
    assert cpu._cgroup_quota(root, proc) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    group = root / "cpu" / "docker" / "x"
    group.mkdir(parents=True)
    proc.mkdir()
    (proc / "cgroup").write_text("4:cpu,cpuacct:/docker/x\n1:memory:/docker/x\n")
    (group / "cpu.cfs_quota_us").write_text("250000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu._cgroup_quota(root, proc) == 2.5
    (group / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cpu._cgroup_quota(root, proc) == math.inf


def test_available_cores_obey_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_affinity", lambda: [0, 2, 4, 6])
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 1.5)
    assert cpu.available_cores() == [0, 2]
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 0.2)
    assert cpu.available_cores() == [0]
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: math.inf)
    assert cpu.available_cores() == [0, 2, 4, 6]


@pytest.mark.parametrize("jobs", [1, 2, 3, 5, 8, 9])
def test_split_cores_is_disjoint_and_covers(jobs: int) -> None:
    cores = list(range(8))
    sets = cpu.split_cores(jobs, cores)
    assert len(sets) == jobs
    assert all(sets)
    if jobs <= len(cores):
        flat = [c for s in sets for c in s]
        assert sorted(flat) == cores  # every core used once
        assert max(map(len, sets)) - min(map(len, sets)) <= 1
    else:
        assert {c for s in sets for c in s} == set(cores)


_STAT = """cpu  10 0 10 80 0 0 0 0 0 0
cpu0 100 5 20 800 40 1 2 3 0 0
cpu1 7 0 3 990 0 0 0 0 0 0
intr 12345
"""


def test_core_ticks_count_busy_and_total_per_core(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_STAT)
    # busy: user nice system irq softirq steal; idle and iowait are not busy
    assert cpu._core_ticks([0], stat) == (131, 971, 1)
    assert cpu._core_ticks([0, 1], stat) == (141, 1971, 2)
    assert cpu._core_ticks([7], stat) is None  # a core the file does not list
    assert cpu._core_ticks([0], tmp_path / "missing") is None


def test_core_ticks_count_niced_time_as_free_on_request(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_STAT)
    # cpu0's 5 nice ticks leave the busy count; the total stays
    assert cpu._core_ticks([0], stat, nice_is_busy=False) == (126, 971, 1)
    assert cpu._core_ticks([0, 1], stat, nice_is_busy=False) == (136, 1971, 2)


def test_niced_reads_this_process_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "getpriority", lambda which, who: 5)
    assert cpu._niced()
    monkeypatch.setattr(cpu.os, "getpriority", lambda which, who: 0)
    assert not cpu._niced()

    def refused(which: int, who: int) -> int:
        raise OSError("no")

    monkeypatch.setattr(cpu.os, "getpriority", refused)
    assert not cpu._niced()


@pytest.mark.parametrize("niced", [False, True])
def test_busy_cores_count_niced_others_only_when_niced_itself(
    monkeypatch: pytest.MonkeyPatch, niced: bool
) -> None:
    # Two cores kept busy by niced processes over the window: free for a default-priority
    # run (the scheduler gives it the cores), busy for a run that is niced itself.
    reads = iter([(0, 0, 2), None])

    def ticks(cores: list[int], stat: Path, nice_is_busy: bool = True) -> tuple[int, int, int]:
        read = next(reads)
        return read if read is not None else ((200 if nice_is_busy else 0), 200, 2)

    monkeypatch.setattr(cpu, "_niced", lambda: niced)
    monkeypatch.setattr(cpu, "_core_ticks", ticks)
    monkeypatch.setattr(cpu, "time", _Clock(0.0))
    assert cpu.busy_cores([0, 1], window=0.5) == (2.0 if niced else 0.0)


def test_core_ticks_skip_malformed_lines(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("\n   \ncpu0 1 2 3\ncpu0 x y z w\n" + _STAT + "cpu1\n")
    assert cpu._core_ticks([0, 1], stat) == (141, 1971, 2)
    stat.write_bytes(b"cpu0 \xff\xfe 1 2 3\n")
    assert cpu._core_ticks([0], stat) is None


def test_busy_cores_is_zero_where_proc_stat_is_unreadable(tmp_path: Path) -> None:
    assert cpu.busy_cores([0, 1], window=10.0, stat=tmp_path / "missing") == 0.0  # no wait


class _Clock:
    """time as busy_cores sees it: a window of 0.5 s in which this process used ``own`` s."""

    def __init__(self, own: float) -> None:
        self.wall = self.cpu = 0.0
        self.own = own

    def monotonic(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.wall += seconds
        self.cpu += self.own


@pytest.mark.parametrize(
    ("busy_ticks", "own", "expected"),
    [(100, 0.0, 2.0), (100, 0.5, 1.0), (50, 0.0, 1.0), (50, 0.5, 0.0), (0, 0.0, 0.0)],
)
def test_busy_cores_leaves_this_processs_own_time_out(
    monkeypatch: pytest.MonkeyPatch, busy_ticks: int, own: float, expected: float
) -> None:
    """Two cores over 0.5 s are 100 ticks; ``own`` s of them were this process's."""
    samples = iter([(0, 0, 2), (busy_ticks, 100, 2)])
    monkeypatch.setattr(cpu, "_core_ticks", lambda cores, stat, nice_is_busy: next(samples))
    monkeypatch.setattr(cpu, "time", _Clock(own))
    assert cpu.busy_cores([0, 1], window=0.5) == pytest.approx(expected)


_HOG = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "os.nice(int(sys.argv[2]))\n"
    "print('running', flush=True)\n"
    "while True: pass"
)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="no /proc/stat")
@pytest.mark.parametrize("nice", [0, 19])
def test_busy_cores_sees_another_process(nice: int) -> None:
    core = cpu.available_cores()[0]
    hog = subprocess.Popen(
        [sys.executable, "-c", _HOG, str(core), str(nice)], stdout=subprocess.PIPE
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"running\n"
        # The hog's core is busy whatever else shares it (this process only sleeps), unless
        # the hog is niced and this process is not: then the core is this run's for the asking.
        busy = cpu.busy_cores([core], window=0.5)
        if nice == 0 or cpu._niced():
            assert busy > 0.7
        else:
            assert busy < 0.3
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize(
    ("requested", "busy", "expected"),
    [
        (4, 0.0, 4),
        (4, 0.4, 4),
        (4, 1.0, 3),
        (4, 2.6, 1),
        (4, 4.0, 1),
        (2, 2.4, 2),
        (2, 3.4, 1),
        (8, 0.0, 4),
    ],
)
def test_default_threads_leave_busy_cores_alone(
    monkeypatch: pytest.MonkeyPatch, requested: int, busy: float, expected: int
) -> None:
    monkeypatch.setattr(cpu, "_affinity", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(cpu, "busy_cores", lambda cores, window=0.2: busy)
    assert cpu.default_threads(requested, [0, 1, 2, 3]) == expected


def test_under_a_quota_free_cpus_are_counted_over_the_whole_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 2-CPU quota on a 64-CPU host: two busy CPUs leave 62 the process may run on."""
    asked: list[list[int]] = []

    def busy(cores: list[int], window: float = 0.2) -> float:
        asked.append(cores)
        return 2.0

    monkeypatch.setattr(cpu, "_affinity", lambda: list(range(64)))
    monkeypatch.setattr(cpu, "busy_cores", busy)
    assert cpu.default_threads(8, [0, 1]) == 2
    assert asked == [list(range(64))]
    monkeypatch.setattr(cpu, "busy_cores", lambda cores, window=0.2: 63.4)
    assert cpu.default_threads(8, [0, 1]) == 1  # the host itself is full


def test_one_thread_needs_no_look_at_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(cores: list[int], window: float = 0.2) -> float:
        raise AssertionError("sampled the load for a one-thread run")

    monkeypatch.setattr(cpu, "busy_cores", never)
    assert cpu.default_threads(1, [0, 1, 2, 3]) == 1
    assert cpu.default_threads(6, [3]) == 1


@pytest.mark.parametrize(
    ("jobs", "busy", "expected"),
    [
        (1, 0.0, 4),  # one worker, idle machine: all four cores
        (1, 2.0, 2),  # two CPUs busy elsewhere: the two left
        (1, 3.8, 1),
        (2, 0.0, 2),  # two workers share the cores, and the free CPUs
        (2, 2.0, 1),
        (3, 0.0, 1),  # 4 // 3
    ],
)
def test_study_workers_share_the_cores_others_leave_free(
    monkeypatch: pytest.MonkeyPatch, jobs: int, busy: float, expected: int
) -> None:
    monkeypatch.setattr(cpu, "_affinity", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(cpu, "busy_cores", lambda cores, window=0.2: busy)
    assert cpu.worker_threads(jobs, [0, 1, 2, 3]) == expected


def test_one_thread_workers_need_no_look_at_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(cores: list[int], window: float = 0.2) -> float:
        raise AssertionError("sampled the load for one-thread workers")

    monkeypatch.setattr(cpu, "busy_cores", never)
    assert cpu.worker_threads(4, [0, 1, 2, 3]) == 1
    assert cpu.worker_threads(12, [0, 1]) == 1  # the default study: a worker per core


def _my_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


_BARRIER: Any = None


def _pin_and_keep_barrier(queue: Any, barrier: Any) -> None:
    global _BARRIER
    cpu.pin_worker(queue)
    _BARRIER = barrier


def _cores_once_all_workers_run() -> list[int]:
    # A worker blocked here cannot take the other task, so each task runs in its own
    # worker; a sleep instead flaked under load (one slow spawn, one worker ran both).
    _BARRIER.wait(timeout=120)
    return _my_cores()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_pool_workers_get_their_own_cores() -> None:
    cores = cpu.available_cores()
    jobs = min(2, len(cores))
    context = mp.get_context("spawn")
    queue = cpu.core_queue(context, jobs)
    barrier = context.Barrier(jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_pin_and_keep_barrier, initargs=(queue, barrier)
    ) as pool:
        futures = [pool.submit(_cores_once_all_workers_run) for _ in range(jobs)]
        seen = [f.result() for f in futures]
    assert sorted(map(tuple, seen)) == sorted(map(tuple, cpu.split_cores(jobs, cores)))


@pytest.mark.slow
def test_wait_policy_does_not_change_weights(tmp_path: Path) -> None:
    """Passive waiting changes when a thread waits, not how work is split: same weights."""
    outs = {}
    for name, env in (("passive", {}), ("spin", {"GOMP_SPINCOUNT": "300000"})):
        out = tmp_path / name
        args = "train --model resnet20 --width 0.25 --dataset digits --steps 4 --seed 3 --threads 2"
        code = (
            "import sys; from reslab.cli import main; "
            f"sys.exit(main({[*args.split(), '--quiet', '--out', str(out)]!r}))"
        )
        _python(code, **env)
        outs[name] = load_file(out / json.loads((out / "result.json").read_text())["weights"])
    assert outs["passive"].keys() == outs["spin"].keys()
    for key, tensor in outs["passive"].items():
        assert tensor.equal(outs["spin"][key]), key


def test_cpu_flags_read_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
        "\nprocessor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    )
    assert cpu.cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}
    assert cpu.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("name", "flags", "expected"),
    [
        ("AMD EPYC", "fpu sse avx2", "AMD EPYC (AVX2)"),
        ("Intel(R)   Xeon(R) 8480+", "avx2 avx512f avx512_bf16 amx_bf16 amx_tile",
         "Intel(R) Xeon(R) 8480+ (AMX-bf16, AVX-512-bf16, AVX-512, AVX2)"),
        ("", "sse sse2", "CPU (no AVX2)"),
    ],
)  # fmt: skip
def test_cpu_summary_names_the_model_and_its_widest_extensions(
    tmp_path: Path, name: str, flags: str, expected: str
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n")
    assert cpu.cpu_summary(info) == expected
    assert cpu.cpu_name(tmp_path / "missing") == "CPU"
