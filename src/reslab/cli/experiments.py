"""``reslab <study>`` for every registered study, and ``reslab report``.

The subcommands come from :mod:`reslab.experiments`' registry: the common settings' flags
(:data:`reslab.experiments.config.SETTINGS`, declared once) that the study takes, then its own
flags. A flag left out is left out of the config too, so :class:`StudyConfig` fills it with the
study's default exactly as it does for a config made in Python: ``reslab lesion --out DIR`` and
``StudyConfig(experiment="lesion", out=DIR)`` are the same study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

_NOT_FLAGS = ("func", "command", "experiment", "print_config", "allow_large")


def register(sub: Any) -> None:
    from reslab.experiments import list_studies

    for name in list_studies():
        register_study(sub, name)

    p = sub.add_parser(
        "report",
        help="rebuild report.html from a study's results.json, or aggregate run folders",
    )
    p.add_argument("dir", help="a study folder, or a folder of `reslab train` run folders")
    p.set_defaults(func=_cmd_report)


SUPPRESS = argparse.SUPPRESS


def register_study(sub: Any, name: str) -> None:
    """Add ``reslab <name>`` for the registered study ``name``."""
    from reslab.cli.train import ALLOW_LARGE_HELP
    from reslab.experiments import StudyConfig, get_study
    from reslab.experiments.config import ALWAYS, SETTINGS

    study = get_study(name)
    defaults = StudyConfig(experiment=name).to_json()
    p = sub.add_parser(name, help=study.help, description=study.help)
    taken = [key for key in SETTINGS if key in ALWAYS or key in study.takes]
    for key in taken:
        flag = SETTINGS[key]
        if key == "recipe":  # the study's own flags come before the trainer's settings
            for own in study.flags:
                p.add_argument(own.flag, dest=own.name, help=own.help, default=SUPPRESS)
        shown = _shown(defaults.get(key))
        help_text = flag.help + (f" (default {shown})" if shown else "")
        if key == "depths" and study.one_depth:
            help_text = f"the one CIFAR-family depth 6n+2 it compares (default {shown})"
            p.add_argument(
                "--depth", dest="depths", metavar="DEPTH", help=help_text, default=SUPPRESS
            )
        else:
            p.add_argument(flag.flag, dest=key, help=help_text, default=SUPPRESS)
    if "recipe" not in taken:
        for own in study.flags:
            p.add_argument(own.flag, dest=own.name, help=own.help, default=SUPPRESS)
    if "pack" in study.takes:
        p.add_argument(
            "--pack",
            action=argparse.BooleanOptionalAction,
            default=SUPPRESS,
            help="train runs of one shape and recipe as one packed net, each computing its "
            "own run (default: on CUDA only); --no-pack trains every run on its own",
        )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the study's resolved config as JSON (as results.json records it) and "
        "write nothing",
    )
    p.add_argument("--allow-large", action="store_true", help=ALLOW_LARGE_HELP)
    p.set_defaults(func=_cmd_study, experiment=name)


def _shown(value: Any) -> str:
    """A default as the user would type it: ``(20, 56)`` -> ``20,56``; None -> ``""``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def study_config(args: argparse.Namespace) -> Any:
    """The :class:`StudyConfig` of a parsed ``reslab <study>`` command line: the flags given,
    read and checked; everything else the study's defaults."""
    from reslab.experiments import StudyConfig, get_study
    from reslab.experiments.config import SETTINGS

    study = get_study(args.experiment)
    own = {flag.name: flag for flag in study.flags}
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    settings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _NOT_FLAGS:
            continue
        if key == "depths" and study.one_depth:
            value = SETTINGS[key].read(value)
            flag = "--depth"
            if len(value) != 1:
                raise _one_depth(flag, value)
        elif key in own:
            value = own[key].read(value) if isinstance(value, str) else value
        elif key in SETTINGS:
            value = SETTINGS[key].read(value)
        (settings if key in fields else options)[key] = value
    return StudyConfig(experiment=study.name, **settings, options=options)


def _one_depth(flag: str, value: Any) -> Exception:
    from reslab.errors import ConfigError

    return ConfigError(f"{flag} takes one depth, got {','.join(map(str, value))}")


def _cmd_study(args: argparse.Namespace) -> int:
    from reslab import stop
    from reslab.checks import allowing_large
    from reslab.experiments import run_study

    config = study_config(args)
    if args.print_config:
        print(json.dumps(config.to_json(), indent=2))
        return 0
    stop.resume_with()  # Ctrl-C's line: the same command again (finished runs are skipped)
    with allowing_large(args.allow_large):
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
