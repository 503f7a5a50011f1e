"""``reslab <study>`` for every registered study, and ``reslab report``.

The subcommands come from :mod:`reslab.experiments`' registry: the common flags below, then
each study's own (:attr:`reslab.experiments.Study.flags`) after ``--seeds``, with the study's
defaults. A new study gets its subcommand by being registered.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

# (flag, type, default, help): common to every study, before and after the study's own flags.
_BEFORE: list[tuple[str, Any, Any, str]] = [
    ("--dataset", str, "digits", "dataset (default: embedded digits)"),
    ("--data-dir", str, None, "where datasets live"),
]
_AFTER: list[tuple[str, Any, Any, str]] = [
    ("--recipe", str, None, "trainer recipe (default: the dataset's)"),
    ("--epochs", int, None, "override the recipe's epochs"),
    ("--steps", int, None, "override with iterations"),
    ("--batch-size", int, None, "override the batch size"),
    ("--lr", float, None, "override the learning rate"),
    ("--width", float, 1.0, "channel multiplier"),
    ("--device", str, "auto", "auto | cpu | cuda"),
    ("--jobs", int, None, "parallel runs (default: one per CPU core, or one per GPU)"),
    ("--cluster", str, "local", "local (a worker pool here) | ray (one Ray task a run)"),
    ("--ray-address", str, None, "Ray cluster address (default: RAY_ADDRESS, else local Ray)"),
]


def register(sub: Any) -> None:
    from reslab.experiments import get_study, list_studies
    from reslab.experiments.registry import comma

    for name in list_studies():
        study = get_study(name)
        p = sub.add_parser(name, help=study.help, description=study.help)
        _add(p, _BEFORE)
        depths, seeds = comma(study.depths), comma(study.seeds)
        p.add_argument(
            "--depths",
            default=depths,
            help=f"CIFAR-family depths 6n+2, comma-separated (default {depths})",
        )
        p.add_argument("--seeds", default=seeds, help=f"seeds, comma-separated (default {seeds})")
        for flag in study.flags:
            p.add_argument(flag.flag, default=flag.default, dest=flag.name, help=flag.help)
        _add(p, _AFTER)
        p.add_argument(
            "--pack",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="train runs of one shape and recipe as one packed net, each computing its "
            "own run (default: on CUDA only); --no-pack trains every run on its own",
        )
        p.add_argument("--out", default=f"runs/{name}", help=f"study folder (default runs/{name})")
        p.set_defaults(func=_cmd_study, experiment=name)

    p = sub.add_parser(
        "report",
        help="rebuild report.html from a study's results.json, or aggregate run folders",
    )
    p.add_argument("dir", help="a study folder, or a folder of `reslab train` run folders")
    p.set_defaults(func=_cmd_report)


def _add(p: argparse.ArgumentParser, flags: list[tuple[str, Any, Any, str]]) -> None:
    for flag, kind, default, help_text in flags:
        p.add_argument(flag, type=kind, default=default, help=help_text)


def _cmd_study(args: argparse.Namespace) -> int:
    from reslab.experiments import StudyConfig, get_study, run_study
    from reslab.experiments.registry import parse_ints

    study = get_study(args.experiment)
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    settings: dict[str, Any] = {
        "depths": parse_ints(args.depths, "--depths"),
        "seeds": parse_ints(args.seeds, "--seeds"),
    }
    options: dict[str, Any] = {}
    for flag in study.flags:
        value = getattr(args, flag.name)
        value = flag.read(value) if isinstance(value, str) else value
        (settings if flag.name in fields else options)[flag.name] = value
    common = [f.lstrip("-").replace("-", "_") for f, *_ in (*_BEFORE, *_AFTER)]
    config = StudyConfig(
        experiment=study.name,
        **{key: getattr(args, key) for key in common},
        **settings,
        pack=args.pack,
        out=args.out,
        options=options,
    )
    run_study(config)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reslab.checks import input_path
    from reslab.experiments import aggregate, build_report

    folder = input_path(args.dir, "report folder", folder=True)
    if not (folder / "results.json").is_file():
        aggregate(folder)
    print(f"report: {build_report(folder)}")
    return 0
