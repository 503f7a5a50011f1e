"""The command line's declarations as data, so ``reslab --help`` need not import torch.

The flags come from the program: ``reslab train``'s from :class:`~reslab.train.TrainConfig`,
each study's from the study registry, ``reslab models``' table from the registry's layouts.
Reading them means importing torch (2.5-3 s of a bare ``reslab --help`` here; the numbers are
in docs/PERFORMANCE.md). So the command modules' ``register(sub)`` functions run once against a
recorder (:func:`declare`), and what they declared, every ``add_parser``, ``add_argument`` and
``set_defaults`` call with its arguments, is kept in ``reslab/_data/cli.json`` with the models
table. :func:`build` replays it on argparse without importing any of it: a handler (``func``)
stays a ``"module:name"`` string that :func:`handler` imports once the command is chosen, and
a flag's ``type`` is a builtin or :mod:`reslab.cli.flagtypes`. ``tests/cli/test_index.py``
holds the file equal to what the program declares now; after changing a flag, a help text, a
study or a model, rewrite it with ``python scripts/cli_index.py`` (``make cli-index``).
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parents[1] / "_data" / "cli.json"

_REF = "ref"  # {"ref": "module:name"}: a callable or class, by name


def encode(value: Any) -> Any:
    """A declaration's argument as JSON: callables and classes by their import name."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    name = f"{getattr(value, '__module__', '')}:{getattr(value, '__qualname__', '')}"
    if callable(value) and "<" not in name and not name.startswith(":"):
        return {_REF: name}
    raise TypeError(f"a command-line declaration cannot hold {value!r}: give it a name")


def resolve(ref: str) -> Any:
    """``"module:name"`` -> the object (the module is imported now)."""
    module, _, name = ref.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return resolve(value[_REF])
    # argparse tells "not given" by identity (``default is SUPPRESS``), never by equality.
    return argparse.SUPPRESS if value == argparse.SUPPRESS else value


class _Recorder:
    """Stands in for an argparse parser (or its subparsers) and writes down each call."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.calls: list[list[Any]] = []

    def add_parser(self, name: str, **kwargs: Any) -> _Recorder:
        parser = _Recorder()
        self.commands.append({"name": name, "kwargs": encode_all(kwargs), "calls": parser.calls})
        return parser

    def add_argument(self, *args: str, **kwargs: Any) -> None:
        self.calls.append(["add_argument", list(args), encode_all(kwargs)])

    def set_defaults(self, **kwargs: Any) -> None:
        self.calls.append(["set_defaults", [], encode_all(kwargs)])


def encode_all(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: encode(value) for key, value in kwargs.items()}


def declare(modules: Iterable[str]) -> list[dict[str, Any]]:
    """Every command the ``modules``' ``register`` functions declare, as data (imports them)."""
    recorder = _Recorder()
    for name in modules:
        importlib.import_module(name).register(recorder)
    return recorder.commands


def build(sub: Any, commands: Iterable[dict[str, Any]]) -> None:
    """Add the declared ``commands`` to argparse's ``sub`` (from ``add_subparsers``)."""
    for command in commands:
        parser = sub.add_parser(command["name"], **_kwargs(command["kwargs"]))
        for method, args, kwargs in command["calls"]:
            getattr(parser, method)(*args, **_kwargs(kwargs))


def _kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # A handler stays a name until its command runs: importing it may import torch.
    return {key: value[_REF] if key == "func" else _decode(value) for key, value in kwargs.items()}


def handler(func: Callable[[argparse.Namespace], int] | str) -> Callable[..., Any]:
    """A parsed command's handler: a function, or the name the index keeps of one."""
    return resolve(func) if isinstance(func, str) else func


def load() -> dict[str, Any]:
    """The stored declarations: ``{"commands": [...], "models": [[name, depth, ...], ...]}``."""
    with open(PATH, encoding="utf-8") as fh:
        stored: dict[str, Any] = json.load(fh)
    return stored


def current() -> dict[str, Any]:
    """What the program declares now (imports every command module, and torch)."""
    from reslab.cli import COMMAND_MODULES
    from reslab.cli.models import model_rows

    return {"commands": declare(COMMAND_MODULES), "models": model_rows()}


def write(path: Path = PATH) -> Path:
    """Store :func:`current` at ``path``."""
    from reslab.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(current(), indent=1, ensure_ascii=False) + "\n")
    return path
