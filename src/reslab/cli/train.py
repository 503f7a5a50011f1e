"""``reslab train`` and ``reslab eval``: flags in, :func:`reslab.train.fit` / ``eval_run`` out.

``train`` has one flag per :class:`reslab.train.TrainConfig` field, generated from the fields
(name, type and help text), so the two cannot drift. Every flag defaults to "not given"
(``argparse.SUPPRESS``), so the command knows which values the user set: those win over
``--config`` (TOML or a run's ``config.json``), which wins over the recipe, which wins over the
defaults (:func:`reslab.train.resolve`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Any

from reslab.checks import MAX_BATCH, Bounds, printable
from reslab.cli import flagtypes
from reslab.errors import ConfigError
from reslab.fileio import atomic_write_json, output_kind
from reslab.train.config import TrainConfig, check_threads, flag_name
from reslab.train.evaluate import NORMALIZE_CHOICES


def _add_field_flag(p: argparse.ArgumentParser, f: dataclasses.Field[Any]) -> None:
    """The flag of one TrainConfig field: its type from the annotation, its help from metadata."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the X
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    flags = [flag_name(f.name), *f.metadata["aliases"]]
    common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
    if hint is bool:
        p.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text, **common)
    elif typing.get_origin(hint) is list:
        floats = typing.get_args(hint)[0] is float
        p.add_argument(
            *flags,
            type=flagtypes.floats if floats else flagtypes.ints,
            metavar="F,F" if floats else "N,N",
            help=help_text,
            **common,
        )
    else:
        metavar = f.metadata["metavar"] or f.name.split("_")[-1].upper()
        p.add_argument(*flags, type=hint, metavar=metavar, help=help_text, **common)


def register(sub: Any) -> None:
    """Add ``train`` and ``eval`` to the ``reslab`` command."""
    p = sub.add_parser(
        "train",
        help="train a model (resumable run folder with metrics and checkpoints)",
        description="Train a ResNet or its plain twin. Values come from, in rising priority: "
        "defaults, --recipe (default chosen by dataset), --config, then these flags. Under "
        "torchrun (python -m torch.distributed.run --nproc_per_node=N -m reslab train ...) "
        "--batch-size is the global batch.",
    )
    for f in dataclasses.fields(TrainConfig):
        _add_field_flag(p, f)
    p.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="TOML file (or a run's config.json) of settings; flags win over it",
    )
    p.add_argument(
        "--resume",
        dest="resume_dir",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with its saved config",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (recipe applied) as JSON and exit; writes nothing",
    )
    p.add_argument("--allow-large", action="store_true", help=ALLOW_LARGE_HELP)
    p.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="top-1 error, per-class error and confusion matrix of a weights file",
        description="Evaluate weights on a dataset split. Without --model the net is rebuilt "
        "from the weights file; without --dataset a file in a run folder uses the run's.",
    )
    e.add_argument("--weights", required=True, metavar="PATH", help="safetensors or .pt file")
    e.add_argument("--model", metavar="NAME", help="model name (default: from the weights)")
    e.add_argument("--dataset", metavar="NAME", help="dataset (default: the run's, or digits)")
    e.add_argument("--data-dir", metavar="DIR", help="data folder")
    e.add_argument("--split", choices=("test", "train"), default="test", help="split to score")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=int, default=1024, metavar="N", help="eval batch size")
    e.add_argument(
        "--normalize",
        metavar="SPEC",
        help=f"input normalisation of an imported checkpoint: {NORMALIZE_CHOICES}",
    )
    e.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    # --out names a folder in every other command; eval's file is --json (as in `reslab bench`).
    e.add_argument("--out", dest="old_out", help=argparse.SUPPRESS)
    e.set_defaults(func=run_eval)


#: The one override of a budget (reslab.checks.budget), on `reslab train` and every study.
ALLOW_LARGE_HELP = (
    "go on even when the estimated memory, disk or number of runs exceeds what this machine "
    "has or the run cap"
)


def run_train(args: argparse.Namespace) -> int:
    from reslab.checks import allowing_large

    with allowing_large(args.allow_large):
        return _run_train(args)


def _run_train(args: argparse.Namespace) -> int:
    from reslab.train import fit, load_config_file, resolve
    from reslab.train.config import drop_unfit_threads
    from reslab.train.loop import run_config

    # Only the flags the user typed are attributes (argparse.SUPPRESS).
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    if args.resume_dir is not None:
        check_threads(given.get("threads"))
        if args.config_file is not None:
            raise ConfigError("--resume uses the run's saved config; drop --config")
        if args.print_config:
            config, _ = run_config(None, True, args.resume_dir, given)
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        _resume_hint(Path(args.resume_dir))
        fit(resume_from=args.resume_dir, overrides=given)
        return 0
    explicit = load_config_file(args.config_file) if args.config_file else {}
    if args.config_file and "threads" not in given:
        note = drop_unfit_threads(explicit, args.config_file)
        if note:
            print(note, file=sys.stderr)
    explicit.update(given)  # the command line wins over the file
    config = resolve(explicit)
    if args.print_config:
        config, _ = run_config(config, False, None, None)
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    _resume_hint(config.run_dir())
    fit(config, explicit=sorted(explicit))
    return 0


def _resume_hint(folder: Path) -> None:
    """Ctrl-C's line names ``--resume FOLDER`` once the run has a folder (reslab.stop)."""
    from reslab import stop

    stop.resume_with(
        lambda: (
            f"reslab train --resume {shlex.quote(str(folder))}"
            if (folder / "config.json").is_file()
            else None
        )
    )


def run_eval(args: argparse.Namespace) -> int:
    from reslab.train import eval_run

    if args.old_out is not None:
        raise ConfigError(
            f"reslab eval writes a file, and --out names a folder in reslab; use --json "
            f"{args.old_out} to write the result as JSON"
        )
    Bounds(int, 1, MAX_BATCH).check("--batch-size", args.batch_size)
    if args.json:
        output_kind(Path(args.json))  # a directory or a device is refused before the work
    result = eval_run(
        args.weights,
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
        normalize=args.normalize,
    )
    print(_table(result))
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


def _table(result: dict[str, Any]) -> str:
    """The error, a per-class table and (up to 20 classes) the confusion matrix, as text."""
    lines = [
        f"{result['model']} on {result['dataset']} {result['split']} ({result['n']:,} images): "
        f"top-1 error {result['error']:.2f} %, loss {result['loss']:.4f}",
        _norm_line(result["normalization"]),
        "",
        f"{'class':>12}  {'images':>7}  {'error %':>7}",
    ]
    classes = [printable(name) for name in result["classes"]]  # cut after cleaning: aligned
    for name, row, err in zip(classes, result["confusion"], result["per_class_error"], strict=True):
        lines.append(f"{name[:12]:>12}  {sum(row):>7}  {err:>7.2f}")
    k = len(result["classes"])
    if k <= 20:
        width = max(4, *(len(str(v)) + 1 for row in result["confusion"] for v in row))
        lines += ["", "confusion (rows: true, columns: predicted)"]
        lines.append(" " * 12 + "".join(f"{c[: width - 1]:>{width}}" for c in classes))
        for name, row in zip(classes, result["confusion"], strict=True):
            lines.append(f"{name[:11]:>11} " + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _norm_line(norm: dict[str, Any]) -> str:
    def values(v: list[float]) -> str:
        return ", ".join(f"{x:.4g}" for x in v)

    mean, std = values(norm["mean"]), values(norm["std"])
    return f"inputs normalised with {norm['name']} statistics: mean ({mean}), std ({std})"
