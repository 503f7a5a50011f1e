"""Values: the documented bounds on everything a user or a file can make reslab allocate,
build or echo, the one type check of a value, and the one way to echo it (:func:`shown`).

Every number that comes from a flag, a TOML/JSON config, a study flag or a weights header is
checked here, at the edge, before anything is written or built: its type (a bool is a bool,
an int is not a bool, a float is finite) and its range. The maxima are generous for the
papers' nets and small enough that no input can exhaust the machine:

=====================  ===================  ==============================================
quantity               bound                why
=====================  ===================  ==============================================
depth                  ≤ 2,000 layers       He et al. train 1202 (2015) and 1001 (2016)
width                  (0, 64]              a multiplier; 64 × resnet20 is already 1.1 B
params                 ≤ 500 M              8 × ResNet-152; checked from the layout
num_classes            ≤ 100,000            ImageNet-21k has 21,841
in_channels            ≤ 1,024              images have 1-4; spectral stacks a few hundred
seed                   [0, 2**63)           torch.manual_seed takes [-2**63, 2**64)
threads, --jobs        ≤ 4 × usable cores   see :func:`max_threads`; a saved config ≤ 1,024
steps                  ≤ 10**9              ImageNet's 600k iterations × 1,600
epochs                 ≤ 10**6
batch sizes            ≤ 65,536             the largest batches of Goyal et al. × 8
images (splits)        ≤ 10**8              ImageNet-21k has 14 M
list lengths           ≤ 1,000 items        milestones, snapshot steps, seeds, depths
text values            ≤ 4,096 characters   PATH_MAX; no NUL character
names (not paths)      ≤ 64 characters      the longest model name is 17
config files           ≤ 1 MiB, nesting 32  a full config is ~2 kB and 2 levels deep
echoed user text       ≤ 60 characters      then "…"; an error line ≤ 2,000 characters
=====================  ===================  ==============================================

An error names the value (truncated by :func:`shown`), the bound, and what to pass instead,
in one line: a :class:`~reslab.errors.ConfigError` unless the caller asks for another exception
(``error=ModelError`` in the model registry, :class:`~reslab.checks.document.Invalid` in a file).
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import sys
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reslab.errors import ConfigError

__all__ = [
    "FLOAT_MAX",
    "MAX_BATCH",
    "MAX_CLASSES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_ECHO",
    "MAX_EPOCHS",
    "MAX_IMAGES",
    "MAX_IN_CHANNELS",
    "MAX_ITEMS",
    "MAX_LINE",
    "MAX_NAME",
    "MAX_NESTING",
    "MAX_PARAMS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_TEXT",
    "MAX_THREADS",
    "MAX_WIDTH",
    "Bounds",
    "check_names",
    "check_text",
    "conform",
    "hint_name",
    "integer",
    "integers",
    "is_int",
    "is_number",
    "matching",
    "max_threads",
    "number",
    "one_line",
    "printable",
    "shown",
    "shown_path",
]

MAX_DEPTH = 2_000
MAX_WIDTH = 64.0
MAX_PARAMS = 500_000_000
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 1_024
MAX_SEED = 2**63  # exclusive
MAX_THREADS = 1_024  # in any config, even a saved one; a new run's: max_threads()
MAX_STEPS = 10**9
MAX_EPOCHS = 10**6
MAX_BATCH = 65_536
MAX_IMAGES = 10**8
MAX_ITEMS = 1_000
MAX_TEXT = 4_096
MAX_NAME = 64  # a name (model, dataset, recipe, device, option): the longest real one is 17
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 32
MAX_ECHO = 60
MAX_LINE = 2_000
#: "finite" as an upper bound: a learning rate or weight decay has no sane maximum, but inf
#: has to be refused (a huge finite one diverges, which the NaN stop reports in one line)
FLOAT_MAX = sys.float_info.max


def max_threads() -> int:
    """The most CPU threads a run may ask for: 4 × the cores this process may use.

    A saved ``config.json`` may hold up to :data:`MAX_THREADS` (it may come from a bigger
    machine, and a resumed run may lower it with ``--threads``); a new run's threads, however
    given, are checked against this machine's.

    More threads than cores only time-slice. A small multiple costs little (on this project's
    2-core machine at load 5-7, a 2-epoch resnet8 run took 17-29 s with ``--threads 8`` and
    18-29 s with ``--threads 2``: noise), while issue 11 found ``--threads 5000`` turning 4 s
    into minutes and ``--threads 100000`` segfaulting in thread creation. 4× leaves room to
    measure oversubscription, and for an affinity mask that under-reports SMT siblings.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return 4 * max(1, cores)


