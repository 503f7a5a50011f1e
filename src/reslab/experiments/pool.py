"""The one way a study runs many tasks at once: training runs, or measurements of many nets.

Small nets scale poorly across threads, so whole tasks in parallel beat threads per task: one
worker process per GPU, or per CPU core, each pinned to cores of its own
(:func:`reslab.cpu.split_cores`), with the threads :func:`reslab.cpu.worker_threads` gives it
(its share of the cores others leave free, read once per study). Workers are spawned, never
forked (a fork would inherit the parent's thread pools and locks); they die with the study
even when it is killed with -9; they never re-run the user's script; and a measurement's
thread count and denormal flushing are restored when it ends, in a worker or in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from reslab import stop
from reslab.cpu import available_cores, core_queue, pin_worker, worker_threads
from reslab.output import say

__all__ = ["Workers", "die_with_parent", "measure_all", "measuring", "run_tasks", "workers_for"]

R = TypeVar("R")

POLL_S = 0.2  # how often the study looks at its stop flag while its workers train
GRACE_S = 10.0  # how long stopped workers may take to commit their runs before they are killed


@dataclass(frozen=True)
class Workers:
    """How a study's tasks share this machine."""

    jobs: int  # worker processes; 1 runs every task in this process
    device: str  # what every task runs on: cpu, cuda (a GPU per worker) or cuda:N
    gpus: tuple[int, ...] = ()  # the GPU of each worker, with device "cuda"
    threads: int | None = None  # threads per task on the CPU; None: the task's own choice


def workers_for(
    device: str,
    jobs: int | None,
    tasks: int,
    log: Callable[[str], None] = say,
    cluster: str = "local",
) -> Workers:
    """The workers for ``tasks`` tasks on ``device`` (auto | cpu | cuda | cuda:N), at most
    ``jobs`` (None: one per GPU, or one per CPU core)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # One task per GPU: small CIFAR nets already saturate a GPU's launch queue.
        gpus = max(1, torch.cuda.device_count())
        n = max(1, min(jobs or gpus, tasks))
        return Workers(n, "cuda", tuple(i % gpus for i in range(n)))
    if device.startswith("cuda:"):
        return Workers(1, device)
    cores = available_cores()
    n = max(1, min(jobs or len(cores), tasks))
    if cluster == "ray":
        return Workers(n, "cpu", threads=1)  # every Ray task runs on one thread
    threads, share = worker_threads(n, cores), len(cores) // n
    if threads < share:
        log(f"{threads} thread(s) per run, not {share}: other processes keep cores busy")
    return Workers(n, "cpu", threads=threads)


def run_tasks(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    workers: Workers,
    done: Callable[[int, R], None] | None = None,
    grace: float = GRACE_S,
) -> list[R]:
    """``[fn(*task) for task in tasks]``, in ``workers.jobs`` worker processes when more than
    one; ``done(i, result)`` is called here as each task finishes. ``fn`` must be importable
    (a module-level function). The first failure, or Ctrl-C/SIGTERM, cancels the queued tasks,
    gives the running ones ``grace`` seconds to commit, kills the workers, and is raised."""
    results: dict[int, R] = {}

    def finish(i: int, result: R) -> None:
        results[i] = result
        if done is not None:
            done(i, result)

    if workers.jobs <= 1 or len(tasks) <= 1:
        with stop.deferring():
            for i, task in enumerate(tasks):
                finish(i, _task(fn, *task))
        return [results[i] for i in range(len(tasks))]
    context = mp.get_context("spawn")
    gpu_queue = cores = None
    if workers.gpus:
        gpu_queue = context.Queue()
        for gpu in workers.gpus:
            gpu_queue.put(gpu)
    elif workers.device == "cpu":
        cores = core_queue(context, workers.jobs)
    futures: dict[Future[R], int] = {}
    busy = context.Value("i", 0)  # the tasks running in workers now
    with stop.deferring():  # Ctrl-C/SIGTERM: stop the workers at their next step (reslab.stop)
        with _workers_skip_main(), _signals_blocked():
            pool = ProcessPoolExecutor(
                workers.jobs,
                mp_context=context,
                initializer=_init_worker,
                initargs=(gpu_queue, cores, os.getpid(), busy),
            )
            futures = {pool.submit(_task, fn, *task): i for i, task in enumerate(tasks)}
        try:
            pending: set[Future[R]] = set(futures)
            while pending:
                finished, pending = wait(pending, POLL_S, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=futures.__getitem__):
                    finish(futures[future], future.result())
                stop.check()
        except BaseException:
            # Fail now rather than after every queued task; finished runs stay on disk and a
            # rerun of the study skips them.
            _stop_workers(pool, futures, grace, busy)
            raise
        pool.shutdown()
    return [results[i] for i in range(len(tasks))]


_busy: Any = None  # in a worker: the pool's count of running tasks


def _task(fn: Callable[..., R], *args: Any) -> R:
    stop.check()  # a task the pool had queued before the stop starts no run
    if _busy is None:
        return fn(*args)
    with _busy.get_lock():
        _busy.value += 1
    try:
        return fn(*args)
    finally:
        with _busy.get_lock():
            _busy.value -= 1


def _stop_workers(
    pool: ProcessPoolExecutor, futures: Iterable[Future[Any]], grace: float, busy: Any
) -> None:
    """Cancel the queued tasks, ask each worker once to stop (SIGTERM: its run commits a
    checkpoint at its next step and ends, :mod:`reslab.stop`), wait until no task runs, at most
    ``grace`` seconds, then kill the workers: a killed run resumes from its last checkpoint."""
    for future in futures:
        future.cancel()
    processes = list(getattr(pool, "_processes", {}).values())  # the pool's only handle
    for process in processes:
        with contextlib.suppress(OSError):
            process.terminate()
    deadline = time.monotonic() + grace
    while busy.value > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    for process in processes:
        with contextlib.suppress(OSError):
            process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Spawned workers inherit the blocked mask, so a Ctrl-C while they import torch reaches
    none of them (no traceback); :func:`_init_worker` unblocks it once the worker ignores
    SIGINT. Here a signal waits until the workers are started, then is handled."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stop.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def measure_all(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    device: str,
    jobs: int | None,
    log: Callable[[str], None] = say,
) -> list[R]:
    """Measure many nets: ``fn(*task)`` for each task, in parallel workers on the CPU (in this
    process on a GPU), each under :func:`measuring` with its worker's thread count."""
    workers = workers_for(device, jobs, len(tasks), log)
    if workers.device != "cpu":
        workers = Workers(1, workers.device)
    tasks = [(fn, workers.threads, *task) for task in tasks]
    return run_tasks(_measured, tasks, workers, grace=0)  # a measurement has nothing to commit


