"""Experiments that show the degradation problem and why shortcuts cure it.

An experiment is a function from (config, seed) to metrics (airbench's rule): every training run
is an ordinary run folder written by :func:`reslab.train.fit`, so a cluster scheduler can run
them as separate ``reslab train`` jobs and ``reslab report`` aggregates the folders. A study
runs its independent runs in parallel worker processes, skips runs that already finished (an
interrupted study resumes where it stopped), probes the trained networks, and saves everything
in ``results.json`` beside a self-contained ``report.html``.

* ``degradation``: plain and residual twins at several depths, same recipe and budget
  (He et al. 2015, arXiv:1512.03385, Fig. 6 and Table 6).
* ``shortcuts``: plain vs options A, B, C at one depth (Table 3 in spirit).
* ``gradients``: ‖∂L/∂x_l‖ per block at initialisation and after training (He et al. 2016,
  arXiv:1603.05027, §3).
* ``responses``: std of the 3×3 layers' responses (Fig. 7) and ‖F(x)‖/‖x‖ per block.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab import report
from reslab.data import DATASETS
from reslab.errors import ConfigError, ReslabError
from reslab.fileio import atomic_write_json
from reslab.models import ResNet, cifar_model_name, create_model
from reslab.train import NonFiniteLoss, RunFolder, TrainConfig, fit, pick_device, resolve

EXPERIMENTS = ("degradation", "shortcuts", "gradients", "responses")
VARIANTS = ("plain", "A", "B", "C")


@dataclass
class StudyConfig:
    """One study: which nets to train, how, and where to save them."""

    experiment: str = "degradation"  # degradation | shortcuts | gradients | responses
    dataset: str = "digits"  # a reslab.data dataset; digits is embedded and offline
    depths: tuple[int, ...] = (20, 32, 56)  # CIFAR-family depths, 6n+2
    families: tuple[str, ...] = ("plain", "residual")  # which twins to train
    shortcut: str = "A"  # shortcut option of the residual nets (He et al. 2015 §4.2: A)
    variants: tuple[str, ...] = VARIANTS  # shortcuts study: plain and options to compare
    seeds: tuple[int, ...] = (0, 1)  # one run per seed; tables give mean ± std
    recipe: str | None = None  # trainer recipe; None picks the dataset's default
    epochs: int | None = None  # override the recipe's epochs
    steps: int | None = None  # override with a number of iterations (paper: 64k)
    batch_size: int | None = None  # override the recipe's batch size
    lr: float | None = None  # override the recipe's peak learning rate
    width: float = 1.0  # channel multiplier of every net
    data_dir: str | None = None  # where datasets live (default ~/.cache/reslab)
    device: str = "auto"  # auto | cpu | cuda
    jobs: int | None = None  # parallel runs; None: one per GPU, or one per CPU core
    probe_batch: int = 256  # images the probes look at
    probe_steps: tuple[int, ...] = (0,)  # gradient flow also at these steps (0 = at init)
    tolerance: float = 1.0  # points of training error within which two nets "train as well"
    out: str = "runs/degradation"  # the study folder

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ConfigError(
                f"unknown experiment {self.experiment!r}: try {', '.join(EXPERIMENTS)}"
            )
        # Repeated depths or seeds would plan the same run twice.
        self.depths = tuple(dict.fromkeys(self.depths))
        self.seeds = tuple(dict.fromkeys(self.seeds))
        self.families = tuple(self.families)
        self.probe_steps = tuple(sorted(set(self.probe_steps)))
        if any(s < 0 for s in self.probe_steps):
            raise ConfigError(f"--probe-steps must be 0 or more, got {self.probe_steps}")
        self.variants = tuple(v if v == "plain" else v.upper() for v in self.variants)
        if not self.depths:
            raise ConfigError("--depths needs at least one depth, e.g. --depths 20,56")
        if self.experiment == "degradation" and len(self.depths) < 2:
            raise ConfigError("a degradation study needs two or more --depths, e.g. 20,56")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1")
        for family in self.families:
            if family not in ("plain", "residual"):
                raise ConfigError(f"family {family!r} is not one of plain, residual")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")
        for depth in self.depths:
            cifar_model_name(depth, plain=False)  # validates 6n+2 with a clear error


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study."""

    name: str  # run folder name inside the study's runs/
    model: str  # registry name
    family: str  # plain | residual
    depth: int
    shortcut: str | None  # A | B | C, None for plain
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)


