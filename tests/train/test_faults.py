"""Fault injection on real ``reslab train`` processes: kill -9, a full disk, two processes.

Every test here starts real subprocesses on a tiny deterministic run (resnet8 at a quarter
width on the bundled digits, 3 epochs = 33 steps, a checkpoint every 2 steps: about 3 s) and
checks that nothing is lost: the run resumes to weights bit-identical to an uninterrupted run.
The process that is killed, stopped or limited is a real one; the resume that follows runs in
this process (:func:`_resume`), on one thread as the reference did: a fresh process would add
only torch's import.

``RESLAB_FAULT_POINTS`` sets how many kill points :func:`test_kill9_then_resume_is_bit_identical`
tries (default 3, one of them in the middle of a checkpoint write, one that also kills the
resume). The tests that start processes are marked ``slow``: ``make test-quick`` leaves them
out, ``make test`` runs them. The full loop recorded in docs/RELIABILITY.md is::

    RESLAB_FAULT_POINTS=24 RESLAB_FAULT_LOG=/tmp/faults.jsonl \\
        .venv/bin/pytest tests/train/test_faults.py -k kill -p no:cacheprovider

``RESLAB_FAULT_LOG`` (optional) appends one JSON line per kill point: what was hit, what the
kill left behind, how many resumes it took.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reslab.cli import main
from reslab.train import RunFolder
from reslab.weights import load_model

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "train",
    "--model",
    "resnet8",
    "--width",
    "0.25",
    "--dataset",
    "digits",
    "--epochs",
    "3",
    "--deterministic",
    "--threads",
    "1",
    "--checkpoint-every-steps",
    "2",
    "--quiet",
]
DEFAULT_POINTS = 3
SEED = 20260527


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(args: list[str], stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reslab", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _reslab(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reslab", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,  # type: ignore[call-overload]
    )


def _resume(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``reslab`` with ``args`` in this process (what a user runs after a fault), to success."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 0, err


def _tmp_files(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder) if e.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "checkpoints" / "last.safetensors")
    b = load_file(b_dir / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs from the uninterrupted run"
    ra = json.loads((a_dir / "result.json").read_text())
    rb = json.loads((b_dir / "result.json").read_text())
    assert ra["rank_checksums"] == rb["rank_checksums"]
    assert ra["test_error"] == rb["test_error"] and ra["steps"] == rb["steps"]
    epochs = [json.loads(x)["epoch"] for x in (b_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # each epoch recorded exactly once
    # ... with the same numbers as the uninterrupted run (timings aside).
    timing = {"images_per_s", "epoch_time", "wall_time"}
    for x, y in zip(_metrics(a_dir), _metrics(b_dir), strict=True):
        assert {k: v for k, v in x.items() if k not in timing} == pytest.approx(
            {k: v for k, v in y.items() if k not in timing}
        )
    assert not list((b_dir / "checkpoints").glob(".*.tmp")), "a crash's temp files were left"


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("reslab: error: "), stderr
    return lines[0]


@dataclass
class Reference:
    run: Path
    startup: float  # seconds from the process start to config.json (the lock is held)
    training: float  # seconds from config.json to result.json (the run's end)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run, timed, that every fault below must reproduce bit for bit."""
    run = tmp_path_factory.mktemp("reference") / "run"
    began = time.monotonic()
    proc = _start([*ARGS, "--out", str(run)])
    started = ended = None
    while proc.poll() is None:
        if started is None and (run / "config.json").exists():
            started = time.monotonic()
        if ended is None and (run / "result.json").exists():
            ended = time.monotonic()
        time.sleep(0.002)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    ended = ended or time.monotonic()
    started = started or ended
    return Reference(run, started - began, ended - started)