def _measured(fn: Callable[..., R], threads: int | None, *args: Any) -> R:
    with measuring(threads):
        return fn(*args)


@contextlib.contextmanager
def measuring(threads: int | None = None) -> Iterator[None]:
    """``threads`` intra-op CPU threads (None: unchanged) and denormals flushed to zero for the
    block, both restored after. Trained plain nets carry denormal activations and gradients,
    which x86 CPUs process ~50x slower; flushing them changes no measurement visibly."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)  # torch has no getter; off is its default
        torch.set_num_threads(before)


# --- the workers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _workers_skip_main() -> Iterator[None]:
    """Spawned workers re-run the parent's ``__main__`` script (as ``__mp_main__``) so that
    functions defined there can be unpickled; a script that calls :func:`run_study` without an
    ``if __name__ == "__main__":`` guard would then start the study again in every worker and
    fail while bootstrapping. The tasks are reslab's own functions, so the workers need none
    of the script: hide its path and module name from multiprocessing while workers start."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _init_worker(gpus: Any, cores: Any, parent: int | None = None, busy: Any = None) -> None:
    """Give a worker process its own GPU (its tasks' device "cuda" then means that one), or on
    the CPU its own set of cores; tie it to the study's process ``parent``; count its running
    tasks in ``busy``; and let the study decide when it stops (:mod:`reslab.stop`)."""
    global _busy
    _busy = busy
    stop.in_worker()
    if hasattr(signal, "pthread_sigmask"):  # blocked while it started (_signals_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop.SIGNALS)
    if parent is not None:
        die_with_parent(parent)
    if gpus is not None:
        torch.cuda.set_device(gpus.get())
    if cores is not None:
        pin_worker(cores)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_S = 0.5  # how often a worker checks that its parent is still the study


def die_with_parent(parent: int) -> None:
    """Make this worker die as soon as the study process ``parent`` dies, even by kill -9.

    A killed parent runs no cleanup, so the worker must notice by itself; otherwise it is
    re-parented to init, trains the queued runs, keeps their run folders locked and keeps the
    resource tracker alive (it exits once the last worker holding its pipe is gone). On Linux
    the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``; it fires when
    the *thread* that spawned the worker exits, and the pool spawns from the study's main
    thread); everywhere a daemon thread also polls the parent's pid, as the fallback.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no usable libc
            pass
    if os.getppid() != parent:  # the study died before the signal was armed
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent,), name="reslab-watchdog", daemon=True
    ).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_S)
    os._exit(1)  # no cleanup: the run's last committed checkpoint is what a rerun resumes
