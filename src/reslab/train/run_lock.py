"""The lock a process holds on a run or study folder (see :class:`RunLock`)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from pathlib import Path

from reslab.errors import ReslabError

try:  # POSIX only; elsewhere folders go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock"]

# The lock descriptors this process holds. A forked child (a DataLoader or pool worker) gets a
# copy of each, and a flock is held until the last copy is closed: a child outliving a killed
# owner would keep the folder locked. Each child closes its copies at once (closing a copy
# releases nothing; only the owner's LOCK_UN or its death does). exec closes them anyway:
# Python opens every descriptor non-inheritable (PEP 446).
_HELD: set[int] = set()


def _close_inherited() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<folder>/.lock``, held until released
    or until the process dies.

    The kernel alone decides who holds the folder: the lock dies with its process (even by
    ``kill -9``), so a ``.lock`` left by a finished or killed run is harmless and never taken
    over by reading the pid in it. A pid names no process across hosts or PID namespaces (a
    container sharing the run folder), and reading it raced a second ``acquire`` (issue 20).
    flock works across PID namespaces on one kernel, and on NFS (Linux emulates it with
    ``fcntl`` byte-range locks, which NFSv4 and NLM keep across hosts). The file records the
    holder's host, pid and start time for the refusal message only.

    One wait is kept: a holder on this host, in this PID namespace, that is orphaned (a killed
    study's worker, whose parent-death signal may lag by a moment) is retried for
    :attr:`GRACE_S` before the folder is refused.
    """

    GRACE_S = 3.0  # how long a lock held by an orphan is retried before the folder is refused

    def __init__(self, run_dir: Path, kind: str = "run") -> None:
        self.run_dir = run_dir
        self.path = run_dir / ".lock"
        self.kind = kind  # "run" or "study": the message's words
        self._fd: int | None = None
        self._pid = 0  # the process that holds _fd (a forked child does not)

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.GRACE_S
        while True:
            fd = self._open()
            if self._try_lock(fd):
                if self._is_current(fd):
                    break
                os.close(fd)  # the file was deleted or replaced while we locked it
                continue
            owner = _read_owner(fd)
            os.close(fd)
            if not _orphan_here(owner) or time.monotonic() > deadline:
                raise ReslabError(
                    f"{self.kind} folder {self.run_dir} is in use by another process "
                    f"{_describe(owner)}; wait for it or choose another --out"
                )
            time.sleep(0.1)
        record = json.dumps(_me()).encode() + b"\n"
        os.pwrite(fd, record, 0)  # then cut: a reader sees an old or new record, never none
        os.ftruncate(fd, len(record))
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)

    def _open(self) -> int:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:  # --out is a file, under a file, read-only, disk full...
            raise ReslabError(
                f"cannot use {self.run_dir} as a {self.kind} folder: {exc.strerror or exc}; "
                "choose another --out"
            ) from exc

    @staticmethod
    def _try_lock(fd: int) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        if self.held:  # in a forked child the descriptor is closed already, maybe reused
            _HELD.discard(self._fd)
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None


def _me() -> dict[str, object]:
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": _host(), "pidns": _pid_namespace(),
            "since": since}  # fmt: skip


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _read_owner(fd: int) -> dict[str, object]:
    """What the holder recorded: a JSON object, or (before issue 20) a bare pid; {} if neither."""
    text = os.pread(fd, 1024, 0).decode(errors="replace").strip()
    if text.isdigit():
        return {"pid": int(text)}
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, object]) -> str:
    pid, host, since = owner.get("pid"), owner.get("host"), owner.get("since")
    words = f"(pid {pid})" if isinstance(pid, int) else "(pid unknown)"
    if isinstance(host, str) and host != _host():
        words += f" on host {host[:64]}"
    if isinstance(since, str):
        words += f" since {since[:32]}"
    return words


def _orphan_here(owner: dict[str, object]) -> bool:
    """Whether the holder is a process of this host and PID namespace that lost its parent."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
        return False
    if owner.get("host") != _host() or owner.get("pidns") != _pid_namespace():
        return False
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 1 and fields[1] == "1"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...); None off Linux or if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _host() -> str:
    """This machine's name, for the refusal message and the same-host check (``uname``: the
    lock needs no network module, tests/test_security.py)."""
    return os.uname().nodename
