"""The lock a training process holds on its run folder (see :class:`RunLock`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from reslab.errors import ReslabError

try:  # POSIX only; elsewhere runs go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock"]


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run>/.lock`` holding the owner's pid.

    The kernel drops the lock when the process dies (even by ``kill -9``), so a stale lock
    never blocks a resume. Two cases are handled on top of that: a holder that is orphaned and
    about to die (a killed study's worker; its parent-death signal may lag by a moment) is
    waited for briefly, and a lock whose recorded owner is dead, but which a process it left
    behind still holds (the lock is shared with forked children), is taken over: the lock file
    is replaced by a fresh one and that one is locked.
    """

    GRACE_S = 3.0  # how long a lock held by an orphan is retried before the run is refused

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.GRACE_S
        while True:
            fd = self._open()
            owner = self._try_lock(fd)
            if owner is None:
                if self._is_current(fd):
                    break
                os.close(fd)  # replaced while we locked it: lock the new one
                continue
            os.close(fd)
            if owner.isdigit() and not _alive(int(owner)):
                self._take_over()
                continue
            if not (owner.isdigit() and _orphaned(int(owner))) or time.monotonic() > deadline:
                raise ReslabError(
                    f"run folder {self.run_dir} is in use by another process (pid {owner}); "
                    "wait for it or choose another --out"
                )
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:  # --out is a file, under a file, read-only, disk full...
            raise ReslabError(
                f"cannot use {self.run_dir} as a run folder: {exc.strerror or exc}; "
                "choose another --out"
            ) from exc

    @staticmethod
    def _try_lock(fd: int) -> str | None:
        """None when locked; else the pid the holder wrote ("unknown" if none)."""
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        return None

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _take_over(self) -> None:
        """Replace a lock file held only by the leftovers of a dead owner."""
        fresh = self.path.with_name(f".lock.{os.getpid()}.tmp")
        fresh.write_text("")
        os.replace(fresh, self.path)

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...); None off Linux or if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _orphaned(pid: int) -> bool:
    """Whether the process was re-parented to init: its parent died (a killed study's worker)."""
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 1 and fields[1] == "1"


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)  # Linux: a zombie still answers kill(0) but holds nothing
    return fields is None or fields[0] != "Z"
