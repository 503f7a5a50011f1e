"""Running a study: its runs in parallel worker processes, then its analysis, verdict and report.

Every training run is an ordinary run folder written by :func:`reslab.train.fit`. A study skips
runs that already finished (an interrupted study resumes where it stopped), records a run whose
loss diverged as a result rather than a failure, and splits the machine between runs: one run
per GPU, or whole runs in parallel on the CPU cores, which beats threads per run for small nets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from reslab.data import DATASETS, load_dataset
from reslab.errors import ConfigError, ReslabError
from reslab.experiments import budget
from reslab.experiments.cluster import check_cluster, connect, run_on_ray
from reslab.experiments.config import RunSpec, StudyConfig
from reslab.experiments.pool import run_tasks, workers_for
from reslab.experiments.records import run_record
from reslab.experiments.registry import get_study
from reslab.experiments.verdicts import chance_error
from reslab.fileio import open_append
from reslab.output import say
from reslab.report.schema import new_results, write_results
from reslab.train import (
    NonFiniteLoss,
    RunFolder,
    RunLock,
    TrainConfig,
    fit,
    fit_pack,
    pack_blocker,
    pack_groups,
    pick_device,
    resolve,
    resolve_runtime,
)

__all__ = [
    "BF16_CAVEAT",
    "execute",
    "plan_packs",
    "precision_line",
    "resolved_precision",
    "run_study",
    "summary_table",
    "train_config",
]


def run_study(config: StudyConfig, log: Callable[[str], None] = say) -> dict[str, Any]:
    """Run (or resume) a study, save results.json and report.html, and return the results.

    plan -> train every run -> analyse -> verdict -> results.json -> report.html, each step
    the registered study's own.
    """
    from reslab.experiments.page import build_report

    study = get_study(config.experiment)
    out = Path(config.out)
    specs = study.plan(config)
    # every run's settings, and what they will cost, are checked before anything is written
    budget.check_runs(len(specs))
    budget.check_disk(out, [train_config(config, spec, None) for spec in specs])
    pick_device(config.device, 0)
    check_cluster(config.cluster, config.ray_address)
    if config.dataset.strip().lower().replace("_", "-") not in DATASETS:
        raise ConfigError(
            f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}"
        )
    # The data before any folder: a data error (missing, corrupt, no network) then leaves
    # nothing behind, as every bad input must (issue 20); the runs reuse what this loads.
    classes = load_dataset(config.dataset, data_dir=config.data_dir).num_classes
    with _study_folder(out):
        log(f"{study.name}: {len(specs)} runs on {config.dataset} -> {out}")
        if specs and "precision" in study.takes:
            log(f"precision: {precision_line(config)}")
        records = execute(config, specs, log)
        results = new_results(study.name, study.format_title(config), config.to_json())
        results.update(study.analyse(config, records))
        # What guessing scores: a verdict whose nets have not beaten it by a margin is
        # inconclusive (reslab.experiments.verdicts.not_learned).
        results["chance_error"] = round(chance_error(classes), 4)
        results["verdict"] = study.verdict(results, config)
        views = study.look()
        write_results(out, results, check=views.results)
        path = build_report(out)
    log("")
    log((views.text_table or summary_table)(results))
    log("")
    log(results["verdict"]["text"])
    log(f"report: {path}")
    return results


@contextlib.contextmanager
def _study_folder(out: Path) -> Iterator[None]:
    """Hold the study folder; on a user's error before any run was made, remove what this
    study created (a --weights file refused by lesion or landscape left its --out behind).

    One study a folder: a second one would train the same runs beside it (issue 20: the first
    died after 6 of 8 runs and neither wrote results.json). It is refused in one line by the
    lock (:class:`~reslab.train.RunLock`), held until results.json and the report are written.
    """
    made = out.absolute()  # the outermost folder the lock's mkdir will create, if any
    while not made.parent.exists() and made.parent != made:
        made = made.parent
    made_folder, made_lock = not made.exists(), not os.path.lexists(out / ".lock")
    lock = RunLock(out, "study")
    lock.acquire()
    try:
        yield
    except ReslabError:
        if not (out / "runs").exists():
            if made_folder:
                shutil.rmtree(made, ignore_errors=True)
            elif made_lock:
                (out / ".lock").unlink(missing_ok=True)
        raise
    finally:
        lock.release()


def train_config(study: StudyConfig, spec: RunSpec, threads: int | None) -> TrainConfig:
    """The trainer's config for one run of the study: the recipe, then the study's overrides."""
    fields: dict[str, Any] = {
        "model": spec.model,
        "dataset": study.dataset,
        "data_dir": study.data_dir,
        "recipe": study.recipe,
        "seed": spec.seed,
        "width": study.width,
        "precision": study.precision,
        "device": study.device,
        "threads": threads,
        "quiet": True,
        "out": str(Path(study.out) / "runs" / spec.name),
        **spec.overrides,
    }
    if get_study(study.experiment).snapshots:
        fields["snapshot_steps"] = list(study.probe_steps)
    for key in ("epochs", "steps", "batch_size", "lr"):
        value = getattr(study, key)
        if value is not None:
            fields[key] = value
    return resolve({k: v for k, v in fields.items() if v is not None})


def precision_line(study: StudyConfig) -> str:
    """What the runs' precision resolves to here, and why when it was left to ``auto``: the
    trainer's own rule (:func:`reslab.train.resolve_runtime`), which each run applies again;
    for bf16, what bf16 moved in training (:data:`BF16_CAVEAT`)."""
    name, line = resolved_precision(study)
    # measured: docs/PERFORMANCE.md, "The science in bf16"
    return f"{line}; {BF16_CAVEAT}" if name == "bf16" else line


def resolved_precision(study: StudyConfig) -> tuple[str, str]:
    """``study.precision`` resolved here by the trainer's rule: fp32 or bf16, and the banner's
    line (:func:`precision_line`); a study's own passes (the lesion's) run in the first."""
    device = pick_device(study.device, 0)
    fast = resolve_runtime(TrainConfig(precision=study.precision, device=str(device)), device)
    name = "bf16" if fast.amp_dtype is not None else "fp32"
    return name, fast.precision_note or name


#: What bf16 moved when every study trained in both precisions: the deepest plain net.
BF16_CAVEAT = (
    "deep plain nets train worse in bf16 (plain-56 on digits: 82 % training error vs 62 % in "
    "fp32), which can move a verdict; --precision fp32 for the fp32 figures"
)


def summary_table(results: dict[str, Any]) -> str:
    """The study's table as text: per family and depth, training and test error mean ± std."""
    rows = results.get("summary") or []
    if not rows:
        return ""
    lines = [f"{'net':<16}{'seeds':>6}  {'train error (%)':>16}  {'test error (%)':>16}"]
    for row in rows:
        n = row["n_seeds"]
        lines.append(
            f"{row['label']:<16}{n:>6}  "
            f"{_pm(row['clean_train_error_mean'], row['clean_train_error_std'], n):>16}  "
            f"{_pm(row['test_error_mean'], row['test_error_std'], n):>16}"
        )
    if any(row["n_seeds"] < 2 for row in rows):
        lines.append("± ?: one seed, so the spread over seeds is unknown (--seeds 0,1 measures it)")
    return "\n".join(lines)


