"""``reslab export``: a weights file to ONNX or a ``torch.export`` program, checked first."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="a weights file to ONNX (.onnx) or a torch.export program (.pt2), checked",
        description="Rebuild the net a reslab weights file describes, export it, and compare "
        "the export with the eager net on a sample batch before writing it. The batch "
        "dimension stays dynamic; inputs are normalised as the file's header says.",
    )
    p.add_argument("weights", metavar="WEIGHTS", help="a .safetensors file written by reslab")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write: .onnx or .pt2")
    p.add_argument(
        "--format", default=None, choices=("onnx", "pt2"), help="default: from --out's suffix"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch loads here, not when `reslab --help` imports this module.
    from reslab.checks import input_path
    from reslab.errors import CheckpointError
    from reslab.export import ExportError, export_format, export_model
    from reslab.fileio import output_kind
    from reslab.models import ResNet
    from reslab.weights import load_model, read_normalization

    out = Path(args.out)
    if output_kind(out) != "file":  # a directory is refused by output_kind itself
        raise ExportError(f"cannot export to {out}: name a regular file, not a stream")
    fmt = export_format(out, args.format)
    weights = input_path(args.weights, "weights file", error=CheckpointError)
    model = load_model(weights)  # one line for a file that is not reslab's safetensors
    if not isinstance(model, ResNet):
        raise ExportError(f"{weights} holds a features_only backbone; export takes a whole net")
    done = export_model(model, out, fmt)
    norm = read_normalization(weights)
    inputs = (
        f"inputs normalised with {norm.name} statistics"
        if norm
        else "the file records no input normalisation"
    )
    print(
        f"wrote {done.path} ({done.format}; max |export - eager| = {done.max_abs_diff:.2g} "
        f"on a sample batch, tolerance {done.tolerance:.2g}; {inputs})"
    )
    return 0
