"""``reslab models`` and ``reslab explain``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reslab.checks import Bounds, matching, shown
from reslab.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registered models with depth, params, MACs")
    p.add_argument("--filter", default=None, help="regular expression on the model name")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("explain", help="the residual idea, worked through a real module")
    p.add_argument("--x", default=None, help="input vector, e.g. 2.0,1.5,0.8")
    p.add_argument("--target", default=None, help="desired H(x), same length as --x")
    p.add_argument("--figure", default=None, metavar="PNG", help="also draw the block diagram")
    p.set_defaults(func=_cmd_explain)


def model_rows() -> list[list[str]]:
    """``reslab models``' rows for every registered model (imports the models, and torch)."""
    from reslab.models import layout_macs, layout_params, list_models, model_layout

    rows: list[list[str]] = []
    for name in list_models():
        # Counted from the layout: building every net would take minutes on a busy machine.
        layout = model_layout(name)
        params = layout_params(layout)
        rows.append(
            [
                name,
                str(layout.depth),
                f"{params:,}",
                f"{params / 1e6:.3f}M",
                f"{layout_macs(layout) / 1e6:,.1f}M",
                "x".join(map(str, layout.input_size[1:])),
                "none (plain)" if layout.plain else layout.shortcut,
            ]
        )
    return rows


def models_table(rows: list[list[str]]) -> str:
    """The rows under their header, in aligned columns."""
    header = ["model", "depth", "params", "≈", "MACs", "input", "shortcut"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )


def _cmd_models(args: argparse.Namespace) -> int:
    from reslab.cli import index
    from reslab.errors import ModelError

    # The stored rows (reslab.cli.index, held equal to model_rows() by a test): no torch.
    rows = index.load()["models"]
    chosen = set(matching([row[0] for row in rows], args.filter, ModelError))
    print(models_table([row for row in rows if row[0] in chosen]))
    return 0


def _parse_vector(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")] if len(text) < 1000 else []
    except ValueError:
        values = []
    if not 1 <= len(values) <= 16:
        raise ConfigError(f"{flag} must be numbers separated by commas, got {shown(text)}")
    return list(_ENTRY.check(flag, values))


_ENTRY = Bounds(float, -1e6, 1e6, many=True)  # finite: the worked example prints each one


def _cmd_explain(args: argparse.Namespace) -> int:
    from reslab.explain import SEED_H, SEED_H2, SEED_WS, SEED_X, describe, worked_example

    x = _parse_vector(args.x, "--x") if args.x else list(SEED_X)
    target = _parse_vector(args.target, "--target") if args.target else list(SEED_H)
    if len(x) != len(target):
        raise ConfigError(f"--x has {len(x)} values but --target has {len(target)}")
    if args.figure:
        from reslab.fileio import output_kind

        output_kind(Path(args.figure))  # a directory or a device is refused before the work
    same = worked_example(x, target)
    changed = worked_example(SEED_X, SEED_H2, projection=SEED_WS)
    print(describe(same, changed))
    if args.figure:
        from reslab.explain import explain_figure

        path = explain_figure(same.x, same.target, same.correction, same.y, args.figure)
        print(f"\nblock diagram written to {path}")
    return 0
