"""The command line's stored declarations (reslab.cli.index): equal to the program's, and what
lets ``reslab --help``, ``--version``, ``models`` and a refused flag answer without torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reslab.cli import build_parser, index


def test_the_stored_declarations_are_the_programs() -> None:
    # Fails after a flag, a help text, a study or a model changes: `make cli-index` rewrites it.
    assert index.load() == json.loads(json.dumps(index.current())), (
        "src/reslab/_data/cli.json is stale: run `python scripts/cli_index.py` and commit it"
    )


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_parser_from_the_index_is_the_live_one() -> None:
    # The replay loses nothing: every command's --help and defaults read the same.
    stored, live = _commands(build_parser()), _commands(build_parser(live=True))
    assert list(stored) == list(live)
    for name, parser in live.items():
        assert stored[name].format_help() == parser.format_help(), name
        assert _actions(stored[name]) == _actions(parser), name
        live_defaults = dict(parser._defaults, func=index.encode(parser._defaults["func"])["ref"])
        assert stored[name]._defaults == live_defaults, name


def _actions(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    # "Not given" is told by identity (default is SUPPRESS): a copy of the string is a value.
    return [
        (
            *(type(a), a.option_strings, a.dest, a.default is argparse.SUPPRESS, a.default),
            *(a.type, None if a.choices is None else list(a.choices), a.required, a.nargs),
            *(a.const, a.metavar),
        )
        for a in parser._actions
    ]


def test_a_handler_is_imported_by_name_when_its_command_runs() -> None:
    args = build_parser().parse_args(["train", "--epochs", "3"])
    assert args.func == "reslab.cli.train:run_train" and args.epochs == 3
    from reslab.cli.train import run_train

    assert index.handler(args.func) is run_train


def test_a_declaration_refuses_what_it_cannot_name() -> None:
    with pytest.raises(TypeError, match="give it a name"):
        index.encode(lambda text: text)
    assert index.encode(int) == {"ref": "builtins:int"}
    assert index.encode([argparse.BooleanOptionalAction, None]) == [
        {"ref": "argparse:BooleanOptionalAction"},
        None,
    ]


# One interpreter runs every command line below and reports, after each, whether torch (or the
# trainer, the studies, the models) had been imported: ``reslab --help`` took 2.5-2.9 s, all of
# it importing torch before reading a flag.
_PROBE = """
import json, sys
from reslab.cli import main
heavy = ("torch", "numpy", "reslab.models", "reslab.train", "reslab.experiments")
seen = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    seen[" ".join(argv)] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(seen))
"""

_LIGHT = [
    ["--help"],
    ["--version"],
    ["models"],
    ["models", "--filter", "^plain"],
    ["--bogus"],
    ["nosuchcommand"],
    ["train", "--epochs", "many"],
    ["train", "--help"],
    ["degradation", "--depths"],
    ["degradation", "--bogus"],
    ["lesion", "--help"],
    ["bench", "--steps", "x"],
]


def test_help_version_models_and_refused_flags_import_no_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(_LIGHT)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen == {" ".join(argv): [] for argv in _LIGHT}
    assert "resnet1202" in out and "error: unrecognized arguments: --bogus" not in out


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=12,
)


@given(value=_VALUES)
def test_any_declared_value_comes_back_from_the_file(value: object) -> None:
    # What a flag declaration holds survives the JSON file (tuples read back as lists, which
    # argparse takes alike for choices), and argparse's "not given" comes back as itself.
    def listed(v: object) -> object:
        return [listed(x) for x in v] if isinstance(v, list | tuple) else v

    stored = json.loads(json.dumps(index.encode(value)))
    assert index._decode(stored) == listed(value)
    assert index._decode(json.loads(json.dumps(argparse.SUPPRESS))) is argparse.SUPPRESS
