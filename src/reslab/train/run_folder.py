"""The run folder: the only code that reads or writes one.

Layout::

    <out>/
      .lock                          fcntl lock held while a process trains here (pid inside)
      config.json                    resolved config + versions; `reslab train --config` reruns it
      metrics.jsonl, metrics.csv     one record per epoch (errors in percent)
      train.log                      a study run's console output
      checkpoints/
        step-<N>.safetensors         model weights at step N (save_weights, atomic)
        step-<N>.optim.safetensors   momentum buffers (optim.<i>) and EMA weights (ema.<name>)
        last.json                    commit point: step, loader/RNG state, history, file hashes
        last.safetensors             hard link to the committed weights (convenience)
        last.optim.safetensors       hard link to the committed optimizer state
        best.safetensors             weights with the lowest validation/test error so far
        ema.safetensors              the EMA weights at the end (with --ema)
        snapshot-<N>.safetensors     weights kept at the --snapshot-steps
      result.json                    written last: "finished", or "diverged" with the message

Every write is atomic (:mod:`reslab.fileio`); ``last.json`` is written after the files it
names and holds their sizes and SHA-256, so a crash at any point leaves the previous
checkpoint in force.
"""

from __future__ import annotations

import base64
import csv
import datetime
import errno
import hashlib
import io
import json
import os
import platform
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reslab.errors import CheckpointError, ReslabError
from reslab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from reslab.train.config import TrainConfig, check_settings
from reslab.weights import read_state_dict, save_weights

try:  # POSIX only; elsewhere runs go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunFolder",
    "RunLock",
    "find_runs",
    "get_rng_state",
    "run_config_near",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1
