"""The ``reslab`` command line: a thin layer that turns flags into library calls.

Each command group lives in its own module with a ``register(subparsers)`` function. What they
declare is kept as data (:mod:`reslab.cli.index`), so parsing the flags imports no torch: only
the command chosen imports what it needs (``reslab --help`` in 0.1 s, not 3). Errors a
user can cause (:class:`reslab.errors.ReslabError`) end in one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from reslab import stop
from reslab.checks import MAX_ECHO, one_line, shown
from reslab.cli import index
from reslab.errors import ReslabError
from reslab.output import console
from reslab.version import __version__

# Modules that add commands, in the order `reslab --help` lists them.
COMMAND_MODULES = (
    "reslab.cli.experiments",
    "reslab.cli.train",
    "reslab.cli.models",
    "reslab.cli.bench",
    "reslab.cli.export",
)


_QUOTED = re.compile(f"'([^']{{{MAX_ECHO},}})'")  # a long value argparse quotes


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse quotes the value it refused (``invalid int value: '999...'``): bounded
        message = _QUOTED.sub(lambda m: shown(m.group(1)), message)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser(live: bool = False) -> argparse.ArgumentParser:
    """The ``reslab`` parser, from the stored declarations (``live``: from the modules)."""
    parser = _Parser(
        prog="reslab",
        description="Residual networks, their plain twins, and the experiments that show why "
        "shortcuts work.",
    )
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if live:
        for name in COMMAND_MODULES:
            importlib.import_module(name).register(sub)
        return parser
    index.build(sub, index.load()["commands"])
    if "reslab.experiments" in sys.modules:  # studies registered in this process, from Python
        from reslab.cli.experiments import register_study
        from reslab.experiments import list_studies

        for name in list_studies():
            if name not in sub.choices:
                register_study(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # What the command prints is a view: a closed pipe or an ASCII terminal narrows or stops
    # the printing, never the work (reslab.output).
    with console():
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # Ctrl-C and SIGTERM: one line saying how to resume, exit 130/143 (reslab.stop).
        with stop.handling(sys.argv[1:] if argv is None else argv):
            return int(index.handler(args.func)(args) or 0)
    except ReslabError as exc:
        # One line even when a message quotes a multi-line library error (tarfile, TOML...),
        # and a bounded one (reslab.checks.MAX_LINE) whatever text it quotes.
        print(f"reslab: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(stop.message(exc), file=sys.stderr)
        return stop.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