# --- kill -9 at random points ---------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: ``write`` at the n-th checkpoint temp file seen, ``delay`` after a delay
    (a fraction of the training time, counted from config.json), ``startup`` before the run
    folder exists. ``again``: kill the first resume too, in the middle of a write."""

    index: int
    kind: str
    at: float
    again: int = 0


def _kill_points(n: int) -> list[KillPoint]:
    rng = random.Random(SEED)
    points = []
    for i in range(n):
        kind = ("write", "delay", "delay", "write", "delay", "startup")[i % 6]
        if kind == "write":
            at = float(rng.randint(1, 50))  # a run shows about 55 checkpoint temp files
        elif kind == "delay":
            at = rng.uniform(0.0, 0.98)
        else:
            at = rng.uniform(0.1, 0.9)
        again = rng.randint(1, 6) if i % 3 == 2 else 0
        points.append(KillPoint(i, kind, round(at, 3), again))
    return points


def _points() -> list[object]:
    n = int(os.environ.get("RESLAB_FAULT_POINTS", DEFAULT_POINTS))
    return [
        pytest.param(p, id=f"{p.index}-{p.kind}", marks=pytest.mark.slow) for p in _kill_points(n)
    ]


def _kill_at_temp_file(proc: subprocess.Popen[str], ckpt: Path, nth: int) -> list[str] | None:
    """SIGKILL as soon as the nth new ``.*.tmp`` appears in checkpoints/; the names left after."""
    seen, before = 0, set[str]()
    while proc.poll() is None:
        now = _tmp_files(ckpt)
        if now - before:
            seen += 1
            if seen >= nth:
                proc.kill()
                proc.wait()
                return sorted(_tmp_files(ckpt))
        before = now
        time.sleep(0.0002)
    return None


def _kill_after(proc: subprocess.Popen[str], run: Path, delay: float, from_start: bool) -> bool:
    """SIGKILL ``delay`` s after the start (or after config.json appears); False if it ended."""
    if not from_start:
        while not (run / "config.json").exists():
            if proc.poll() is not None:
                return False
            time.sleep(0.002)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return not (run / "result.json").exists()  # killed after the end: not a kill point


def _restart_args(run: Path) -> list[str]:
    """What a user does after a crash: resume, or start again if the run never got going."""
    if (run / "config.json").is_file():
        return ["train", "--resume", str(run), "--quiet"]
    return [*ARGS, "--out", str(run)]


@pytest.mark.parametrize("point", _points())
def test_kill9_then_resume_is_bit_identical(
    reference: Reference, tmp_path: Path, point: KillPoint, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    left: list[str] | None = None
    killed, delay = False, 0.0
    for attempt in range(4):  # a point past the end of training is retried earlier
        shutil.rmtree(run, ignore_errors=True)
        proc = _start([*ARGS, "--out", str(run)], stderr=subprocess.DEVNULL)
        try:
            if point.kind == "write":
                left = _kill_at_temp_file(proc, ckpt, max(1, int(point.at) >> attempt))
                killed = left is not None
            elif point.kind == "delay":
                delay = point.at * reference.training / 2**attempt
                killed = _kill_after(proc, run, delay, from_start=False)
            else:
                delay = point.at * reference.startup / 2**attempt
                killed = _kill_after(proc, run, delay, from_start=True)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if killed:
            break
    assert killed, f"the run finished before kill point {point} was reached"
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists()
    if point.kind == "write":
        assert left, "the kill did not land in the middle of a checkpoint write"
    committed = (
        json.loads((ckpt / "last.json").read_text())["step"]
        if (ckpt / "last.json").is_file()
        else None
    )

    resumes, left_again = 0, None
    if point.again:
        proc = _start(_restart_args(run), stderr=subprocess.DEVNULL)
        left_again = _kill_at_temp_file(proc, ckpt, point.again)
        resumes += 1
    while not (run / "result.json").exists():
        assert resumes < 4, "the run did not finish after repeated resumes"
        _resume(_restart_args(run), capsys)
        resumes += 1

    _assert_same_weights(reference.run, run)
    log = os.environ.get("RESLAB_FAULT_LOG")
    if log:
        record = {
            **asdict(point),
            "delay_s": round(delay, 3) if point.kind != "write" else None,
            "committed_step": committed,
            "left": left,
            "left_by_second_kill": left_again,
            "resumes": resumes,
            "identical": True,
            "seconds": round(time.monotonic() - began, 2),
        }
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


def test_kill_points_cover_writes_delays_and_startup() -> None:
    """The full loop's points hit checkpoint writes, the whole run, startup, and resumes."""
    points = _kill_points(24)
    kinds = {p.kind for p in points}
    assert kinds == {"write", "delay", "startup"}
    assert _kill_points(DEFAULT_POINTS)[0].kind == "write"  # the default subset has a mid-write
    assert any(p.again for p in _kill_points(DEFAULT_POINTS))
    delays = sorted(p.at for p in points if p.kind == "delay")
    assert delays[0] < 0.2 and delays[-1] > 0.6  # spread over the run


