"""How reslab shares the CPU: the cores this process may use, split without overlap, and an
OpenMP runtime that yields its core instead of spinning on it.

Two things made training collapse on a busy machine (docs/PERFORMANCE.md, "A busy machine"):

* **Spin-waiting.** PyTorch's CPU kernels run on OpenMP (libgomp in the pip wheels). A thread
  that finishes its share of a parallel region spins for up to ~300,000 iterations before it
  sleeps, waiting for the others at the barrier. When another process holds one of the cores,
  the thread it waits for is descheduled, and the spinner burns its whole time slice for
  nothing — on every one of the thousands of small parallel regions of a ResNet step. Passive
  waiting (``OMP_WAIT_POLICY=PASSIVE``) sleeps at once and gives the core away. It changes
  when a thread waits, not how the work is split, so weights are bit-identical either way.
  libgomp reads the variable once, when it is loaded, so it must be set before torch is
  imported: :func:`configure_openmp` runs on ``import reslab`` (first, before torch) and leaves
  any value the user set alone.
* **More threads than cores.** ``os.cpu_count()`` counts the machine, not the cores a
  container or ``taskset`` lets this process use. :func:`available_cores` reads the affinity
  mask and a cgroup CPU quota, and study workers get disjoint sets of those cores
  (:func:`split_cores`), so two workers never share one core while another idles.

A third cause is not in the process at all: **cores other processes keep busy.** Two threads
on two cores that two other processes also want finish each parallel region only when the
scheduler has given both a turn; one thread then trains faster (docs/PERFORMANCE.md).
:func:`default_threads` therefore counts the cores left free by others, measured when a run
starts, and the run records the count it chose (``threads`` in its ``config.json``), so its
resume, or a rerun from its folder, computes the same thing whatever the load is then.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "available_cores",
    "busy_cores",
    "configure_openmp",
    "core_queue",
    "cpu_flags",
    "cpu_name",
    "cpu_summary",
    "default_threads",
    "pin_to",
    "pin_worker",
    "split_cores",
    "worker_threads",
]

#: The OpenMP settings that decide how an idle thread waits; if the user set any, theirs stand.
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def configure_openmp() -> bool:
    """Ask OpenMP to wait passively, unless the user chose a policy or torch is loaded already
    (then it is too late: the runtime has read its settings). Returns whether it was set."""
    if "torch" in sys.modules or any(v in os.environ for v in _WAIT_VARIABLES):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags the kernel lists for this CPU (``avx2``, ``avx512_bf16``,
    ``amx_bf16``, ...), or an empty set where there is no ``/proc/cpuinfo`` to read."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as ``lscpu`` shows it (``platform.processor()`` is empty on most
    Linux systems), or ``"CPU"`` where there is no ``/proc/cpuinfo`` to read."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return "CPU"


#: The vector and matrix extensions that decide CPU speed figures, widest first: figures from
#: an AVX2 machine and an AMX machine are not comparable, so every benchmark names them.
_ISA_NAMES = (("amx_bf16", "AMX-bf16"), ("avx512_bf16", "AVX-512-bf16"), ("avx512f", "AVX-512"),
              ("avx2", "AVX2"))  # fmt: skip


def cpu_summary(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The model name and its widest vector extensions, e.g. ``"AMD EPYC (AVX2)"`` or
    ``"Intel Xeon Platinum 8480+ (AMX-bf16, AVX-512-bf16, AVX-512, AVX2)"``."""
    flags = cpu_flags(cpuinfo)
    isa = [name for flag, name in _ISA_NAMES if flag in flags]
    return f"{cpu_name(cpuinfo)} ({', '.join(isa) or 'no AVX2'})"


def _affinity() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # macOS and Windows have no affinity call


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self")) -> float:
    """CPUs' worth of time the process's cgroup may use (inf when unlimited or unknown).

    cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") of the process's own group and its
    ancestors, or cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    """
    limit = math.inf
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return limit
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts
        if hierarchy == "0" and controllers == "":  # cgroup v2: the quota of every ancestor
            folder = root / group.lstrip("/")
            while True:
                limit = min(limit, _read_quota_v2(folder / "cpu.max"))
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "cpu" in controllers.split(","):
            for base in (root / "cpu", root / "cpu,cpuacct"):
                limit = min(limit, _read_quota_v1(base / group.lstrip("/")), _read_quota_v1(base))
    return limit


def _read_quota_v2(path: Path) -> float:
    try:
        quota, period = path.read_text().split()[:2]
        return math.inf if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return math.inf


def _read_quota_v1(folder: Path) -> float:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return math.inf if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return math.inf


def available_cores() -> list[int]:
    """The CPU ids this process may run on: its affinity mask, cut to a cgroup CPU quota
    (rounded up: a quota of 1.5 CPUs still runs two threads at 75 % each)."""
    cores = _affinity()
    quota = _cgroup_quota()
    if math.isfinite(quota):
        cores = cores[: max(1, math.ceil(quota))]
    return cores