def plan(study: StudyConfig) -> list[RunSpec]:
    """The runs a study needs, the most expensive first so parallel workers finish together."""
    specs: list[RunSpec] = []
    seeds = study.seeds if study.experiment in ("degradation", "shortcuts") else study.seeds[:1]
    if study.experiment == "shortcuts":
        depth = max(study.depths)
        for variant in study.variants:
            for seed in seeds:
                plain = variant == "plain"
                shortcut = None if plain else variant
                name = cifar_model_name(depth, plain)
                tag = "plain" if plain else variant
                specs.append(
                    RunSpec(
                        f"{name}-{tag}-s{seed}",
                        name,
                        "plain" if plain else "residual",
                        depth,
                        shortcut,
                        seed,
                        {"shortcut": shortcut or "A"},
                    )
                )
    else:
        for depth in study.depths:
            for family in study.families:
                name = cifar_model_name(depth, family == "plain")
                shortcut = None if family == "plain" else study.shortcut
                for seed in seeds:
                    specs.append(
                        RunSpec(
                            f"{name}-s{seed}",
                            name,
                            family,
                            depth,
                            shortcut,
                            seed,
                            {"shortcut": study.shortcut},
                        )
                    )
    return sorted(specs, key=lambda s: -s.depth)


def train_config(study: StudyConfig, spec: RunSpec, threads: int | None) -> TrainConfig:
    """The trainer's config for one run of the study: the recipe, then the study's overrides."""
    fields: dict[str, Any] = {
        "model": spec.model,
        "dataset": study.dataset,
        "data_dir": study.data_dir,
        "recipe": study.recipe,
        "seed": spec.seed,
        "width": study.width,
        "device": study.device,
        "threads": threads,
        "quiet": True,
        "out": str(Path(study.out) / "runs" / spec.name),
        **spec.overrides,
    }
    if "gradient_flow" in _PROBES[study.experiment]:
        fields["snapshot_steps"] = list(study.probe_steps)
    for key in ("epochs", "steps", "batch_size", "lr"):
        value = getattr(study, key)
        if value is not None:
            fields[key] = value
    return resolve({k: v for k, v in fields.items() if v is not None})


# --- running -----------------------------------------------------------------------------------


