"""The edge of the Python API: each public function checks its arguments against its own
annotations (:func:`~reslab.checks.values.conform`) before it runs.

``reslab.fit("resnet20")`` ended in ``AttributeError: 'str' object has no attribute 'out'``
from deep inside the trainer (issue 20); now every function that ``reslab`` exports refuses a
wrong type in one line, an :class:`~reslab.errors.ArgumentError` (a ``ReslabError`` and a
``TypeError``) that names the function, the argument and what it must be. The check is the
annotations themselves, so it cannot drift from the signature; the functions stay unchecked
inside reslab, whose callers are typed (mypy).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from reslab.checks.values import conform
from reslab.errors import ArgumentError

__all__ = ["checked"]

T = TypeVar("T")


def checked(obj: T) -> T:
    """``obj`` with its arguments checked on every call: a function is wrapped (the original
    is its ``__wrapped__``), a class gets its ``__init__`` wrapped in place."""
    if isinstance(obj, type):
        init = obj.__init__  # type: ignore[misc]
        obj.__init__ = _wrap(init, f"{obj.__name__}()")  # type: ignore[misc]
        return obj
    fn = typing.cast(Callable[..., Any], obj)
    return typing.cast(T, _wrap(fn, f"{fn.__name__}()"))


def _wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    signature = inspect.signature(fn)
    hints = _hints(fn, signature)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    checks = {
        name: hints[name]
        for name, p in signature.parameters.items()
        if name in hints and p.kind not in variadic
    }

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:  # a missing or unknown argument
            raise ArgumentError(f"{label}: {exc}") from None
        for name, value in bound.arguments.items():
            if name in checks:
                conform(f"{label} argument {name}", value, checks[name], ArgumentError)
        return wrapper.__wrapped__(*args, **kwargs)

    return wrapper


def _hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The parameters' annotations, evaluated; one that names a type only a type checker
    imports is left unchecked rather than guessed."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a TYPE_CHECKING-only name: evaluate the others one by one
        pass
    found = {}
    namespace = getattr(fn, "__globals__", {})
    for name, p in signature.parameters.items():
        if isinstance(p.annotation, str):
            # One annotation at a time, resolved as typing resolves any: no eval of our own.
            holder = types.SimpleNamespace(__annotations__={name: p.annotation})
            try:
                found[name] = typing.get_type_hints(holder, globalns=namespace)[name]
            except Exception:
                continue
    return found