def _pm(mean: float | None, std: float | None, n: int) -> str:
    """``mean ± std``; ``± ?`` with one seed, whose spread is unknown (not zero)."""
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± ?" if n < 2 or std is None else f"{mean:.1f} ± {std:.1f}"


# --- the runs ------------------------------------------------------------------------------------


def _run_one(config: TrainConfig) -> dict[str, Any]:
    """Train one run, resume it, or just read it if finished; runs in a worker process.

    The run's own log lines go to ``train.log`` in its folder; the study prints one line a run.
    """
    run_dir = config.run_dir()
    with _open_log(run_dir) as log, redirect_stdout(log), redirect_stderr(log):
        try:
            fit(config, resume=True)
        except NonFiniteLoss as exc:
            # A deep net that diverges is a result of the study, not a failure of it: record it
            # (a rerun would diverge again at the same step) and let the other runs go on.
            RunFolder(run_dir).write_diverged(str(exc))
    return run_record(run_dir)


def _open_log(run_dir: Path) -> Any:
    """The run's ``train.log``, appended to: its folder made, the file a regular one of its
    own (:func:`reslab.fileio.open_append`); a folder where the run belongs is one line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(
            f"cannot use {run_dir} as a run folder ({exc.strerror or exc}); remove what is "
            "there, or choose another --out"
        ) from None
    return open_append(run_dir / "train.log", "the run's log")


def _run_pack(configs: Sequence[TrainConfig]) -> list[dict[str, Any]]:
    """Train runs as one pack (:func:`reslab.train.fit_pack`); runs in a worker process.

    Each run's log lines go to its own ``train.log``; each run gets its ordinary record.
    """
    if len(configs) == 1:
        return [_run_one(configs[0])]
    with contextlib.ExitStack() as stack:
        logs = []
        for config in configs:
            logs.append(stack.enter_context(_open_log(config.run_dir())))
        fit_pack(configs, resume=True, streams=logs)  # records diverged members itself
    return [run_record(c.run_dir()) for c in configs]


def plan_packs(
    study: StudyConfig,
    configs: Sequence[TrainConfig],
    jobs: int,
    log: Callable[[str], None] = say,
) -> list[list[int]]:
    """Which runs train together: :func:`reslab.train.pack.pack_groups`, split until every
    worker has a job, most expensive first. One run per pack with ``study.pack`` off (by
    default, off unless the runs train on CUDA)."""
    on = study.pack if study.pack is not None else configs[0].device.startswith("cuda")
    if not on:
        return [[i] for i in range(len(configs))]
    packs = pack_groups(configs)
    blocked = sorted({b for c in configs if (b := pack_blocker(c)) is not None})
    if blocked:
        log(f"packing off for these runs ({', '.join(blocked)}): they train one by one")

    def cost(pack: list[int]) -> float:  # per-step work grows with depth
        return sum(float(_depth(configs[i])) for i in pack)

    while len(packs) < jobs and any(len(p) > 1 for p in packs):
        big = max((p for p in packs if len(p) > 1), key=cost)
        packs.remove(big)
        packs += [big[: len(big) // 2], big[len(big) // 2 :]]
    return sorted(packs, key=lambda p: (-cost(p), p))


def _depth(config: TrainConfig) -> int:
    digits = "".join(ch for ch in config.model if ch.isdigit())
    return int(digits) if digits else 1


def execute(
    study: StudyConfig,
    specs: Sequence[RunSpec],
    log: Callable[[str], None] = say,
) -> list[dict[str, Any]]:
    """Run every spec (in parallel worker processes when more than one job) and collect them.

    Runs of one shape and recipe train as one pack (``study.pack``); a pack is one job.
    """
    if not specs:
        return []  # a study that trains nothing (e.g. it probes nets at initialisation only)
    workers = workers_for(study.device, study.jobs, len(specs), log, study.cluster)
    configs = [
        dataclasses.replace(train_config(study, s, workers.threads), device=workers.device)
        for s in specs
    ]
    records: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def done(spec: RunSpec, record: dict[str, Any]) -> None:
        records[spec.name] = record
        status = "" if record["status"] == "finished" else f" {record['status']}"
        log(
            f"[{len(records)}/{len(specs)}] {spec.name:<18} train error "
            f"{_pct(record['final_clean_train_error'])}  test error "
            f"{_pct(record['final_test_error'])}  ({record['wall_time'] or 0:.1f} s, "
            f"{time.perf_counter() - started:.0f} s elapsed){status}"
        )

    def done_pack(pack: list[int], results: list[dict[str, Any]]) -> None:
        for i, record in zip(pack, results, strict=True):
            done(specs[i], record)

    if study.cluster == "ray":  # one Ray task a run: no packs
        _execute_on_ray(study, specs, configs, done)
        return [records[s.name] for s in sorted(specs, key=lambda s: (s.depth, s.family, s.seed))]
    packs = plan_packs(study, configs, workers.jobs, log)
    if len(packs) < len(specs):
        log(f"{len(specs)} runs train as {len(packs)} packs of twins (--no-pack: one by one)")
    run_tasks(
        _run_pack,
        [([configs[i] for i in pack],) for pack in packs],
        workers,
        done=lambda i, results: done_pack(packs[i], results),
    )
    return [records[s.name] for s in sorted(specs, key=lambda s: (s.depth, s.family, s.seed))]


def _execute_on_ray(
    study: StudyConfig,
    specs: Sequence[RunSpec],
    configs: Sequence[TrainConfig],
    done: Callable[[RunSpec, dict[str, Any]], None],
) -> None:
    """Every run as a Ray task (:mod:`reslab.experiments.cluster`): one GPU each where the
    cluster has GPUs, else one CPU and one thread — what a local CPU study's workers get when
    it has at least as many runs as cores, so the two train the same weights."""
    ray, owned = connect(study.ray_address)
    try:
        has_gpus = bool(ray.cluster_resources().get("GPU"))
        if study.device.startswith("cuda") and not has_gpus:
            raise ConfigError(
                f"--device {study.device}: the Ray cluster has no GPUs; use --device auto or cpu"
            )
        gpus = has_gpus and study.device != "cpu"
        device, threads = ("cuda", None) if gpus else ("cpu", 1)
        configs = [dataclasses.replace(c, device=device, threads=threads) for c in configs]
        run_on_ray(
            ray,
            _run_one,
            configs,
            [s.name for s in specs],
            gpus=gpus,
            done=lambda i, record: done(specs[i], record),
        )
    finally:
        if owned:
            ray.shutdown()


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:5.1f}%"