def _jobs(study: StudyConfig, n_runs: int) -> tuple[int, str, list[int], int | None]:
    """(workers, device name for every run, GPU index per worker, threads per run)."""
    device = study.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # One run per GPU: small CIFAR nets already saturate a GPU's launch queue.
        gpus = max(1, torch.cuda.device_count())
        jobs = min(study.jobs or gpus, n_runs)
        return jobs, "cuda", [i % gpus for i in range(jobs)], None
    if device.startswith("cuda:"):
        return 1, device, [], None
    cores = os.cpu_count() or 1
    jobs = min(study.jobs or cores, n_runs)
    # Small nets scale poorly across threads, so whole runs in parallel beat threads per run.
    return jobs, "cpu", [], max(1, cores // jobs)


def _init_worker(gpus: Any) -> None:
    """Give a worker process its own GPU: its runs' device "cuda" then means that one."""
    if gpus is not None:
        torch.cuda.set_device(gpus.get())


def _run_one(config: TrainConfig) -> dict[str, Any]:
    """Train one run, resume it, or just read it if finished; runs in a worker process.

    The run's own log lines go to ``train.log`` in its folder; the study prints one line a run.
    """
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "train.log").open("a") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            fit(config, resume=True)
        except NonFiniteLoss as exc:
            # A deep net that diverges is a result of the study, not a failure of it: record it
            # (a rerun would diverge again at the same step) and let the other runs go on.
            atomic_write_json(
                RunFolder(run_dir).result_path,
                {"status": "diverged", "message": str(exc), "clean_train_error": None,
                 "test_error": None},
            )  # fmt: skip
    return run_record(run_dir)


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """A results.json ``runs`` entry, read from a finished run folder alone."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
        metrics = run_dir / "metrics.jsonl"  # absent if a run diverged in its first epoch
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        rows = [json.loads(line) for line in lines]
    except FileNotFoundError as exc:
        raise ReslabError(
            f"{run_dir} is not a finished run (missing {Path(exc.filename).name}): "
            "finish it with `reslab train --resume DIR` or remove it"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ReslabError(f"{run_dir} has a corrupt JSON file ({exc.msg})") from exc
    config = config.get("config", config)
    model = create_model(config["model"], **_model_overrides(config))
    assert isinstance(model, ResNet)
    plain = model.plain
    depth = model.depth

    def curve(key: str) -> list[Any]:
        return [row.get(key) for row in rows]

    return {
        "name": run_dir.name,
        "model": config["model"],
        "family": "plain" if plain else "residual",
        "depth": depth,
        "shortcut": None if plain else model.shortcut_option,
        "seed": config.get("seed", 0),
        "params": result.get("params"),
        "status": result.get("status", "finished"),
        "final_clean_train_error": result.get("clean_train_error"),
        "final_test_error": result.get("test_error"),
        "wall_time": result.get("wall_time"),
        "curves": {
            "epoch": curve("epoch"),
            "step": curve("step"),
            "clean_train_error": curve("clean_train_error"),
            "train_error": curve("train_error"),
            "test_error": curve("test_error"),
            "val_error": curve("val_error"),  # with a validation split, in place of test_error
            "train_loss": curve("train_loss"),
            "lr": curve("lr"),
        },
    }


def _model_overrides(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("shortcut", "plain", "width", "zero_init_residual")
    return {k: config[k] for k in keys if config.get(k) is not None}


def execute(
    study: StudyConfig,
    specs: Sequence[RunSpec],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every spec (in parallel worker processes when more than one job) and collect them."""
    jobs, device, gpus, threads = _jobs(study, len(specs))
    configs = [dataclasses.replace(train_config(study, s, threads), device=device) for s in specs]
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

    if jobs == 1:
        for spec, config in zip(specs, configs, strict=True):
            done(spec, _run_one(config))
    else:
        # spawn, not fork: forked workers would inherit the parent's thread pools and locks.
        context = mp.get_context("spawn")
        queue = None
        if gpus:
            queue = context.Queue()
            for gpu in gpus:
                queue.put(gpu)
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(queue,)
        ) as pool:
            futures = {pool.submit(_run_one, c): s for s, c in zip(specs, configs, strict=True)}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                # Fail now rather than after every queued run; finished runs stay on disk and
                # a rerun of the study skips them.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return [records[s.name] for s in sorted(specs, key=lambda s: (s.depth, s.family, s.seed))]


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:5.1f}%"


# --- probes ------------------------------------------------------------------------------------


