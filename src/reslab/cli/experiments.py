"""``reslab degradation``, ``shortcuts``, ``gradients``, ``responses`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reslab.errors import ConfigError

_HELP = {
    "degradation": "the main job: train plain and residual twins at several depths and "
    "show the degradation problem",
    "shortcuts": "ablation: plain vs shortcut options A, B, C at one depth, same budget",
    "gradients": "gradient norm reaching each block, plain vs residual, at init and trained",
    "responses": "layer-response std (He et al. 2015 Fig. 7) and ||F(x)||/||x|| per block",
}
_DEFAULT_DEPTHS = {
    "degradation": "20,32,56",
    "shortcuts": "56",
    "gradients": "20,56",
    "responses": "20,56",
}
_DEFAULT_SEEDS = {"degradation": "0,1", "shortcuts": "0,1", "gradients": "0", "responses": "0"}


def register(sub: Any) -> None:
    for name, help_text in _HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--dataset", default="digits", help="dataset (default: embedded digits)")
        p.add_argument("--data-dir", default=None, help="where datasets live")
        p.add_argument(
            "--depths",
            default=_DEFAULT_DEPTHS[name],
            help=f"CIFAR-family depths 6n+2, comma-separated (default {_DEFAULT_DEPTHS[name]})",
        )
        p.add_argument(
            "--seeds",
            default=_DEFAULT_SEEDS[name],
            help=f"seeds, comma-separated (default {_DEFAULT_SEEDS[name]})",
        )
        if name == "shortcuts":
            p.add_argument(
                "--variants", default="plain,A,B,C", help="variants to compare (plain,A,B,C)"
            )
        else:
            p.add_argument("--shortcut", default="A", help="option of the residual nets: A|B|C")
        if name in ("degradation", "gradients"):
            default_steps = "0,10,30" if name == "gradients" else "0"
            p.add_argument(
                "--probe-steps",
                default=default_steps,
                help="gradient flow at these training steps too, 0 = at initialisation "
                f"(default {default_steps})",
            )
        p.add_argument("--recipe", default=None, help="trainer recipe (default: the dataset's)")
        p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
        p.add_argument("--steps", type=int, default=None, help="override with iterations")
        p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
        p.add_argument("--lr", type=float, default=None, help="override the learning rate")
        p.add_argument("--width", type=float, default=1.0, help="channel multiplier")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument(
            "--jobs",
            type=int,
            default=None,
            help="parallel runs (default: one per CPU core, or one per GPU)",
        )
        p.add_argument("--out", default=f"runs/{name}", help=f"study folder (default runs/{name})")
        p.set_defaults(func=_cmd_study, experiment=name)

    p = sub.add_parser(
        "report",
        help="rebuild report.html from a study's results.json, or aggregate run folders",
    )
    p.add_argument("dir", help="a study folder, or a folder of `reslab train` run folders")
    p.set_defaults(func=_cmd_report)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{flag} must be integers separated by commas, got {text!r}") from exc


def _cmd_study(args: argparse.Namespace) -> int:
    from reslab.experiments import StudyConfig, run_study

    extra: dict[str, Any] = {}
    if getattr(args, "probe_steps", None) is not None:
        extra["probe_steps"] = _ints(args.probe_steps, "--probe-steps")
    if args.experiment == "shortcuts":
        extra["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    else:
        extra["shortcut"] = args.shortcut.upper()
    study = StudyConfig(
        experiment=args.experiment,
        dataset=args.dataset,
        data_dir=args.data_dir,
        depths=_ints(args.depths, "--depths"),
        seeds=_ints(args.seeds, "--seeds"),
        recipe=args.recipe,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        device=args.device,
        jobs=args.jobs,
        out=args.out,
        **extra,
    )
    run_study(study)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reslab.experiments import aggregate, build_report

    folder = Path(args.dir)
    if not (folder / "results.json").is_file():
        aggregate(folder)
    print(f"report: {build_report(folder)}")
    return 0
