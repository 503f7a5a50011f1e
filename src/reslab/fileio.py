"""Atomic file writes: a crash or a full disk never leaves a half-written file in place.

Each write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX), and the folder is fsynced so the rename
itself survives a power cut.

A rename replaces whatever has the target's name, so the target's type is checked first
(:func:`output_kind`):

* absent, or a regular file: written atomically as above. A symlink to a regular file (or a
  dangling one) is itself replaced by the new file; the file it pointed to is left untouched, so
  an output never writes outside the folder it names.
* a stream the user means to write to: ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, the
  null device (``/dev/null`` or any node with its device number), a terminal, a FIFO. The data
  are written through (appended, never truncated or renamed over), as ``> /dev/null`` would. A
  FIFO nobody reads is refused instead of blocking.
* anything else: a directory, a block device, another character device (``/dev/sda``,
  ``/dev/mem``... as root a rename would replace the node), a socket, a symlink loop. Refused.

Every failure, whatever the reason (is a directory, permission denied, read-only filesystem,
disk full, a parent that is a file...), is one :class:`ReslabError` line naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from reslab.errors import ReslabError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "open_append",
    "output_kind",
]

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Linux character-device majors of terminals: 4 (tty, ttyS), 5 (/dev/tty, console), 136-143 (pts).
_TTY_MAJORS = frozenset({4, 5, *range(136, 144)})
_STREAM_NAMES = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/self/fd/")


def output_kind(path: Path) -> str:
    """``"file"`` (replace atomically), ``"stream"`` (write through), or raise ReslabError."""
    text = str(path)
    if text in _STREAM_NAMES[:2] or text.startswith(_STREAM_NAMES[2:]):
        return "stream"
    try:
        st = path.stat()  # follows symlinks: a link to a device is judged by the device
    except FileNotFoundError:
        return "file"  # absent (or a dangling symlink, replaced like a file)
    except OSError as exc:
        raise _error(path, exc) from exc
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and _is_stream_device(st.st_rdev)):
        return "stream"
    kind = (
        "a directory" if stat.S_ISDIR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )  # fmt: skip
    raise ReslabError(
        f"cannot write {path}: it is {kind}, and reslab replaces only regular files (it "
        "writes through only to /dev/null, a terminal or a pipe); name a file"
    )


def open_append(path: str | Path, what: str = "log") -> Any:
    """``path`` opened for appending text, created if absent: a run's own regular file only.

    The one file reslab appends to in place (a study run's ``train.log``) is opened without
    following a symlink (``O_NOFOLLOW``: a link must not carry the lines outside the run
    folder) and without blocking (``O_NONBLOCK``: a FIFO must not hang the study), then checked
    on the descriptor (``fstat``: a regular file). Anything else is one line naming the path,
    as is every ``OSError`` (a read-only file system, a folder where the file belongs...).
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and path.is_symlink():
            raise ReslabError(
                f"cannot write {what} {path}: it is a symlink, and a run writes only its own "
                "files; remove the link"
            ) from exc
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise _not_regular(path, what, "a FIFO (named pipe)") from exc
        raise _error(path, exc) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
            raise _not_regular(path, what, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


def _not_regular(path: Path, what: str, kind: str) -> ReslabError:
    return ReslabError(
        f"cannot write {what} {path}: it is {kind}, not a regular file; remove it and run again"
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; on failure the old file, if any, is untouched."""
    path = Path(path)
    if output_kind(path) == "stream":
        _write_through(path, data)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _error(path, exc) from exc
    try:
        # mkstemp creates 0600 files; give the result the permissions open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise _error(path, exc) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _is_stream_device(rdev: int) -> bool:
    """The null device (by number, wherever its node is) or a terminal."""
    try:
        if rdev == os.stat(os.devnull).st_rdev:
            return True
    except OSError:  # pragma: no cover - a system without /dev/null
        pass
    return sys.platform.startswith("linux") and os.major(rdev) in _TTY_MAJORS


def _write_through(path: Path, data: bytes) -> None:
    """Append ``data`` to a stream without creating, truncating or renaming anything."""
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOCTTY", 0)
    for stream in (sys.stdout, sys.stderr):  # keep what was printed before in order
        stream.flush()
    try:
        # Non-blocking open: a FIFO without a reader fails (ENXIO) instead of hanging.
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ReslabError(
                f"cannot write {path}: no process is reading this pipe; start the reader first"
            ) from exc
        raise _error(path, exc) from exc
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise _error(path, exc) from exc
    finally:
        os.close(fd)


def _error(path: Path, exc: OSError) -> ReslabError:
    """Any OSError of an output as one line: what failed and what to do."""
    if exc.errno in _FULL:
        return ReslabError(
            f"cannot write {path}: {os.strerror(exc.errno or 0)}; the previous file is intact, "
            "free some space and resume"
        )
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOTDIR:
        reason = "a folder on its path is a file"
    return ReslabError(f"cannot write {path}: {reason}; choose another path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
