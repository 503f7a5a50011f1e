"""Budgets: what an input will cost, estimated from its header or layout before allocating.

A small file or a legal flag can still ask for more than the machine has: a pickle whose memo
repeats one row, a compressed record that inflates a thousandfold, a study of 4,000 runs, a
deep net at a large batch. Each reader estimates the cost first (memory, disk, runs) and asks
:func:`check_memory`, :func:`check_disk` or :func:`check_inflation`, which refuse in one line
naming the estimate, what the machine has, and the fix; where the estimate may be too
cautious, the line names the override, :data:`ALLOW_LARGE` (``--allow-large`` on the command
line, which sets it for the process and its workers).

What the machine has: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's
``memory.max`` less its ``memory.current`` (a container sees the host's meminfo), and
:func:`shutil.disk_usage`'s free bytes of the nearest existing folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from reslab.errors import ReslabError

__all__ = [
    "ALLOW_LARGE",
    "MAX_INFLATION",
    "allow_large",
    "allowing_large",
    "available_memory",
    "check_disk",
    "check_inflation",
    "check_memory",
    "free_disk",
    "human_bytes",
]

#: The environment variable that lets a too-large estimate go on (``--allow-large`` sets it).
ALLOW_LARGE = "RESLAB_ALLOW_LARGE"
#: How many times its size a file's content may grow when read. Real files grow at most ~4×
#: (a pickled int of 2 bytes becomes an 8-byte int64; torch's zip records are stored
#: uncompressed, 1×); a memo that repeats a row, or a deflated record of zeros, grows 1,000×.
MAX_INFLATION = 16
# Slack for a small file: a few MiB are always allowed whatever the ratio.
_INFLATION_FLOOR = 4 << 20


def allow_large() -> bool:
    """Whether the user asked to go on past an estimate (``RESLAB_ALLOW_LARGE=1``)."""
    return os.environ.get(ALLOW_LARGE, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def allowing_large(on: bool = True) -> Iterator[None]:
    """``--allow-large`` for the length of a command: :data:`ALLOW_LARGE` set (the workers a
    study spawns meanwhile inherit it), then restored."""
    saved = os.environ.get(ALLOW_LARGE)
    if on:
        os.environ[ALLOW_LARGE] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ALLOW_LARGE, None)
        else:
            os.environ[ALLOW_LARGE] = saved


def human_bytes(n: float) -> str:
    """``n`` bytes as ``3.9 MB`` / ``4.2 GB`` (decimal units, one decimal)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """The cgroup v2 limit less what the cgroup already uses, or None without a limit."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((base / "memory.current").read_text().strip() or 0)
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process may still allocate without swapping or being killed, or None if
    unknown (not Linux)."""
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def free_disk(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_memory(
    need: int,
    what: str,
    fix: str,
    *,
    have: int | None = None,
    where: str = "this machine",
    error: type[ReslabError] = ReslabError,
) -> None:
    """Refuse ``what`` if it needs ``need`` bytes and ``where`` has less available (``have``,
    by default :func:`available_memory`). ``fix`` says what to change (a smaller batch...);
    the line also names the override."""
    have = available_memory() if have is None else have
    if have is None or need <= have or allow_large():
        return
    raise error(
        f"{what} needs about {human_bytes(need)} of memory, and {where} has "
        f"{human_bytes(have)} available; {fix} (or pass --allow-large / set {ALLOW_LARGE}=1 "
        "to try anyway)"
    )


def check_disk(
    need: int, folder: str | os.PathLike[str], what: str, fix: str,
    *, error: type[ReslabError] = ReslabError,
) -> None:  # fmt: skip
    """Refuse ``what`` if it will write about ``need`` bytes under ``folder`` and the disk has
    less free."""
    have = free_disk(folder)
    if have is None or need <= have or allow_large():
        return
    raise error(
        f"{what} will write about {human_bytes(need)}, and {folder} has {human_bytes(have)} "
        f"free; {fix} (or pass --allow-large / set {ALLOW_LARGE}=1 to try anyway)"
    )


def check_inflation(
    need: int, size: int, what: str, *, error: type[ReslabError] = ReslabError
) -> None:
    """Refuse a file of ``size`` bytes whose content would take ``need`` bytes: more than
    :data:`MAX_INFLATION` times its size (no real file does), or more than the memory left."""
    if need > MAX_INFLATION * size + _INFLATION_FLOOR:
        raise error(
            f"{what} would take {human_bytes(need)} in memory from a {human_bytes(size)} file "
            f"({need / max(size, 1):,.0f}× its size; real files take at most "
            f"{MAX_INFLATION}×); the file is corrupt or crafted, refusing to read it"
        )
    check_memory(need, what, "free some memory, or read it on a larger machine", error=error)