# --- a full disk while writing a checkpoint ---------------------------------------------------


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # SIGXFSZ would kill the process; ignored, the write fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _assert_checkpoint_intact(run: Path, step: int) -> None:
    loaded = RunFolder(run).load_checkpoint(repair=False)  # sizes and SHA-256 checked
    assert loaded is not None
    state, weights, _ = loaded
    assert state["step"] == step
    model = load_model(weights)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_full_disk_mid_checkpoint_keeps_previous_and_resumes(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes the first checkpoint after epoch 1 fail: its
    last.json carries one more history record than the mid-epoch checkpoints before it."""
    ref_state = json.loads((reference.run / "checkpoints" / "last.json").read_text())
    record_size = len(json.dumps({"records": ref_state["records"][:1]}, indent=2))
    no_records = len(json.dumps({**ref_state, "records": []}, indent=2)) + 1
    limit = no_records + (record_size // 2)
    weights = (reference.run / "checkpoints" / "last.safetensors").stat().st_size
    assert weights < limit  # only last.json hits the limit

    run = tmp_path / "run"
    full = _reslab([*ARGS, "--out", str(run)], preexec_fn=_limit_file_size(limit))
    assert full.returncode == 2, full.stderr
    line = _one_line(full.stderr)
    assert "last.json" in line and os.strerror(errno.EFBIG) in line and "resume" in line
    steps_per_epoch = ref_state["step"] // 3
    _assert_checkpoint_intact(run, (steps_per_epoch - 1) // 2 * 2)  # the last mid-epoch one
    assert not list((run / "checkpoints").glob(".*.tmp"))

    _resume(["train", "--resume", str(run), "--quiet"], capsys)  # the limit lifted
    _assert_same_weights(reference.run, run)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); RLIMIT_FSIZE test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_disk_filling_up_mid_run_stops_cleanly_and_resumes(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real ENOSPC: the run's tmpfs fills up just after a committed checkpoint."""
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        proc = _start([*ARGS, "--out", str(run)])
        while not (run / "checkpoints" / "last.json").exists():
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)  # fill the disk between two of its writes
        filler = _fill(disk)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        line = _one_line(err)
        assert os.strerror(errno.ENOSPC) in line and "resume" in line
        step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
        _assert_checkpoint_intact(run, step)

        filler.unlink()  # free some space, as the message says
        _resume(["train", "--resume", str(run), "--quiet"], capsys)
        _assert_same_weights(reference.run, run)


@pytest.mark.slow
def test_full_disk_at_the_metrics_append_resumes(
    reference: Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The one write that is not atomic, appending an epoch's metrics, hits ENOSPC (in this
    process: the moment is too short to hit from outside)."""
    real_open = Path.open

    def full_disk_open(self: Path, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_open(self, mode, *args, **kw)

    run = tmp_path / "run"
    monkeypatch.setattr(Path, "open", full_disk_open)
    code = main([*ARGS, "--out", str(run)])
    monkeypatch.undo()
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert "metrics" in line and os.strerror(errno.ENOSPC) in line and "resume" in line
    steps_per_epoch = json.loads((reference.run / "result.json").read_text())["steps"] // 3
    _assert_checkpoint_intact(run, steps_per_epoch)  # the epoch's checkpoint came first

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _assert_same_weights(reference.run, run)


# --- two processes on one run folder ------------------------------------------------------------


@pytest.mark.slow
def test_second_process_on_a_run_folder_is_refused(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = _start([*ARGS, "--out", str(run)])
    try:
        while not (run / "config.json").exists():
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken, while others try
        config = (run / "config.json").read_bytes()

        # The same command, started again (from this process: another one than the first).
        assert main([*ARGS, "--out", str(run)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"in use by another process (pid {first.pid})" in line and "--out" in line
        # --resume is refused the same way.
        code = main(["train", "--resume", str(run), "--quiet"])
        assert code == 2
        line = _one_line(capsys.readouterr().err)
        assert f"in use by another process (pid {first.pid})" in line
        assert (run / "config.json").read_bytes() == config

        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    _assert_same_weights(reference.run, run)  # the first run was unharmed


# --- kill -9 of a run with every issue-10 trainer feature on --------------------------------------

MIXED = [
    *ARGS[: ARGS.index("--epochs")],
    *("--epochs", "2", *ARGS[ARGS.index("--epochs") + 2 :]),
    *("--mixup", "0.4", "--cutmix", "1.0", "--mix-prob", "0.8", "--label-smoothing", "0.1"),
    *("--ema", "0.99", "--accum-steps", "4"),
]


@pytest.mark.slow
def test_kill9_of_a_mixed_accumulated_ema_run_resumes_bit_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mixup + cutmix + EMA warm-up + 4 micro-batches, killed mid-epoch in a checkpoint
    write: the resumed run ends with the uninterrupted run's weights, EMA, momentum and
    metrics (scripts/same_run.py's comparison). The reference and the resume run in this
    process (same thread count), only the killed run in its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("same_run", ROOT / "scripts" / "same_run.py")
    assert spec is not None and spec.loader is not None
    same_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(same_run)

    whole, run = tmp_path / "whole", tmp_path / "run"
    assert main([*MIXED, "--out", str(whole)]) == 0
    proc = _start([*MIXED, "--out", str(run)], stderr=subprocess.DEVNULL)
    try:
        left = _kill_at_temp_file(proc, run / "checkpoints", 9)  # about step 5 of 22
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert left is not None and not (run / "result.json").exists()
    step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    assert 0 < step < 11  # mid-epoch 1: the mix draws resume inside an epoch
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert "ema.fc.weight" in load_file(run / "checkpoints" / "last.optim.safetensors")
    assert same_run.differences(whole, run) == []
