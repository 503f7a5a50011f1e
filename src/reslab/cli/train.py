"""``reslab train`` and ``reslab eval``: flags in, :func:`reslab.train.fit` / ``eval_run`` out.

Every ``train`` flag defaults to "not given" (``argparse.SUPPRESS``), so the command knows which
values the user set: those win over ``--config`` (TOML or a run's ``config.json``), which wins
over the recipe, which wins over the defaults (:func:`reslab.train.resolve`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from reslab.errors import ConfigError
from reslab.fileio import atomic_write_json
from reslab.recipes import RECIPES

# (flag, field, type, help); booleans get --flag/--no-flag.
_FLAGS: list[tuple[str, str, Any, str]] = [
    # model
    ("--model", "model", str, "model name, e.g. resnet20, resnet110, plain56 (default resnet20)"),
    ("--width", "width", float, "channel multiplier, e.g. 0.25 for a quarter-width net"),
    ("--shortcut", "shortcut", str, "shortcut option A (zero-pad), B or C (projections)"),
    ("--plain", "plain", bool, "strip the shortcuts: the plain twin of the net"),
    ("--zero-init-residual", "zero_init_residual", bool, "zero each block's last BN scale"),
    # data
    ("--dataset", "dataset", str, "digits (default, offline), cifar10, cifar100, mnist, ..."),
    ("--data-dir", "data_dir", str, "data folder (default $RESLAB_DATA or ~/.cache/reslab)"),
    ("--val-split", "val_split", int, "hold out N train images for validation (0: test split)"),
    ("--augment", "augment", str, "cifar, flip or none (default: the dataset's own)"),
    # optimisation
    ("--recipe", "recipe", str, f"named defaults: {', '.join(RECIPES)} (default by dataset)"),
    ("--epochs", "epochs", int, "passes over the train split"),
    ("--steps", "steps", int, "total iterations; overrides --epochs (the paper: 64000)"),
    ("--batch-size", "batch_size", int, "GLOBAL batch size, split evenly over torchrun ranks"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--nesterov", "nesterov", bool, "Nesterov momentum"),
    ("--wd", "weight_decay", float, "weight decay, on every parameter as in the paper"),
    ("--schedule", "schedule", str, "multistep, cosine, onecycle or constant"),
    ("--milestones", "milestones", "floats", "multistep milestones as fractions, e.g. 0.5,0.75"),
    ("--gamma", "gamma", float, "multistep factor at each milestone"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    (
        "--warmup-until-error",
        "warmup_until_error",
        float,
        "use --warmup-lr until the training error (percent) is below this (paper: 80)",
    ),
    ("--warmup-lr", "warmup_lr", float, "learning rate while --warmup-until-error is active"),
    ("--label-smoothing", "label_smoothing", float, "cross-entropy label smoothing"),
    ("--ema", "ema", float, "evaluate an EMA of the weights with this decay, e.g. 0.999"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm"),
    # system
    ("--device", "device", str, "auto (default: cuda if available), cpu, cuda or cuda:N"),
    (
        "--precision",
        "precision",
        str,
        "auto (bf16 on CUDA and on AMX CPUs, else fp32), fp32 or bf16",
    ),
    (
        "--channels-last",
        "channels_last",
        bool,
        "NHWC activations (default: on; measured faster on CPU too)",
    ),
    ("--compile", "compile", bool, "torch.compile the model (default: on for CUDA only)"),
    ("--cuda-graphs", "cuda_graphs", bool, "CUDA graphs when compiling (default on for CUDA)"),
    ("--sync-bn", "sync_bn", bool, "synchronise BatchNorm statistics across torchrun ranks"),
    ("--seed", "seed", int, "seed of weights, data order and augmentation"),
    ("--deterministic", "deterministic", bool, "deterministic kernels: bit-identical resume"),
    ("--threads", "threads", int, "CPU threads (torch.set_num_threads)"),
    ("--detect-anomaly", "detect_anomaly", bool, "autograd anomaly detection (slow)"),
    # output
    ("--out", "out", str, "run folder (default runs/<model>-<dataset>-s<seed>)"),
    ("--eval-every", "eval_every", int, "epochs between evaluations"),
    ("--eval-batch-size", "eval_batch_size", int, "batch size of evaluation passes"),
    ("--checkpoint-every-steps", "checkpoint_every_steps", int, "also checkpoint mid-epoch"),
    (
        "--snapshot-steps",
        "snapshot_steps",
        "ints",
        "keep the weights at these steps, e.g. 0,50,100 (checkpoints/snapshot-N.safetensors)",
    ),
    ("--quiet", "quiet", bool, "one plain line per epoch, no progress bar"),
    ("--tensorboard", "tensorboard", bool, "also log to TensorBoard under <out>/tb"),
]


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


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
    for flag, name, kind, help_text in _FLAGS:
        if kind is bool:
            p.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif kind in ("floats", "ints"):
            p.add_argument(
                flag,
                dest=name,
                type=_floats if kind == "floats" else _ints,
                default=argparse.SUPPRESS,
                metavar="F,F" if kind == "floats" else "N,N",
                help=help_text,
            )
        else:
            p.add_argument(
                flag,
                dest=name,
                type=kind,
                default=argparse.SUPPRESS,
                metavar=name.split("_")[-1].upper(),
                help=help_text,
            )
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
    e.add_argument("--out", metavar="FILE", help="also write the result as JSON here")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from reslab.train import fit, load_config_file, resolve

    # Only the flags the user typed are attributes (argparse.SUPPRESS).
    given = {name: getattr(args, name) for _, name, _, _ in _FLAGS if hasattr(args, name)}
    if args.resume_dir is not None:
        if args.config_file is not None:
            raise ConfigError("--resume uses the run's saved config; drop --config")
        fit(resume_from=args.resume_dir, overrides=given)
        return 0
    explicit = load_config_file(args.config_file) if args.config_file else {}
    explicit.update(given)  # the command line wins over the file
    config = resolve(explicit)
    fit(config, explicit=sorted(explicit))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from reslab.train import eval_run

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    result = eval_run(
        args.weights,
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(_table(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0


def _table(result: dict[str, Any]) -> str:
    """The error, a per-class table and (up to 20 classes) the confusion matrix, as text."""
    lines = [
        f"{result['model']} on {result['dataset']} {result['split']} ({result['n']:,} images): "
        f"top-1 error {result['error']:.2f} %, loss {result['loss']:.4f}",
        "",
        f"{'class':>12}  {'images':>7}  {'error %':>7}",
    ]
    for name, row, err in zip(
        result["classes"], result["confusion"], result["per_class_error"], strict=True
    ):
        lines.append(f"{name[:12]:>12}  {sum(row):>7}  {err:>7.2f}")
    k = len(result["classes"])
    if k <= 20:
        width = max(4, *(len(str(v)) + 1 for row in result["confusion"] for v in row))
        lines += ["", "confusion (rows: true, columns: predicted)"]
        lines.append(" " * 12 + "".join(f"{c[: width - 1]:>{width}}" for c in result["classes"]))
        for name, row in zip(result["classes"], result["confusion"], strict=True):
            lines.append(f"{name[:11]:>11} " + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
