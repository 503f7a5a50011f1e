"""Documents: the schema of a JSON file (or one section of it), declared and checked in one pass.

A declaration is a tree of specs. Each checks a value at a JSON path (``where``, e.g.
``lesion.nets[0].block``) and raises :class:`Invalid`, one line ``"{where} {problem}"``, at the
first problem; the reader adds which file and what to do. For example, a section::

    Object({"lesion": maybe(Object({
        "chance_error": maybe(NUMBER),
        "nets": objects({"block": ListOf(TEXT, "must be a list of block names"),
                         "errors": ListOf(NUMBER_OR_NULL, "must be a list of numbers",
                                          length="block")}),
    }))})

An :class:`Object` checks only the keys it declares (others are allowed). A key that is absent
reads as :data:`MISSING`, which every spec refuses but :func:`maybe`'s.

A document is read with :func:`parse_json`, the bounded parser: what it returns is nested at
most :data:`~reslab.checks.values.MAX_NESTING` levels and holds only finite numbers of at most
:data:`MAX_DIGITS` digits, so that nothing a declaration accepts can overflow a float, exhaust
the stack or take seconds to convert.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from reslab.checks.values import MAX_ECHO, MAX_NESTING, Bounds, is_int, is_number, shown

__all__ = [
    "MAX_DIGITS",
    "MISSING",
    "NUMBER",
    "NUMBERS",
    "NUMBER_OR_NULL",
    "SPREAD",
    "TEXT",
    "InRange",
    "Invalid",
    "Is",
    "ListOf",
    "MapOf",
    "Maybe",
    "Object",
    "Spec",
    "at_least",
    "maybe",
    "objects",
    "one_of",
    "parse_json",
    "text",
]


class Invalid(ValueError):
    """A value breaks its declaration: one line, ``"{where} {problem}"`` (or the problem alone)."""


def at(where: str, problem: str) -> Invalid:
    return Invalid(f"{where} {problem}" if where else problem)


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


#: What an :class:`Object` passes for a key it lacks (null, which is present, is ``None``).
MISSING: Any = _Missing()


class Spec:
    """One node of a declaration."""

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        """Raise :class:`Invalid` unless ``value`` is valid; ``within``: the enclosing object."""
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        """A list's first, shallow look at an item (see :class:`ListOf`)."""
        return True


@dataclass(frozen=True)
class Is(Spec):
    """A value that passes ``test``; ``problem`` may show it as ``{value}``."""

    test: Callable[[Any], bool]
    problem: str

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        value = None if value is MISSING else value
        if not self.test(value):
            raise at(where, self.problem.replace("{value}", shown(value)))

    def accepts(self, value: Any) -> bool:
        return self.test(value)


@dataclass(frozen=True)
class InRange(Spec):
    """A number of :class:`~reslab.checks.values.Bounds`, worded as the flags' are."""

    bounds: Bounds

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        self.bounds.check(where, value, Invalid)  # an absent number is shown as "got nothing"


@dataclass(frozen=True)
class Maybe(Spec):
    """``spec``, or (with ``absent``) absent, or (with ``null``) null."""

    spec: Spec
    null: bool = True
    absent: bool = True

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        if not ((self.absent and value is MISSING) or (self.null and value is None)):
            self.spec.check(value, where, within)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list whose items all pass a shallow look (``items.accepts``: an :class:`Is`'s test, an
    :class:`Object`'s "is an object"), else ``problem`` for the whole list; then each item is
    checked fully at ``where[i]``. ``length`` names a list of the enclosing object, declared
    before this one, that this one must be as long as (else ``length_problem``, ``{n}``: its
    length). ``nonempty``: at least one item."""

    items: Spec
    problem: str
    length: str | None = None
    length_problem: str = ""
    nonempty: bool = False

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        if not isinstance(value, list) or (self.nonempty and not value):
            raise at(where, self.problem)
        if not all(self.items.accepts(item) for item in value):
            raise at(where, self.problem)
        if self.length is not None and within is not None:
            n = len(within[self.length])
            if len(value) != n:
                raise at(where, (self.length_problem or self.problem).replace("{n}", str(n)))
        if not isinstance(self.items, Is):
            for i, item in enumerate(value):
                self.items.check(item, f"{where}[{i}]", within)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)


@dataclass(frozen=True)
class Object(Spec):
    """A JSON object; each declared key's value is checked by its spec, in declaration order,
    then (with ``others``) every other key's value by ``others``."""

    fields: Mapping[str, Spec]
    problem: str = "must be an object"
    others: Spec | None = None

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        if not isinstance(value, dict):
            raise at(where, self.problem)
        for key, spec in self.fields.items():
            spec.check(value.get(key, MISSING), f"{where}.{key}" if where else key, value)
        if self.others is not None:
            rest = {k: v for k, v in value.items() if k not in self.fields}
            MapOf(self.others).check(rest, where)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)


