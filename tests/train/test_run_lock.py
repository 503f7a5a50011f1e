"""The folder lock under the faults people cause: a holder in another PID namespace or on
another host, a lock file left by every finished or killed run, two acquires racing, and a
forked child outliving its owner (issue 20, class 1).

Two :class:`RunLock` objects in one process stand for two processes: each opens its own file
description, and flock locks belong to a file description, so they exclude each other exactly
as two processes' do (see ``flock(2)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reslab.errors import ReslabError
from reslab.train import RunLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


DEAD = _dead_pid()  # a pid that names no live process here
STALE = {
    "dead pid": f"{DEAD}\n",
    "dead pid, json": json.dumps({"pid": DEAD, "host": "elsewhere", "since": "x"}),
    "empty": "",
    "garbage": "\x00not a pid",
}


def _hold_elsewhere(folder: Path, record: str) -> int:
    """Lock ``folder/.lock`` as a process in another PID namespace would: a descriptor of its
    own, and a pid in the file that names no process on this side."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    return fd


def test_a_holder_whose_pid_names_no_process_here_keeps_the_folder(tmp_path: Path) -> None:
    """On main the lock was taken over: the pid was dead 'on this side' (issue 20's trainer in
    another PID namespace lost its checkpoints and its metrics were written twice)."""
    fd = _hold_elsewhere(tmp_path, json.dumps({"pid": DEAD, "host": "node-7", "since": "04:00"}))
    try:
        with pytest.raises(ReslabError, match=r"run folder .* in use by another process "
                           rf"\(pid {DEAD}\) on host node-7 since 04:00; wait for it"):  # fmt: skip
            RunLock(tmp_path).acquire()
        with pytest.raises(ReslabError, match=rf"\(pid {DEAD}\)"):  # a bare pid: older files
            os.pwrite(fd, f"{DEAD}\n".encode().ljust(64), 0)
            RunLock(tmp_path).acquire()
    finally:
        os.close(fd)
    lock = RunLock(tmp_path)  # the holder died: the kernel dropped its lock
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("stale", sorted(STALE))
def test_a_stale_lock_file_is_harmless_and_racing_acquires_have_one_winner(
    tmp_path: Path, stale: str
) -> None:
    """On main both of two racing acquires won on a dead owner's .lock (the loser read the dead
    pid before the winner wrote its own, and replaced the file): 7 of 600 trials here."""
    for trial in range(40):
        folder = tmp_path / str(trial)
        folder.mkdir()
        (folder / ".lock").write_text(STALE[stale])
        assert _race(folder, 3) == 1


def _race(folder: Path, n: int) -> int:
    """How many of ``n`` threads, released at once, acquire ``folder``; releases them."""
    won: list[RunLock] = []
    start = threading.Barrier(n)

    def one() -> None:
        lock = RunLock(folder)
        start.wait()
        try:
            lock.acquire()
        except ReslabError:
            return
        won.append(lock)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lock in won:
        lock.release()
    return len(won)


def test_a_forked_child_does_not_keep_its_dead_owners_lock(tmp_path: Path) -> None:
    """A worker forked after the lock was taken (a DataLoader's, a pool's) outlives its owner:
    it must not hold the folder (main replaced the lock file by reading the dead pid)."""
    read, write = os.pipe()
    owner = os.fork()
    if owner == 0:  # the owner: lock, fork a worker, die
        try:
            RunLock(tmp_path).acquire()
            child = os.fork()
            if child == 0:
                time.sleep(30)
            else:
                os.write(write, f"{child}\n".encode())
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 64))
    os.close(read)
    os.waitpid(owner, 0)
    try:
        lock = RunLock(tmp_path)
        lock.acquire()
        lock.release()
    finally:
        os.kill(child, 9)


# --- properties ------------------------------------------------------------------------------

N_LOCKS = 3  # lock objects ("processes") per folder
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 1), st.integers(0, N_LOCKS - 1)),
        st.tuples(st.just("release"), st.integers(0, 1), st.integers(0, N_LOCKS - 1)),
        st.tuples(st.just("stale"), st.integers(0, 1), st.sampled_from(sorted(STALE))),
        st.tuples(st.just("race"), st.integers(0, 1), st.integers(2, 4)),
    ),
    max_size=25,
)


@given(ops=OPS)
def test_any_interleaving_of_acquire_release_and_stale_files_has_one_holder(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, object]]
) -> None:
    """Acquire succeeds exactly when no one holds the folder, whatever the lock file says; a
    race of threads on a free folder has one winner; release frees the folder."""
    root = tmp_path_factory.mktemp("locks")
    folders = [root / "a", root / "b"]
    locks = [[RunLock(f) for _ in range(N_LOCKS)] for f in folders]
    holder: list[int | None] = [None, None]
    try:
        for op, f, arg in ops:
            if op == "acquire":
                assert isinstance(arg, int)
                if locks[f][arg].held:
                    continue  # a process does not lock a folder twice
                try:
                    locks[f][arg].acquire()
                    got = True
                except ReslabError as exc:
                    got = False
                    assert "in use by another process" in str(exc)
                assert got == (holder[f] is None)
                holder[f] = arg if got else holder[f]
            elif op == "release":
                assert isinstance(arg, int)
                locks[f][arg].release()
                holder[f] = None if holder[f] == arg else holder[f]
            elif op == "stale" and holder[f] is None:  # a finished run's file, as left
                folders[f].mkdir(exist_ok=True)
                (folders[f] / ".lock").write_text(STALE[str(arg)])
            elif op == "race":
                assert isinstance(arg, int)
                assert _race(folders[f], arg) == (1 if holder[f] is None else 0)
    finally:
        for row in locks:
            for lock in row:
                lock.release()
