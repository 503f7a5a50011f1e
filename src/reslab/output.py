"""What reslab prints: one writer for stdout and stderr, a view that never stops the work.

What the program prints is a view of what it does. A reader that goes away (``reslab train |
head -1`` closes the pipe after one line), a stream that cannot encode ``×`` or ``±``
(``PYTHONIOENCODING=ascii``, ``LC_ALL=C`` without UTF-8 coercion) or a name from the user's
data with control characters in it changes what is shown, never what is trained or saved:

* every line passes :func:`reslab.checks.printable` (no control characters, ANSI escapes or
  bidi overrides from a class name or a path reach the terminal);
* text the stream cannot encode is written in ASCII (``×`` as ``x``, ``±`` as ``+/-``), the
  rest as ``?``;
* when the stream fails (a closed pipe: ``BrokenPipeError``; a full disk; a closed file), the
  writer stops printing and points the file descriptor at ``/dev/null``, as Python's docs
  recommend (https://docs.python.org/3/library/signal.html#note-on-sigpipe), so the run goes
  on, the interpreter's last flush at exit finds nothing to complain about ("Exception ignored
  ... BrokenPipeError") and the workers a study starts afterwards inherit the null device.

The CLI puts :class:`View` in front of ``sys.stdout`` and ``sys.stderr`` for the whole command
(:func:`console`); library code prints with :func:`say`, which goes through the same writer
when called from Python. The progress bar (rich) writes its own escapes through
:func:`bar_stream`: the same writer without the cleaning; the lines it is given are cleaned first.
"""

from __future__ import annotations

import io
import os
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

from reslab.checks.values import printable

__all__ = ["View", "bar_stream", "console", "fit", "say"]

# What our own messages use outside ASCII, as ASCII (the rest becomes "?").
_ASCII = str.maketrans({
    "×": "x", "±": "+/-", "≈": "~", "≤": "<=", "≥": ">=", "…": "...", "→": "->", "←": "<-",
    "—": "-", "–": "-", "−": "-", "‖": "||", "·": "*", "²": "^2", "√": "sqrt", "∂": "d",
    "∇": "grad", "§": "S", "“": '"', "”": '"', "’": "'", "‘": "'", "µ": "u", "μ": "u",
    "λ": "lambda", "α": "alpha", "β": "beta", "σ": "sigma", "θ": "theta", "Σ": "sum",
})  # fmt: skip


def fit(text: str, encoding: str | None) -> str:
    """``text`` as a stream of ``encoding`` can write it: unchanged if it can, else with our
    symbols in ASCII and anything still unencodable as ``?``."""
    encoding = encoding or "utf-8"
    try:
        text.encode(encoding)
        return text
    except UnicodeEncodeError:
        pass
    except LookupError:  # an encoding Python does not know: ASCII is always safe
        encoding = "ascii"
    text = text.translate(_ASCII)
    return text.encode(encoding, "replace").decode(encoding, "replace")


class View(io.TextIOBase):
    """``stream`` as reslab writes to it: cleaned, encodable, and silent once it has failed.

    ``clean=False`` (the progress bar's own escapes) skips :func:`printable` only.
    """

    def __init__(self, stream: TextIO | None, clean: bool = True) -> None:
        super().__init__()
        self.stream = stream
        self.clean = clean
        self.gone = stream is None  # no stream at all (a closed file descriptor at start)

    def __getattr__(self, name: str) -> Any:  # buffer, mode, name...: the stream's own
        if name == "stream":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.stream, name)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return not self.gone and bool(self.stream and self.stream.isatty())
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.stream is None:
            raise io.UnsupportedOperation("no stream")
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if self.gone or not text:
            return len(text)
        shown = fit(printable(text) if self.clean else text, self.encoding)
        try:
            assert self.stream is not None
            self.stream.write(shown)
            if "\n" in shown:  # a line at a time: a closed pipe is noticed at once
                self.stream.flush()
        except (OSError, ValueError):  # EPIPE, ENOSPC, EIO; ValueError: a closed file
            self._stop()
        return len(text)

    def flush(self) -> None:
        if self.gone or self.stream is None:
            return
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._stop()

    def _stop(self) -> None:
        """Print nothing more; point the file descriptor at /dev/null (the Python docs' advice)
        so that the interpreter's own flush at exit, and child processes, find a sink."""
        self.gone = True
        try:
            fd = self.stream.fileno() if self.stream is not None else -1
        except (OSError, ValueError, AttributeError):
            return
        if fd < 0:
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


# Views of streams that are not behind a View already (library use): one per stream, so a
# stream that failed stays silent.
_VIEWS: weakref.WeakKeyDictionary[Any, View] = weakref.WeakKeyDictionary()


def _view(stream: Any, clean: bool = True) -> View:
    if isinstance(stream, View):
        return stream if stream.clean == clean else View(stream.stream, clean)
    if stream is None:
        return View(None)
    try:
        view = _VIEWS.get(stream)
        if view is None or view.clean != clean:
            view = _VIEWS[stream] = View(stream, clean)
        return view
    except TypeError:  # a stream that takes no weak reference
        return View(stream, clean)


def say(text: str, err: bool = False) -> None:
    """Print one line to stdout (or stderr) through the writer."""
    view = _view(sys.stderr if err else sys.stdout)
    view.write(f"{text}\n")


def bar_stream(err: bool = False) -> TextIO:
    """The stream a progress bar draws on: the writer, without the cleaning of its escapes."""
    stream = sys.stderr if err else sys.stdout
    return cast(TextIO, _view(stream.stream if isinstance(stream, View) else stream, False))


def _null_if_closed(fd: int) -> None:
    """Open /dev/null on ``fd`` if it is closed: else the next file opened would take it, and
    a worker started later would print into that file."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


@contextmanager
def console() -> Iterator[None]:
    """Put the writer in front of ``sys.stdout`` and ``sys.stderr`` for the block (a CLI
    command); flush and restore them after it."""
    saved = sys.stdout, sys.stderr
    for fd, stream in ((1, saved[0]), (2, saved[1])):
        if stream is None:  # started with the descriptor closed (`reslab ... >&-`)
            _null_if_closed(fd)
    sys.stdout, sys.stderr = _view(saved[0]), _view(saved[1])
    try:
        yield
    finally:
        for view in (sys.stdout, sys.stderr):
            view.flush()
        sys.stdout, sys.stderr = saved
