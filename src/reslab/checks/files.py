"""Reading what a user points reslab at: an input path, a config file's text, its parse.

Each refuses in one line (a :class:`~reslab.errors.ConfigError` unless the caller asks for another
:class:`~reslab.errors.ReslabError`) before anything large is read or parsed.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NoReturn

from reslab.checks.values import MAX_CONFIG_BYTES, MAX_NESTING, check_text, shown, shown_path
from reslab.errors import ConfigError, ReslabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "check_nesting",
    "file_kind",
    "input_path",
    "open_input",
    "parse_config_text",
    "read_config_text",
]

# --- paths --------------------------------------------------------------------------------------


def input_path(
    path: str | os.PathLike[str],
    what: str,
    *,
    folder: bool = False,
    error: type[ReslabError] = ConfigError,
    cannot_read: bool = False,
) -> Path:
    """``path`` if it names an existing file (or ``folder``); else one line saying why not.

    Tells apart what ``Path.is_file`` lumps together as "does not exist": a symlink loop, a
    broken symlink, a folder where a file is expected, a path through a file, no permission.
    The line reads ``{what} {path} {why}``, or with ``cannot_read``, ``cannot read {what}
    {path}: it {why}``.
    """
    text = os.fspath(path)
    if isinstance(text, str):
        check_text(what, text, error)
    p = Path(text)
    where = f"{what} {shown_path(text)}"

    def refuse(why: str) -> NoReturn:
        raise error(f"cannot read {where}: it {why}" if cannot_read else f"{where} {why}")

    try:
        mode = p.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse("is a symlink loop; point it at a real file")
        if exc.errno == errno.ENOENT and p.is_symlink():
            refuse("is a broken symlink: its target does not exist")
        if exc.errno == errno.ENOENT:
            refuse("does not exist")
        if exc.errno == errno.ENOTDIR:
            refuse("does not exist: a part of its path is a file, not a folder")
        raise error(f"cannot read {where}: {exc.strerror or exc}") from None
    if folder and not stat.S_ISDIR(mode):
        refuse("is not a folder")
    if not folder and stat.S_ISDIR(mode):
        refuse("is a folder, not a file")
    if not folder and not stat.S_ISREG(mode):
        # Opening a FIFO blocks until a writer comes; /dev/zero never ends: refused by kind.
        refuse(f"is {file_kind(mode)}, not a regular file; point it at a file")
    return p


def file_kind(mode: int) -> str:
    """What ``st_mode`` names, for a message: "a FIFO (named pipe)", "a folder", ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def open_input(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: type[ReslabError] = ConfigError,
    nofollow: bool = False,
) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file; else one line saying what it is.

    The path is classified first (:func:`input_path`), then opened without blocking
    (``O_NONBLOCK``: a FIFO swapped in meanwhile cannot hang the open) and, with ``nofollow``,
    without following a symlink (``O_NOFOLLOW``: a run folder's own files), and checked again
    on the open descriptor (``fstat``), so what is read is what was checked.
    """
    p = input_path(path, what, error=error, cannot_read=True)
    where = f"{what} {shown_path(os.fspath(path))}"
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0) if nofollow else 0
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise error(
                f"cannot read {where}: it is a symlink; a run's files must be its own"
            ) from None
        raise error(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"cannot read {where}: it is {file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --- config files -------------------------------------------------------------------------------


def read_config_text(path: Path, what: str = "config file") -> str:
    """The UTF-8 text of a config file of at most :data:`MAX_CONFIG_BYTES`, BOM refused."""
    where = f"{what} {shown_path(path)}"
    try:
        with open_input(path, what) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where} is larger than {MAX_CONFIG_BYTES // 1024:,} KiB; a config is a few lines"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(
            f"{where} starts with a byte-order mark (BOM); save it as UTF-8 without a BOM"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc


def parse_config_text(text: str, fmt: str, where: str) -> Any:
    """``text`` parsed as ``"json"`` or ``"toml"``; bounded nesting; one-line errors."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES // 1024:,} KiB")
    try:
        obj = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{where} is nested more than {MAX_NESTING} levels deep") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        # ValueError: also Python's limit of 4,300 digits on an integer
        raise ConfigError(f"{where} is not valid {fmt.upper()}: {shown(str(exc), 200)}") from None
    check_nesting(obj, where)
    return obj


def check_nesting(obj: Any, where: str, limit: int = MAX_NESTING) -> None:
    """Refuse lists and tables nested deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ConfigError(f"{where} is nested more than {limit} levels deep")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