WEIGHTS = "last.safetensors"
OPTIM = "last.optim.safetensors"


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run>/.lock`` holding the owner's pid.

    The kernel drops the lock when the process dies (even by ``kill -9``), so a stale lock
    never blocks a resume.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # --out is a file, under a file, read-only, disk full...
            raise ReslabError(
                f"cannot use {self.run_dir} as a run folder: {exc.strerror or exc}; "
                "choose another --out"
            ) from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ReslabError(
                    f"run folder {self.run_dir} is in use by another process (pid {owner}); "
                    "wait for it or choose another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link; a copy where links are refused)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(dst, src.read_bytes())


def _reslab_version() -> str:
    from reslab import __version__

    return __version__


def now() -> str:
    """The current UTC time as ISO 8601 to the second, as every run file records it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; every failure is one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReslabError(
            f"{path.parent} is not a finished run (missing {path.name}): finish it with "
            "`reslab train --resume DIR` or remove it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReslabError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReslabError(f"{path.parent} has a corrupt JSON file ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ReslabError(f"{path} must hold a JSON object ({what}), got {type(data).__name__}")
    return data


class RunFolder:
    """Reading and writing one run folder; only rank 0 writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.config_path = self.path / "config.json"
        self.result_path = self.path / "result.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.csv_path = self.path / "metrics.csv"
        self.log_path = self.path / "train.log"
        self.last_json = self.ckpt_dir / "last.json"
        self.best_path = self.ckpt_dir / "best.safetensors"
        self.ema_path = self.ckpt_dir / "ema.safetensors"

    @property
    def weights_path(self) -> Path:
        """The committed weights: the final ones once the run has finished."""
        return self.ckpt_dir / WEIGHTS

    def relative(self, path: Path) -> str:
        """``path`` as recorded in result.json: relative to the run folder."""
        return path.relative_to(self.path).as_posix()

    def has_run(self) -> bool:
        return any(p.exists() for p in (self.config_path, self.result_path, self.last_json))

    def is_finished(self) -> bool:
        """Whether result.json is there (the run finished or diverged)."""
        return self.result_path.is_file()

    # config and result ------------------------------------------------------------------------

    def write_config(self, config: TrainConfig, explicit: Sequence[str] | None) -> None:
        meta = {
            "reslab_version": _reslab_version(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": now(),
            "explicit": sorted(explicit) if explicit is not None else None,
        }
        atomic_write_json(self.config_path, {**config.to_dict(), "_meta": meta})

    def read_config(self) -> TrainConfig:
        """The saved config, checked like a config file; refuses a folder without one."""
        if not self.config_path.is_file():
            raise ReslabError(
                f"no run to resume in {self.path}: {self.config_path.name} is missing; "
                "start it without --resume"
            )
        from reslab.train.config import load_config_file

        return TrainConfig(**load_config_file(self.config_path))

    def read_saved_config(self) -> dict[str, Any]:
        """config.json's settings as saved (without ``_meta``), checked key by key."""
        raw = _read_json_object(self.config_path, "the run's settings")
        raw = raw.get("config", raw)  # a results.json-style {"config": {...}} wrapper
        if not isinstance(raw, dict):
            raise ReslabError(f"{self.config_path} must hold a JSON object of settings")
        return check_settings(raw, f"config file {self.config_path}", f" (in {self.config_path})")

    def write_result(self, result: dict[str, Any]) -> None:
        """result.json, written last: its presence marks the run as done."""
        atomic_write_json(self.result_path, result)

    def write_diverged(self, message: str) -> None:
        """Record a run whose loss became NaN/inf: a result of a study, not a failure of it."""
        self.write_result(
            {"status": "diverged", "message": message, "clean_train_error": None,
             "test_error": None}
        )  # fmt: skip

    def read_result(self) -> dict[str, Any]:
        return _read_json_object(self.result_path, "the run's result")

    # checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(
        self,
        step: int,
        model: nn.Module,
        tensors: dict[str, Tensor],
        state: dict[str, Any],
    ) -> None:
        """Write step-stamped files, then ``last.json`` (the commit point), then the links.

        A crash before the commit leaves the previous checkpoint in force; after it, the new
        one. Stale step files are removed once the new checkpoint is committed.
        """
        weights = self.ckpt_dir / f"step-{step:09d}.safetensors"
        optim = self.ckpt_dir / f"step-{step:09d}.optim.safetensors"
        from safetensors.torch import save as st_save

        save_weights(model, weights, metadata={"step": str(step)})
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(optim, st_save(cpu, metadata={"step": str(step)}))
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in (weights, optim)}
        atomic_write_json(
            self.last_json,
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "weights": weights.name,
                "optim": optim.name,
                "files": files,
                **state,
            },
        )
        _link_atomic(weights, self.ckpt_dir / WEIGHTS)
        _link_atomic(optim, self.ckpt_dir / OPTIM)
        for old in self.ckpt_dir.glob("step-*.safetensors"):
            if old.name not in files:
                old.unlink(missing_ok=True)

    def snapshot_path(self, step: int) -> Path:
        """Where the weights kept at ``step`` (``snapshot_steps``) go."""
        return self.ckpt_dir / f"snapshot-{step:09d}.safetensors"

    def committed_step(self) -> int | None:
        """The committed checkpoint's step; None when there is none or it is unreadable."""
        try:
            return int(json.loads(self.last_json.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load_checkpoint(
        self, *, repair: bool = True
    ) -> tuple[dict[str, Any], Path, dict[str, Tensor]] | None:
        """(state, weights path, optimizer tensors) of the committed checkpoint, or None.

        Every referenced file is checked against the size and SHA-256 recorded at commit.
        With ``repair`` (rank 0 only), stale ``last.*`` links and temporary files left by a
        crash are fixed.
        """
        if not self.last_json.is_file():
            if repair:  # killed during the first checkpoint: only temp files are left
                for tmp in self.ckpt_dir.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
            return None
        try:
            state = json.loads(self.last_json.read_text())
            weights = self.ckpt_dir / state["weights"]
            optim = self.ckpt_dir / state["optim"]
            files = state["files"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{self.last_json} is unreadable ({exc}); delete {self.ckpt_dir} to restart "
                "the run from scratch"
            ) from exc
        for path, alias in ((weights, WEIGHTS), (optim, OPTIM)):
            shown = f"{self.ckpt_dir / alias} (= {path.name})"
            if not path.is_file():
                raise CheckpointError(f"checkpoint file {shown} is missing")
            want = files[path.name]
            size = path.stat().st_size
            if size != want["size"] or _sha256(path) != want["sha256"]:
                raise CheckpointError(
                    f"checkpoint file {shown} is truncated or corrupt ({size} bytes, "
                    f"{want['size']} written, SHA-256 differs); restore it or delete "
                    f"{self.ckpt_dir} to restart the run"
                )
        tensors = read_state_dict(optim)
        if not repair:
            return state, weights, tensors
        # Repair the convenience links if a crash came between the commit and the link.
        for src, alias in ((weights, WEIGHTS), (optim, OPTIM)):
            dst = self.ckpt_dir / alias
            if not dst.exists() or not os.path.samefile(src, dst):
                _link_atomic(src, dst)
        for tmp in self.ckpt_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return state, weights, tensors

    # metrics ----------------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any], columns: Sequence[str]) -> None:
        try:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            new = not self.csv_path.exists()
            with self.csv_path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(record)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # The epoch's checkpoint is committed already; a resume rewrites both files from it.
            raise ReslabError(
                f"cannot write the metrics in {self.path}: {os.strerror(exc.errno)}; the "
                "checkpoint is saved, free some space and resume"
            ) from exc

    def rewrite_metrics(self, records: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """Make the metrics files match the checkpoint's history (drops epochs run after it)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.csv_path, buf.getvalue())

    def drop_metrics(self) -> None:
        """Remove the metrics of a run killed before its first checkpoint (it starts over)."""
        for path in (self.metrics_path, self.csv_path):
            path.unlink(missing_ok=True)

    def read_records(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records ([] when absent: a run that diverged in its first epoch)."""
        if not self.metrics_path.is_file():
            return []
        try:
            lines = self.metrics_path.read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReslabError(f"{self.path} has a corrupt JSON file ({exc.msg})") from exc


def find_runs(root: str | Path) -> list[Path]:
    """The run folders directly under ``root`` that hold a result.json, sorted."""
    return sorted(p.parent for p in Path(root).glob("*/result.json"))


def run_config_near(weights: Path) -> dict[str, Any] | None:
    """The saved settings of the run folder a weights file sits in (or in its checkpoints/)."""
    for folder in (weights.parent, weights.parent.parent):
        candidate = folder / "config.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return data if isinstance(data, dict) else None
    return None


# RNG states as JSON: torch's byte tensors as base64, numpy's and Python's as lists.
def get_rng_state() -> dict[str, Any]:
    """The CPU torch, numpy and Python RNG states, as checkpoints record them."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py_state = random.getstate()
    return {
        # Only the CPU generator: data order and augmentation are drawn there, and saving
        # every GPU's state would tie a checkpoint to the number of GPUs of the machine.
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` recorded."""

    def tensor(text: str) -> Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