# --- echoing user text -----------------------------------------------------------------------


def shown(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis: safe to put in a message.

    A huge int is not converted to decimal at all (Python refuses more than 4,300 digits), and a
    list or object from a file is shown by its first items only (:data:`_ITEMS`): its repr
    could be 64 MB, or nested past the recursion limit.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length():,} bits"
    if isinstance(value, str | bytes) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # repr of a 50 MB string costs 50 MB; cut it first
        text = repr(value)[:limit]
    else:
        try:
            text = _ITEMS.repr(value) if isinstance(value, list | dict) else repr(value)
        except (RecursionError, ValueError):
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ITEMS = reprlib.Repr()  # containers: a few items, 3 levels; strings and ints cut inside
_ITEMS.maxlist = _ITEMS.maxdict = _ITEMS.maxlevel = 6
_ITEMS.maxstring = _ITEMS.maxother = MAX_ECHO


def shown_path(path: str | os.PathLike[str], limit: int = 200) -> str:
    """A path as a message shows it: as typed, unquoted, cut to ``limit`` characters."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(message: str, limit: int = MAX_LINE) -> str:
    """``message`` as one line of at most ``limit`` characters (the CLI's error line), every
    character printable on any UTF-8 stream (a file name's undecodable byte as ``\\udcff``)."""
    text = " ".join(printable(message[: 4 * limit]).split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ANSI escape sequences (CSI ``ESC [ ... m``, OSC ``ESC ] ... BEL``, two-byte ``ESC x``), then
# what is left of the C0/C1 controls but newline and tab, and the invisible format characters
# that reorder or hide text: bidi embeddings, overrides and isolates (the "Trojan Source" set,
# CVE-2021-42574), marks, the BOM, line and paragraph separators.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]"
    "|[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def printable(text: str) -> str:
    """``text`` without control characters, ANSI escapes or bidi overrides (newline and tab
    stay): how a name from the user's data (a class folder, a path) is shown on a terminal,
    where it must not move the cursor, recolour the screen or reverse the line around it."""
    return _ESCAPES.sub("", text)


# --- numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """A number's type and range, or (``many=True``) a list of such numbers.

    ``kind`` is ``int`` (bools refused) or ``float`` (ints accepted, bools refused, finite
    only: a "number" in messages is never inf or nan); ``lo``/``hi`` are inclusive unless
    ``lo_open``/``hi_open``; ``hi`` may be a function, for bounds that depend on the machine
    (:func:`max_threads`).
    """

    kind: type
    lo: float
    hi: float | Callable[[], float]
    lo_open: bool = False
    hi_open: bool = False
    many: bool = False  # a list of up to MAX_ITEMS numbers
    example: str = ""  # appended to the description, e.g. ", e.g. 0.999"

    @property
    def top(self) -> float:
        return self.hi() if callable(self.hi) else self.hi

    def describe(self, one: bool = False) -> str:
        """``"a positive integer, at most 1,000,000"``: the words an error uses (``one``: an
        item's)."""
        plural = self.many and not one
        integer, top = self.kind is int, self.top
        if integer and self.lo in (0, 1) and not self.lo_open:
            what = "positive integer" if self.lo == 1 else "integer, zero or positive"
        elif not integer and self.lo == 0 and top == FLOAT_MAX:
            what = "positive number" if self.lo_open else "number, zero or positive"
        elif not integer and self.lo == -FLOAT_MAX and top == FLOAT_MAX:
            what = "finite number"
        elif not integer and self.lo == 0 and self.lo_open and not self.hi_open:
            what = "positive number"
        else:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            noun = "integer" if integer else "number"
            what = f"{noun} in {left}{_num(self.lo)}, {_num(top)}{right}"
        if top != FLOAT_MAX and " in " not in what:
            what += f", {'below' if self.hi_open else 'at most'} {_num(top)}"
        what = ("an " if what[0] in "aeiou" else "a ") + what + self.example
        return f"a list of up to {MAX_ITEMS:,} items, each {what}" if plural else what

    def check(self, name: str, value: Any, error: type[Exception] = ConfigError) -> Any:
        """``value`` if it is of the right type and in range (ints as floats for ``float``)."""
        if self.many:
            if not isinstance(value, list | tuple) or len(value) > MAX_ITEMS:
                raise error(f"{name} must be {self.describe()}, got {shown(value)}")
            return type(value)(self._one(f"{name}[{i}]", v, error) for i, v in enumerate(value))
        return self._one(name, value, error)

    def _one(self, name: str, value: Any, error: type[Exception]) -> Any:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and self.kind is int:
            ok = isinstance(value, int)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok:
            top = self.top
            ok = (value > self.lo if self.lo_open else value >= self.lo) and (
                value < top if self.hi_open else value <= top
            )
        if not ok:
            raise error(f"{name} must be {self.describe(one=True)}, got {shown(value)}")
        return float(value) if self.kind is float else value

    def parse(self, text: str, name: str) -> Any:
        """A flag's text to its checked value: ``"20,56"`` for ``many``, else one number."""
        parts = [p for p in text.split(",") if p.strip()] if self.many else [text]
        if self.many and len(parts) > MAX_ITEMS:
            raise ConfigError(f"{name} must be {self.describe()}, got {len(parts):,} items")
        values: list[Any] = []
        for part in parts:
            try:
                values.append(self.kind(part.strip()) if len(part) <= 100 else part)
            except ValueError:
                values.append(part)  # refused below, by type
        return self.check(name, tuple(values) if self.many else values[0])


def integer(lo: int, hi: int | Callable[[], int], **options: Any) -> Bounds:
    """``Bounds(int, lo, hi)``: one integer, e.g. a study flag's ``integer(1, 10**5)``."""
    return Bounds(int, lo, hi, **options)


def integers(lo: int, hi: int) -> Bounds:
    """A list of up to :data:`MAX_ITEMS` integers in ``[lo, hi]``: ``--depths 20,56``."""
    return Bounds(int, lo, hi, many=True)


def number(lo: float, hi: float, **options: Any) -> Bounds:
    """``Bounds(float, lo, hi)``: one finite number."""
    return Bounds(float, lo, hi, **options)


def is_number(x: Any) -> bool:
    """A JSON number: int or float, not bool (any float: a report shows inf and nan as they are)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_int(x: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _num(v: float) -> str:
    if isinstance(v, int) and v > 2**32 and v & (v - 1) == 0:
        return f"2**{v.bit_length() - 1}"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else str(v)


# --- types --------------------------------------------------------------------------------------


def conform(name: str, value: Any, hint: Any, error: type[Exception] = ConfigError) -> Any:
    """``value`` checked against the annotation ``hint``; the one type checker of settings.

    Understands ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, Any]``, ``int`` (not
    bool), ``float`` (ints accepted, returned as float), ``bool`` (only ``True``/``False``,
    never a truthy string) and ``str`` (at most :data:`MAX_TEXT` characters, no NUL, and
    encodable as a file name). Lists hold at most :data:`MAX_ITEMS` items.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return conform(name, value, inner[0], error)
        for one in inner:  # str | Path, int | Sequence[int]: the first that fits
            try:
                return conform(name, value, one, error)
            except error:
                continue
        raise error(f"{name} must be {' or '.join(map(hint_name, args))}, got {_kind(value)}")
    if origin is not None and origin not in (list, tuple, dict):
        return _conform_abstract(name, value, origin, args, error)
    if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed length: (3, 32, 32)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise error(f"{name} must be {len(args)} items ({hint_name(hint)}), got {_kind(value)}")
        return tuple(
            conform(f"{name}[{i}]", v, a, error)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (list, tuple) and (origin is list or args[1:] == (Ellipsis,)):
        if not isinstance(value, list | tuple) or len(value) > MAX_ITEMS:
            raise error(f"{name} must be a list of up to {MAX_ITEMS:,} items, got {_kind(value)}")
        items = [conform(f"{name}[{i}]", v, args[0], error) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise error(f"{name} must be a table of settings, got {_kind(value)}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise error(f"{name} must be a finite number, got {shown(value)}") from None
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return check_text(name, value, error)
    if isinstance(hint, type) and hint not in (int, float, bool, str) and isinstance(value, hint):
        return value  # any other class: TrainConfig, nn.Module, Path
    raise error(f"{name} must be {hint_name(hint)}, got {_kind(value)}")


def _conform_abstract(
    name: str, value: Any, origin: Any, args: tuple[Any, ...], error: type[Exception]
) -> Any:
    """``Callable[...]``, ``Sequence[X]``, ``Mapping[K, V]``, ``os.PathLike[str]``: checked
    as such, and returned as given (a tuple stays a tuple)."""
    if origin is typing.Literal:
        if value not in args:
            raise error(f"{name} must be one of {', '.join(map(repr, args))}, got {_kind(value)}")
        return value
    what = hint_name(origin[args] if args and origin is not abc.Callable else origin)
    if origin is abc.Callable:
        if not callable(value):
            raise error(f"{name} must be a function, got {_kind(value)}")
        return value
    if origin is abc.Sequence and isinstance(value, list | tuple) and len(value) <= MAX_ITEMS:
        for i, item in enumerate(value):
            conform(f"{name}[{i}]", item, args[0] if args else Any, error)
        return value
    if origin is abc.Mapping and isinstance(value, abc.Mapping):
        key_hint, value_hint = args if len(args) == 2 else (Any, Any)
        for key, item in value.items():
            conform(f"{name} key", key, key_hint, error)
            conform(f"{name}[{shown(key, 30)}]", item, value_hint, error)
        return value
    if origin not in (abc.Sequence, abc.Mapping) and isinstance(value, origin):
        return value
    raise error(f"{name} must be {what}, got {_kind(value)}")


def hint_name(hint: Any) -> str:
    """An annotation as a message names it: ``TrainConfig``, ``None``, ``Sequence[int]``."""
    if hint is type(None) or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def check_names(values: Mapping[str, Any], paths: tuple[str, ...], prefix: str = "") -> None:
    """Every text value in ``values`` but the ``paths`` is a name of at most :data:`MAX_NAME`
    characters (lists of names too): a name is echoed by whoever refuses it."""
    for key, value in values.items():
        items = value if isinstance(value, list | tuple) else [value]
        if key in paths:
            continue
        for item in items:
            if isinstance(item, str) and len(item) > MAX_NAME:
                raise ConfigError(
                    f"{prefix}{key} must be a name of at most {MAX_NAME} characters, got "
                    f"{len(item):,} ({shown(item, 30)})"
                )


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {shown(value)}"


def check_text(name: str, value: str, error: type[Exception] = ConfigError) -> str:
    """``value`` if it is at most :data:`MAX_TEXT` characters, NUL-free and valid Unicode."""
    if len(value) > MAX_TEXT:
        raise error(f"{name} must be at most {MAX_TEXT:,} characters, got {len(value):,}")
    if "\x00" in value:
        raise error(f"{name} must not contain a NUL character, got {shown(value)}")
    try:
        os.fsencode(value)  # lone surrogates (from JSON "\ud800") name no file and print badly
    except UnicodeEncodeError:
        raise error(f"{name} is not valid Unicode text, got {shown(value)}") from None
    return value


def matching(names: list[str], pattern: str | None, error: type[Exception]) -> list[str]:
    """The ``names`` a regular expression finds (all without one); a bad one raises ``error``."""
    if not pattern:
        return list(names)
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise error(f"filter {pattern!r} is not a regular expression ({exc})") from exc
    return [n for n in names if regex.search(n)]