def probe_runs(
    study: StudyConfig, records: Sequence[dict[str, Any]], kinds: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Probe the seed-0 nets of each (family, depth): at initialisation and after training."""
    from reslab import probes
    from reslab.data import load_dataset, normalize_batch
    from reslab.weights import load_model

    kinds = set(kinds)
    # Trained plain nets carry denormal activations and gradients, which are ~50x slower on
    # x86 CPUs; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    ds = load_dataset(study.dataset, data_dir=study.data_dir)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.train_labels), generator=gen)[: study.probe_batch]
    x = normalize_batch(ds.train_images[idx], ds.mean, ds.std, channels_last=False)
    y = ds.train_labels[idx]

    out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    first_seed = min(r["seed"] for r in records)
    for record in records:
        if record["seed"] != first_seed:
            continue
        run_dir = Path(study.out) / "runs" / record["name"]
        if not (run_dir / "checkpoints" / "last.safetensors").is_file():
            continue  # diverged before its first checkpoint: nothing trained to probe
        trained = load_model(run_dir / "checkpoints" / "last.safetensors")
        label = _label(record)
        meta = {"label": label, "family": record["family"], "depth": record["depth"]}
        if "gradient_flow" in kinds:
            snapshots = [
                ("init" if step == 0 else f"step {step}", RunFolder(run_dir).snapshot_path(step))
                for step in study.probe_steps
            ]
            stages = [(when, load_model(path)) for when, path in snapshots if path.is_file()]
            for when, model in [*stages, ("trained", trained)]:
                flow = probes.gradient_flow(model.train(), x, y)
                out["gradient_flow"].append(
                    {
                        **meta,
                        "when": when,
                        "block": flow.block_names,
                        "input_grad_norm": flow.input_grad_norms,
                        "layer": flow.weight_names,
                        "weight_grad_norm": flow.weight_grad_norms,
                    }
                )
        if "residual_magnitude" in kinds:
            mag = probes.residual_magnitude(trained, x)
            out["residual_magnitude"].append(
                {
                    **meta,
                    "block": mag.block_names,
                    "ratio": mag.ratios,
                    "f_norm": mag.branch_norms,
                    "shortcut_norm": mag.shortcut_norms,
                }
            )
        if "layer_responses" in kinds:
            resp = probes.layer_responses(trained, x)
            out["layer_responses"].append(
                {
                    **meta,
                    "layer": resp.layer_names,
                    "std": resp.stds,
                    "std_sorted": resp.sorted_stds,
                }
            )
    return out


def _label(record: dict[str, Any]) -> str:
    family = "plain" if record["family"] == "plain" else "resnet"
    return f"{family}-{record['depth']}"


# --- studies -----------------------------------------------------------------------------------

_PROBES = {
    "degradation": ("gradient_flow", "residual_magnitude", "layer_responses"),
    "shortcuts": (),
    "gradients": ("gradient_flow",),
    "responses": ("layer_responses", "residual_magnitude"),
}
_TITLES = {
    "degradation": "Degradation: plain vs residual networks on {dataset}",
    "shortcuts": "Shortcut options: plain vs A vs B vs C at depth {depth} on {dataset}",
    "gradients": "Gradient flow through plain and residual networks on {dataset}",
    "responses": "Layer responses and residual magnitudes on {dataset}",
}


def run_study(study: StudyConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a study, save results.json and report.html, and return the results."""
    out = Path(study.out)
    specs = plan(study)
    for spec in specs:  # every run's settings are checked before anything is written
        train_config(study, spec, None)
    pick_device(study.device, 0)
    if study.dataset.strip().lower().replace("_", "-") not in DATASETS:
        raise ConfigError(f"unknown dataset {study.dataset!r}; choose one of {', '.join(DATASETS)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {out} as a study folder ({exc.strerror}); choose another --out"
        ) from exc
    log(f"{study.experiment}: {len(specs)} runs on {study.dataset} -> {out}")
    records = execute(study, specs, log)
    title = _TITLES[study.experiment].format(dataset=study.dataset, depth=max(study.depths))
    results = report.new_results(study.experiment, title, dataclasses.asdict(study))
    if study.experiment in ("degradation", "shortcuts"):
        results["runs"] = records
        results["summary"] = report.summarize_runs(records)
    if study.experiment == "degradation":
        results["verdict"] = _degradation_verdict(results["summary"], study.tolerance)
    elif study.experiment == "shortcuts":
        results["verdict"] = shortcut_verdict(results["summary"], study.tolerance)
    kinds = _PROBES[study.experiment]
    if kinds:
        results["probes"] = probe_runs(study, records, kinds)
    if study.experiment in ("gradients", "responses"):
        results["verdict"] = probe_verdict(results["probes"])
    report.write_results(out, results)
    path = report.build_report(out)
    log("")
    log(summary_table(results))
    log("")
    log(results["verdict"]["text"])
    log(f"report: {path}")
    return results


def _degradation_verdict(summary: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The verdict, or why there is none (e.g. a family with one depth, or diverged runs)."""
    try:
        return report.degradation_verdict(summary, tolerance)
    except ReslabError as exc:
        return {"text": f"no verdict: {exc}"}


def summary_table(results: dict[str, Any]) -> str:
    """The study's table as text: per family and depth, training and test error mean ± std."""
    rows = results.get("summary") or []
    if not rows:
        return ""
    lines = [f"{'net':<16}{'seeds':>6}  {'train error (%)':>16}  {'test error (%)':>16}"]
    for row in rows:
        lines.append(
            f"{row['label']:<16}{row['n_seeds']:>6}  "
            f"{_pm(row['clean_train_error_mean'], row['clean_train_error_std']):>16}  "
            f"{_pm(row['test_error_mean'], row['test_error_std']):>16}"
        )
    return "\n".join(lines)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± {std or 0:.1f}"


def shortcut_verdict(summary: Sequence[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Which variant trains best, and by how much the plain net trails the best shortcut."""
    rows = [r for r in summary if r.get("clean_train_error_mean") is not None]
    if not rows:
        raise ReslabError("no finished runs to compare")
    best = min(rows, key=lambda r: (r["test_error_mean"], r["clean_train_error_mean"]))
    plain = [r for r in rows if r["family"] == "plain"]
    parts = [f"best test error: {best['label']} ({best['test_error_mean']:.1f}%)"]
    verdict: dict[str, Any] = {"best": best["label"]}
    if plain:
        residual = [r for r in rows if r["family"] == "residual"]
        if residual:
            p = plain[0]
            fit = min(residual, key=lambda r: r["clean_train_error_mean"])
            gap = p["clean_train_error_mean"] - fit["clean_train_error_mean"]
            verdict["plain_gap"] = round(gap, 4)
            how = "trains worse than" if gap > tolerance else "trains as well as"
            parts.append(
                f"{p['label']} {how} {fit['label']}: {p['clean_train_error_mean']:.1f} % vs "
                f"{fit['clean_train_error_mean']:.1f} % training error"
            )
    spread = [r["test_error_mean"] for r in rows if r["family"] == "residual"]
    if len(spread) > 1:
        verdict["option_spread"] = round(max(spread) - min(spread), 4)
        parts.append(
            f"options A/B/C differ by {max(spread) - min(spread):.1f} points of test error"
        )
    verdict["text"] = "; ".join(parts)
    return verdict


def probe_verdict(probes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A one-line reading of the probes, computed from their numbers."""
    parts = []
    for entry in probes.get("gradient_flow", []):
        if entry["when"] != "init":
            continue
        norms = entry["input_grad_norm"]
        ratio = norms[0] / norms[-1] if norms[-1] else float("inf")
        parts.append(f"{entry['label']}: ‖∂L/∂x‖ first/last block = {ratio:.2g} at init")
    for entry in probes.get("residual_magnitude", []):
        if entry["family"] == "residual" and entry["ratio"]:
            mean = sum(entry["ratio"]) / len(entry["ratio"])
            parts.append(f"{entry['label']}: mean ‖F(x)‖/‖x‖ = {mean:.2f}")
    for entry in probes.get("layer_responses", []):
        std = entry["std"]
        parts.append(f"{entry['label']}: mean layer response std = {sum(std) / len(std):.2f}")
    return {"text": "; ".join(parts) or "no probes"}


def aggregate(study_dir: str | Path) -> dict[str, Any]:
    """Results of a study folder rebuilt from its run folders (e.g. runs made by a scheduler)."""
    study_dir = Path(study_dir)
    run_root = study_dir / "runs" if (study_dir / "runs").is_dir() else study_dir
    run_dirs = sorted(p.parent for p in run_root.glob("*/result.json"))
    if not run_dirs:
        raise ReslabError(
            f"no results.json and no finished run folders in {study_dir}: run "
            f"`reslab degradation --out {study_dir}` or point at a folder of `reslab train` runs"
        )
    records = [run_record(d) for d in run_dirs]
    results = report.new_results(
        "degradation", f"Degradation study aggregated from {study_dir}", {"runs": len(records)}
    )
    results["runs"] = records
    results["summary"] = report.summarize_runs(records)
    results["verdict"] = _degradation_verdict(results["summary"], StudyConfig.tolerance)
    report.write_results(study_dir, results)
    return results