def _niced() -> bool:
    """Whether this process runs at a lower priority than a default one (``nice`` > 0)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):  # Windows has no getpriority
        return False


def _core_ticks(
    cores: list[int], stat: Path, nice_is_busy: bool = True
) -> tuple[int, int, int] | None:
    """(busy, total) clock ticks of ``cores`` since boot and how many of them /proc/stat
    lists; None if it cannot be read or lists none of them. Malformed lines are skipped.

    ``nice_is_busy=False`` counts the time of niced processes (``nice`` > 0) as free: the
    scheduler gives a default-priority thread the core whenever it wants it (at nice 19 the
    other gets ~1.5 %), so background jobs run under ``nice`` take nothing from the run.
    """
    try:
        lines = stat.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    wanted = {f"cpu{c}" for c in cores}
    busy = total = found = 0
    for line in lines:
        name, *fields = line.split() or [""]
        if name not in wanted or len(fields) < 4:
            continue
        try:
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            ticks = [int(f) for f in fields[:8]]
        except ValueError:
            continue
        total += sum(ticks)
        free = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle, iowait
        busy += sum(ticks) - free - (0 if nice_is_busy else ticks[1])
        found += 1
    return (busy, total, found) if total > 0 else None


def busy_cores(cores: list[int], window: float = 0.2, stat: Path = Path("/proc/stat")) -> float:
    """How many of ``cores`` other processes kept busy over the next ``window`` seconds; 0.0
    where /proc/stat cannot be read (macOS, Windows: then no time is spent waiting).

    This process's own CPU time is subtracted whole, so ``cores`` should be every CPU the
    process may run on (as :func:`default_threads` passes its affinity mask). Niced processes
    count as busy only when this one is niced too: then they are its peers.
    """
    nice_is_busy = _niced()
    before = _core_ticks(cores, stat, nice_is_busy)
    if before is None:
        return 0.0
    own, start = time.process_time(), time.monotonic()
    time.sleep(window)
    after = _core_ticks(cores, stat, nice_is_busy)
    own, wall = time.process_time() - own, time.monotonic() - start
    if after is None or after[1] <= before[1]:
        return 0.0
    share = (after[0] - before[0]) / (after[1] - before[1])  # busy fraction of those cores
    share = min(1.0, max(0.0, share))  # counters that stepped back (a CPU went offline)
    return max(0.0, share * after[2] - own / max(wall, 1e-9))


def default_threads(requested: int, cores: list[int] | None = None) -> int:
    """The threads a run gets when it names none: ``requested`` (torch's count, or the
    caller's), cut to the usable ``cores`` and then to the CPUs other processes leave free
    (rounded to the nearest one, at least one).

    Free CPUs are counted over the whole affinity mask, not over ``cores``: under a cgroup
    quota of 2 CPUs on a 64-CPU host the process may run on any of the 64, so two busy ones
    do not make it a one-thread run. (Other processes of the same cgroup, which share its
    quota, are not told apart from the rest of the host.)
    """
    cores = available_cores() if cores is None else cores
    most = min(requested, len(cores))
    if most <= 1:
        return 1
    return max(1, min(most, math.floor(_free_cpus() + 0.5)))


def worker_threads(jobs: int, cores: list[int] | None = None) -> int:
    """The threads of each of a study's ``jobs`` CPU workers: its share of the usable
    ``cores``, cut to its share of the CPUs other processes leave free, as
    :func:`default_threads` cuts a single run's. Measured once, as the study starts, so
    every run of the study computes with one count (each run records it).

    One thread per worker (at least as many jobs as cores, a study's default) needs no
    measurement: it cannot be cut, and the study trains the same weights on any load.
    """
    cores = available_cores() if cores is None else cores
    share = max(1, len(cores) // max(1, jobs))
    if share <= 1:
        return 1
    return max(1, min(share, math.floor(_free_cpus() / jobs + 0.5)))


def _free_cpus() -> float:
    """CPUs of the whole affinity mask that other processes leave free (see above)."""
    mask = _affinity()
    return len(mask) - busy_cores(mask)


def split_cores(jobs: int, cores: list[int] | None = None) -> list[list[int]]:
    """``jobs`` disjoint, contiguous sets of the available cores, as even as can be.

    With more jobs than cores each job gets one core, round robin (they must then share).
    """
    cores = available_cores() if cores is None else cores
    if jobs >= len(cores):
        return [[cores[i % len(cores)]] for i in range(jobs)]
    size, extra = divmod(len(cores), jobs)
    sets, start = [], 0
    for i in range(jobs):
        end = start + size + (1 if i < extra else 0)
        sets.append(cores[start:end])
        start = end
    return sets


def pin_to(cores: list[int]) -> None:
    """Run this process (and the threads it starts later) on ``cores`` only, where the OS can."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def core_queue(context: Any, jobs: int) -> Any:
    """A queue of :func:`split_cores`' sets for a pool of ``jobs`` workers started from
    ``context``; each worker takes one in :func:`pin_worker`, its initializer."""
    queue = context.Queue()
    for cores in split_cores(jobs):
        queue.put(cores)
    return queue


def pin_worker(queue: Any) -> None:
    """Pool initializer: pin this worker to the next free set of cores (see :func:`core_queue`)."""
    pin_to(queue.get())
