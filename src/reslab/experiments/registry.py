"""The study registry: one :class:`Study` describes one ``reslab <study>`` command end to end.

A study is data plus functions: which runs to train (``plan``), what to measure on them
(``analyse``), what the numbers say (``verdict``), and how its report looks (``figures``,
``tables``, ``intro``). :func:`reslab.experiments.run_study`, ``reslab report`` and the
``reslab <study>`` subcommands read everything from here, so adding a study is one new module
that builds a :class:`Study` and one :func:`register` line in ``experiments/__init__.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reslab.checks import MAX_ITEMS, Bounds, Spec, shown
from reslab.errors import ConfigError

if TYPE_CHECKING:
    from reslab.experiments.config import RunSpec, StudyConfig
    from reslab.report.figures import FigureSpec
    from reslab.report.html import ItemFormat, Section

__all__ = [
    "TRAINING",
    "Bounds",
    "Flag",
    "Study",
    "Views",
    "comma",
    "get_study",
    "ints",
    "list_studies",
    "names",
    "parse_ints",
    "register",
]


@dataclass(frozen=True)
class Flag:
    """One of a study's own command-line flags (the common ones are in ``reslab.cli``).

    A number (or a list of numbers) is declared by its bounds (:mod:`reslab.checks`:
    ``integer(1, 10**5)``, ``integers(0, MAX_STEPS)``, ``number(0, 1)``) in place of ``parse``,
    never by ``int``: the flag's text is parsed and checked by the bounds, and
    :class:`~reslab.experiments.StudyConfig` checks the value against them again however it was
    given (flag or Python), before anything is written. A bare ``int`` or ``float`` parser is
    refused when the study is defined.
    """

    flag: str  # e.g. "--probe-steps"
    default: str | None  # as typed on the command line, e.g. "0,10,30"
    help: str  # the --help line
    parse: Callable[[str], Any] | Bounds = str  # the flag's text to the value, or its bounds
    dest: str = ""  # a StudyConfig field or a key of StudyConfig.options; "" = from the flag

    def __post_init__(self) -> None:
        if self.parse in (int, float):
            raise TypeError(
                f"{self.flag}: declare a number by its bounds (reslab.checks.integer(lo, hi)), "
                "not by int or float: every number a study takes is bounded"
            )

    @property
    def bounds(self) -> Bounds | None:
        """The type and range of the flag's number(s), or None for a text flag."""
        return self.parse if isinstance(self.parse, Bounds) else None

    def read(self, text: str) -> Any:
        """The flag's text as its value, checked: ``"0,10"`` -> ``(0, 10)``."""
        if isinstance(self.parse, Bounds):
            return self.parse.parse(text, self.flag)
        return self.parse(text)

    @property
    def name(self) -> str:
        """Where the value goes: ``--probe-steps`` -> ``probe_steps``."""
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    def parsed_default(self) -> Any:
        """The default as a value (None stays None): what a config made in Python gets."""
        return None if self.default is None else self.read(self.default)


#: The common settings a study that trains nets takes (StudyConfig fields, and their flags).
TRAINING = (
    "recipe",
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "width",
    "precision",
    "cluster",
    "ray_address",
)


def _no_check(config: StudyConfig) -> None:
    return None


def _no_tables(results: Mapping[str, Any]) -> list[Section]:
    return []


@dataclass(frozen=True)
class Views:
    """How a study's results look: its figures, tables and verdict items, and the part of
    results.json they read, declared (checked before anything is drawn or written)."""

    figures: tuple[FigureSpec, ...] = ()  # in report order; each draws or returns None
    tables: Callable[[Mapping[str, Any]], list[Section]] = _no_tables  # the report's tables
    verdict_formats: Mapping[str, ItemFormat] = field(default_factory=dict)  # verdict keys
    results: Spec | None = None  # the study's own results.json section, declared
    text_table: Callable[[Mapping[str, Any]], str] | None = None  # console; None: generic


@dataclass(frozen=True)
class Study:
    """One study: its command, its runs, its analysis, its verdict and how it looks."""

    name: str  # the subcommand and results.json's "experiment"
    help: str  # one line for `reslab --help`
    title: str  # report title; {dataset}, {depth} (the deepest) and any config key filled in
    intro: str  # the report's opening paragraph
    plan: Callable[[StudyConfig], list[RunSpec]]  # the runs, most expensive first
    analyse: Callable[[StudyConfig, list[dict[str, Any]]], dict[str, Any]]  # results sections
    verdict: Callable[[Mapping[str, Any], StudyConfig], dict[str, Any]]  # {"text": ..., ...}
    # Its Views, or the module that defines them as VIEWS: a views module reads the study's
    # own module, so the study names it rather than importing it (one way, no cycle).
    views: Views | str = Views()
    depths: tuple[int, ...] = (20, 56)  # its default depths
    seeds: tuple[int, ...] = (0,)  # its default seeds
    one_depth: bool = False  # compares nets of one depth: takes --depth, not --depths
    takes: tuple[str, ...] = (*TRAINING, "pack")  # the common settings it takes as flags
    defaults: Mapping[str, Any] = field(default_factory=dict)  # its defaults for others
    flags: tuple[Flag, ...] = ()  # the study's own flags, after the common ones in --help
    check: Callable[[StudyConfig], None] = _no_check  # refuse configs the study cannot run
    snapshots: bool = False  # runs keep weights at config.probe_steps (for gradient flow)

    def look(self) -> Views:
        """The study's :class:`Views` (imported from its views module on first use)."""
        if isinstance(self.views, Views):
            return self.views
        views = importlib.import_module(self.views).VIEWS
        assert isinstance(views, Views), f"{self.views}.VIEWS is not a Views"
        return views

    def format_title(self, config: StudyConfig) -> str:
        return self.title.format_map({**config.to_json(), "depth": max(config.depths)})


_STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add ``study`` to the registry (its name must be new) and return it."""
    if study.name in _STUDIES:
        raise ValueError(f"a study named {study.name!r} is already registered")
    _STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    """The registered study called ``name``; a one-line ConfigError names the others."""
    try:
        return _STUDIES[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {shown(name)}: try {', '.join(_STUDIES)}") from None


def list_studies() -> tuple[str, ...]:
    """The registered studies' names, in registration order (``reslab --help``'s order)."""
    return tuple(_STUDIES)


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    """``"20,56"`` -> ``(20, 56)``; a one-line ConfigError naming ``flag`` otherwise."""
    parts = [v for v in text.split(",") if v.strip()]
    try:
        if len(parts) > MAX_ITEMS or any(len(v) > 100 for v in parts):
            raise ValueError(text)
        return tuple(int(v) for v in parts)
    except ValueError as exc:
        raise ConfigError(
            f"{flag} must be up to {MAX_ITEMS:,} integers separated by commas, got {shown(text)}"
        ) from exc


def ints(flag: str) -> Callable[[str], tuple[int, ...]]:
    """A :attr:`Flag.parse` for comma-separated integers."""
    return lambda text: parse_ints(text, flag)


def names(text: str) -> tuple[str, ...]:
    """A :attr:`Flag.parse` for comma-separated names: ``"plain, A"`` -> ``("plain", "A")``."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def comma(values: Sequence[int]) -> str:
    """``(20, 56)`` -> ``"20,56"``: a default as the user would type it."""
    return ",".join(str(v) for v in values)