@dataclass(frozen=True)
class MapOf(Spec):
    """A JSON object of any keys, each value checked by ``spec``."""

    spec: Spec
    problem: str = "must be an object"

    def check(self, value: Any, where: str, within: Mapping[str, Any] | None = None) -> None:
        if not isinstance(value, dict):
            raise at(where, self.problem)
        for key, item in value.items():
            name = key if isinstance(key, str) and len(key) <= MAX_ECHO else shown(key)
            self.spec.check(item, f"{where}.{name}" if where else name, value)


def maybe(spec: Spec, null: bool = True) -> Maybe:
    """``spec``, or absent, or (with ``null``, the default) null."""
    return Maybe(spec, null)


def objects(fields: Mapping[str, Spec]) -> Maybe:
    """An optional list of objects with these ``fields``."""
    return Maybe(ListOf(Object(fields), "must be a list of objects"))


def at_least(lo: int, problem: str = "") -> Is:
    """An integer (not a bool) ≥ ``lo``."""
    return Is(
        lambda v: is_int(v) and v >= lo, problem or f"must be an integer ≥ {lo}, not {{value}}"
    )


def one_of(values: Collection[Any], problem: str = "") -> Is:
    """One of ``values`` (compared with ``==``)."""
    words = problem or f"must be one of {', '.join(map(str, values))}"
    return Is(lambda v: any(v == x for x in values), words)


def text(limit: int) -> Is:
    """A string of at most ``limit`` characters."""
    return Is(
        lambda v: isinstance(v, str) and len(v) <= limit,
        f"must be a string of at most {limit:,} characters",
    )


#: The largest int a declared number may be: a float holds every int up to 2**53 exactly, and
#: what draws the report converts ints to a C long (2**63 in an error bar raised OverflowError).
MAX_INT = 2**53


def _number(v: Any) -> bool:
    return is_number(v) and (not isinstance(v, int) or -MAX_INT <= v <= MAX_INT)


NUMBER = Is(_number, "must be a number (an integer at most 2**53 in size), not {value}")
NUMBER_OR_NULL = Is(lambda v: v is None or _number(v), "must be a number or null")
#: A standard deviation over seeds: never negative (an error bar of -1 is no spread).
SPREAD = Is(lambda v: v is None or (_number(v) and v >= 0), "must be a number ≥ 0 or null")
NUMBERS = ListOf(NUMBER_OR_NULL, "must be a list of numbers")
TEXT = Is(lambda v: isinstance(v, str), "must be a string")


# --- the bounded parser ---------------------------------------------------------------------------

#: A number in a document is smaller than 1e100 in size (a float is finite up to 1.8e308; a
#: measured error, loss or norm has a handful of digits).
MAX_DIGITS = 100
_LARGEST = 10.0**MAX_DIGITS


def parse_json(text: str, depth: int = MAX_NESTING) -> Any:
    """``text`` parsed as JSON, or :class:`Invalid` (one line): not JSON, nested deeper than
    ``depth``, or a number that is not finite (``NaN``, ``Infinity``, ``1e999``) or has more
    than :data:`MAX_DIGITS` digits.

    The hooks see each number's text before it is converted, so a 401-digit integer is refused
    before ``int()`` builds it (Python refuses to convert more than 4,300 digits at all). The C
    parser raises ``RecursionError`` past the interpreter's recursion limit; anything shallower
    is measured without recursion.
    """
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise Invalid(f"is not valid JSON ({exc.msg} at {where})") from None
    except RecursionError:
        _too_deep(depth)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > depth:
            _too_deep(depth)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return value


def _too_deep(depth: int) -> NoReturn:
    raise Invalid(f"is nested more than {depth} levels deep") from None


def _too_large(text: str) -> NoReturn:
    number = text if len(text) <= 24 else f"{text[:20]}... ({len(text):,} characters)"
    raise Invalid(f"holds a number larger than 1e{MAX_DIGITS}: {number}")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        _too_large(text)
    return int(text)


def _float(text: str) -> float:
    value = float(text)  # float() of a long digit string is linear: it needs no bound first
    if not abs(value) < _LARGEST:  # inf (1e999) too; NaN never comes as a float's text
        _too_large(text)
    return value


def _constant(text: str) -> NoReturn:
    raise Invalid(f"holds {text}, which is not a number JSON can hold; null means not measured")
