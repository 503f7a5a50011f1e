"""Ctrl-C and SIGTERM mean stop: the first at the next safe point, a second at once.

One mechanism for every command. The handlers set a mode:

* ``exit`` — nothing is in progress (the command is still importing torch) or the ranks of a
  torchrun job, which cannot agree cheaply on a step to stop at: one line, ``os._exit``. The run
  folder survives a kill at any point, so a torchrun job resumes from its last checkpoint.
* ``raise`` — the command runs (:func:`handling`): the signal raises :class:`Interrupted`,
  which the CLI edge prints as one line, exit 128 + the signal (130 Ctrl-C, 143 SIGTERM).
* ``defer`` — a run is training (:func:`deferring`): the signal only sets a flag; the trainer
  reads it at each step (:func:`requested`), commits a checkpoint there and raises
  :class:`Interrupted`; a study's pool tells its workers to do the same. A second signal in
  any mode is ``exit``: the last committed checkpoint is what a resume starts from.

Study workers (:func:`in_worker`) ignore SIGINT — the terminal sends Ctrl-C to the whole
process group, and the study decides — and defer SIGTERM, which the study forwards once.

Nothing here imports torch: the CLI installs the handlers before the heavy imports.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

__all__ = [
    "Interrupted",
    "at_once",
    "check",
    "deferring",
    "exit_code",
    "handling",
    "in_worker",
    "install_for_command",
    "message",
    "requested",
    "resume_with",
]

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_mode: str | None = None  # None: our handlers are not installed
_received: int | None = None  # the first stop signal, once one came
_quiet = False  # no line on exit (a worker, a torchrun rank other than 0)


def _no_hint() -> str | None:
    return None


_hint: Callable[[], str | None] = _no_hint  # the command that resumes, when there is one
_command: tuple[str, ...] = ()  # the command line's arguments, for a study's resume


class Interrupted(KeyboardInterrupt):
    """The user asked to stop (Ctrl-C or SIGTERM); what was committed stays on disk."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(int(signum))  # picklable: a worker's reaches the study
        self.signum = int(signum)
        self.line: str | None = None  # the command's line, set by :func:`handling`


def exit_code(exc: BaseException | None = None) -> int:
    """128 + the signal, as a shell reports a process a signal ended: 130 Ctrl-C, 143 SIGTERM."""
    signum = getattr(exc, "signum", None) or _received or signal.SIGINT
    return 128 + int(signum)


def message(exc: BaseException | None = None) -> str:
    """The one line the command ends with."""
    if getattr(exc, "line", None):
        return str(exc.line)  # type: ignore[union-attr]
    signum = getattr(exc, "signum", None) or _received or signal.SIGINT
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    try:
        hint = _hint()
    except Exception:  # a hint that cannot be computed must not hide the stop itself
        hint = None
    return f"reslab: {what}; resume with: {hint}" if hint else f"reslab: {what}"


def requested() -> bool:
    """Whether a stop was asked for: the trainer reads it at every step (a global's read)."""
    return _received is not None


def check() -> None:
    """Raise :class:`Interrupted` if a stop was asked for (a safe point was reached)."""
    if _received is not None:
        raise Interrupted(_received)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None or _mode == "exit":
        _exit(signum)
    _received = signum
    if _mode == "raise":
        raise Interrupted(signum)


def _exit(signum: int) -> None:
    """Stop now: the line, then ``os._exit`` (no cleanup to hang in; workers die with us)."""
    if not _quiet:
        with contextlib.suppress(OSError):
            os.write(2, (message(Interrupted(signum)) + "\n").encode("utf-8", "replace"))
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        # A study's queues hold named semaphores, unlinked by finalizers os._exit skips; the
        # resource tracker would unlink them after us, with a warning on the user's terminal.
        # The first stage of multiprocessing's own exit, bounded: it must not hang here.
        done = threading.Thread(target=util._run_finalizers, args=(0,), daemon=True)
        done.start()
        done.join(1.0)
    os._exit(128 + signum)


def _install() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    return True


def install_for_command() -> None:
    """On ``import reslab`` when this process is the ``reslab`` command (the console script or
    ``python -m reslab``): a signal while torch loads ends it with one line, no traceback."""
    global _mode
    argv = getattr(sys, "orig_argv", sys.argv)
    module = any(a == "-m" and b == "reslab" for a, b in itertools.pairwise(argv))
    if _mode is None and (module or Path(sys.argv[0]).name == "reslab") and _install():
        _mode = "exit"


@contextlib.contextmanager
def handling(command: Sequence[str]) -> Iterator[None]:
    """The body of the command ``reslab *command``: a signal raises :class:`Interrupted`,
    whose ``line`` says how to resume (:func:`resume_with`); the previous handlers are back
    after (the CLI runs in-process in tests)."""
    global _mode, _received, _hint, _command
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    saved = _mode, _received, _hint, _command
    _mode, _received, _hint, _command = "raise", None, _no_hint, tuple(command)
    _install()
    try:
        yield
        check()  # a signal deferred to the end of a run that then finished
    except KeyboardInterrupt as exc:
        stopped = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        stopped.line = message(stopped)
        if stopped is exc:
            raise
        raise stopped from None
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        _mode, _received, _hint, _command = saved


def resume_with(hint: Callable[[], str | None] | None = None) -> None:
    """What the stop line tells the user to run: ``hint()`` (None: nothing to resume), or by
    default the same command again (a study skips the runs it finished)."""
    global _hint
    command = "reslab " + shlex.join(_command)
    _hint = hint if hint is not None else (lambda: command)


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Training with commit points: a signal sets the flag the trainer reads. Only where
    :func:`handling` or :func:`in_worker` put our handlers in place (a library caller keeps
    Python's KeyboardInterrupt), and not inside :func:`at_once`."""
    with _mode_set("exit" if _mode == "exit" else "defer"):
        check()
        yield
    check()  # the run reached its end after the signal: this is a safe point too


@contextlib.contextmanager
def at_once(quiet: bool = False) -> Iterator[None]:
    """A signal ends the process at once (``quiet``: without the line): torchrun's ranks."""
    with _mode_set("exit", quiet):
        yield


@contextlib.contextmanager
def _mode_set(mode: str, quiet: bool = False) -> Iterator[None]:
    global _mode, _quiet
    if _mode is None:
        yield
        return
    saved = _mode, _quiet
    _mode, _quiet = mode, quiet or _quiet
    try:
        yield
    finally:
        _mode, _quiet = saved


def in_worker() -> None:
    """A study worker: SIGINT ignored (the study decides), SIGTERM deferred, no line."""
    global _mode, _quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _handler)
    _mode, _quiet = "defer", True
