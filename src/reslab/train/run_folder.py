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

from reslab.checks import shown
from reslab.errors import CheckpointError, ReslabError
from reslab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from reslab.train.config import TrainConfig, check_settings
from reslab.train.run_lock import RunLock
from reslab.train.run_schema import (
    CHECKPOINT_FORMAT,
    MAX_JSON_BYTES,
    BadField,
    BadJSON,
    check_checkpoint,
    check_config_values,
    check_files,
    check_record,
    check_result,
    commit_name,
    optim_name,
    parse_json,
    read_bounded,
    read_json,
    step_metadata,
    step_of,
    weights_name,
)
from reslab.version import __version__
from reslab.weights import read_state_dict, save_weights

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunFolder",
    "RunLock",
    "find_runs",
    "get_rng_state",
    "run_config_near",
    "set_rng_state",
]

WEIGHTS = "last.safetensors"
OPTIM = "last.optim.safetensors"


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


def now() -> str:
    """The current UTC time as ISO 8601 to the second, as every run file records it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; every failure is one line naming the file."""
    if not os.path.lexists(path):
        raise ReslabError(
            f"{path.parent} is not a finished run (missing {path.name}): finish it with "
            "`reslab train --resume DIR` or remove it"
        )
    data = read_json(path, fix)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object ({what}), got {type(data).__name__}; {fix}"
        )
    return data


def _fix_finished(path: Path) -> str:
    return f"restore it, or delete it and run `reslab train --resume {path.parent}` to finish again"


class RunFolder:
    """Reading and writing one run folder; only rank 0 writes.

    Every file is read through :mod:`reslab.train.run_schema` (a bad one is one line naming
    it), and the writer is conservative: a checkpoint is deleted only once a newer one is
    committed, and nothing is touched before the folder's layout has been checked.
    """

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
        self.recovered: str | None = None  # set when a resume had to rebuild last.json

    @property
    def weights_path(self) -> Path:
        """The committed weights: the final ones once the run has finished."""
        return self.ckpt_dir / WEIGHTS

    def relative(self, path: Path) -> str:
        """``path`` as recorded in result.json: relative to the run folder."""
        return path.relative_to(self.path).as_posix()

    def has_run(self) -> bool:
        """Whether anything of a run is here (a new run must not start over it)."""
        paths = (self.config_path, self.result_path, self.last_json)
        if any(os.path.lexists(p) for p in paths):
            return True
        return self.ckpt_dir.is_dir() and any(step_of(p.name) for p in self.ckpt_dir.iterdir())

    def is_finished(self) -> bool:
        """Whether result.json is there (the run finished or diverged); read_result checks it."""
        return os.path.lexists(self.result_path)

    # config and result ------------------------------------------------------------------------

    def write_config(self, config: TrainConfig, explicit: Sequence[str] | None) -> None:
        meta = {
            "reslab_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": now(),
            "explicit": sorted(explicit) if explicit is not None else None,
        }
        atomic_write_json(self.config_path, {**config.to_dict(), "_meta": meta})

    def read_config(self) -> TrainConfig:
        """The saved config, checked like a config file; refuses a folder without one."""
        if not os.path.lexists(self.config_path):
            raise ReslabError(
                f"no run to resume in {self.path}: {self.config_path.name} is missing; "
                "start it without --resume"
            )
        return TrainConfig(**self.read_saved_config())

    def read_saved_config(self) -> dict[str, Any]:
        """config.json's settings as saved (without ``_meta``), checked key by key."""
        fix = "restore it, or start the run again in a new --out with its settings"
        raw = _read_json_object(self.config_path, "the run's settings", fix)
        raw = raw.get("config", raw)  # a results.json-style {"config": {...}} wrapper
        if not isinstance(raw, dict):
            raise ReslabError(f"{self.config_path} must hold a JSON object of settings; {fix}")
        try:
            check_config_values(raw)
        except BadField as exc:
            raise CheckpointError(f"{self.config_path} {exc}; {fix}") from None
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
        """result.json (finished, or the diverged marker), checked against its schema."""
        fix = _fix_finished(self.result_path)
        data = _read_json_object(self.result_path, "the run's result", fix)
        try:
            return check_result(data)
        except BadField as exc:
            raise CheckpointError(f"{self.result_path} {exc}; {fix}") from None

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
        one. The commit is also kept as ``step-<N>.json`` (a copy, not a link, so damage to
        last.json in place does not reach it): a lost or damaged ``last.json`` is rebuilt from
        the newest intact step files. Older step files are removed only once the new
        checkpoint is committed.
        """
        weights = self.ckpt_dir / weights_name(step)
        optim = self.ckpt_dir / optim_name(step)
        from safetensors.torch import save as st_save

        save_weights(model, weights, metadata={"step": str(step)})
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(optim, st_save(cpu, metadata={"step": str(step)}))
        files = {p.name: _file_entry(p) for p in (weights, optim)}
        commit = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "weights": weights.name,
            "optim": optim.name,
            "files": files,
            **state,
        }
        atomic_write_json(self.last_json, commit)
        atomic_write_bytes(self.ckpt_dir / commit_name(step), self.last_json.read_bytes())
        _link_atomic(weights, self.ckpt_dir / WEIGHTS)
        _link_atomic(optim, self.ckpt_dir / OPTIM)
        for old in self.ckpt_dir.glob("step-*"):
            parsed = step_of(old.name)
            if parsed is not None and parsed[0] < step:  # superseded by this commit
                old.unlink(missing_ok=True)

    def snapshot_path(self, step: int) -> Path:
        """Where the weights kept at ``step`` (``snapshot_steps``) go."""
        return self.ckpt_dir / f"snapshot-{step:09d}.safetensors"

    def committed_step(self) -> int | None:
        """The committed checkpoint's step; None when there is none or it is unreadable."""
        try:
            return check_checkpoint(read_json(self.last_json, ""))
        except (ReslabError, BadField):
            return None

    def load_checkpoint(
        self, *, repair: bool = True
    ) -> tuple[dict[str, Any], Path, dict[str, Tensor]] | None:
        """(state, weights path, optimizer tensors) of the committed checkpoint, or None.

        ``last.json`` is checked against its schema and every file it names against the size,
        SHA-256 and step recorded at commit. A ``last.json`` that is missing or not JSON (lost,
        truncated) is rebuilt from the newest intact step files; one that is JSON but breaks
        the schema or disagrees with the files (edited) is refused. None means a fresh start:
        no checkpoint was ever committed (at most temp files of a first write remain). With
        ``repair`` (rank 0 only) links, temp files and a rebuilt ``last.json`` are written.
        """
        self.check_layout()
        self.recovered = None
        if not os.path.lexists(self.ckpt_dir):
            return None
        state = self._read_last_json()
        if state is None:
            state = self._newest_intact()
            if state is None:
                if repair:  # killed during the first checkpoint: only temp files are left
                    _remove_temps(self.ckpt_dir)
                return None
        weights, optim = self._check_step_files(state)
        tensors = read_state_dict(optim)
        if not repair:
            return state, weights, tensors
        if self.recovered is not None:
            atomic_write_json(self.last_json, state)
        # Repair the convenience links if a crash came between the commit and the link.
        for src, alias in ((weights, WEIGHTS), (optim, OPTIM)):
            dst = self.ckpt_dir / alias
            if not dst.exists() or not os.path.samefile(src, dst):
                _link_atomic(src, dst)
        _remove_temps(self.ckpt_dir)
        return state, weights, tensors

    def check_layout(self) -> None:
        """Refuse a run folder whose parts are not what reslab wrote, before touching any."""
        for path, kind in (
            (self.path, "folder"),
            (self.ckpt_dir, "folder"),
            (self.metrics_path, "file"),
            (self.csv_path, "file"),
            (self.last_json, "file"),
        ):
            if not os.path.lexists(path):
                continue
            ok = path.is_dir() if kind == "folder" else path.is_file() and not path.is_symlink()
            if not ok:
                raise CheckpointError(
                    f"{path} is not a {'folder' if kind == 'folder' else 'regular file'} as "
                    f"reslab writes it; move it out of the way and resume, or choose another --out"
                )

    def _read_last_json(self) -> dict[str, Any] | None:
        """The committed state; None when last.json is missing or not JSON (lost, truncated)."""
        fix = (
            "it was edited or damaged: restore it, delete it to resume from the newest intact "
            f"step files, or delete {self.ckpt_dir} to restart the run"
        )
        if not os.path.lexists(self.last_json):
            self.recovered = "checkpoints/last.json is missing"
            return None
        data = read_bounded(self.last_json, MAX_JSON_BYTES, fix)
        try:
            state = parse_json(data)
        except BadField as exc:
            self.recovered = f"checkpoints/last.json is not JSON ({exc})"
            return None
        try:
            step = check_checkpoint(state)
            check_files(state.get("files"), (weights_name(step), optim_name(step)))
        except BadField as exc:
            raise CheckpointError(f"{self.last_json} {exc}; {fix}") from None
        return dict(state)

    def _newest_intact(self) -> dict[str, Any] | None:
        """The commit the newest intact step files carry; refuses if there are files but none.

        None only when nothing shows a commit (no commit copy, no damaged last.json, no
        metrics): then no checkpoint was ever committed and a fresh start loses nothing.
        """
        # A step's commit copy is written after last.json: step files without one are a
        # write that was cut (or an older reslab's), never the only copy of a checkpoint.
        steps = sorted(
            {p[0] for p in map(step_of, os.listdir(self.ckpt_dir)) if p and p[1] == "json"},
            reverse=True,
        )
        problems = []
        for step in steps:
            try:
                return self._commit_in(step)
            except BadField as exc:
                problems.append(f"{commit_name(step)} {exc}")
        # Metrics are appended only after their epoch's commit: any means one was committed.
        committed_once = os.path.lexists(self.last_json) or (
            self.metrics_path.is_file() and self.metrics_path.stat().st_size > 0
        )
        if not steps and not committed_once:
            self.recovered = None
            return None
        raise CheckpointError(
            f"{self.recovered} and no step file in {self.ckpt_dir} holds an intact checkpoint "
            f"({'; '.join(problems[:2]) or 'there are none'}); restore last.json, or delete "
            f"{self.ckpt_dir} to restart the run from scratch"
        )

    def _commit_in(self, step: int) -> dict[str, Any]:
        """The commit kept as ``step-<step>.json``, checked with the files it names."""
        path = self.ckpt_dir / commit_name(step)
        if not (path.is_file() and not path.is_symlink()):
            raise BadField("is missing or not a regular file")
        try:
            state = parse_json(read_bounded(path, MAX_JSON_BYTES, ""))
        except (BadJSON, CheckpointError) as exc:
            raise BadField(f"is not JSON ({exc})") from None
        if check_checkpoint(state) != step:
            raise BadField(f"does not hold step {step}")
        check_files(state.get("files"), (weights_name(step), optim_name(step)))
        try:
            self._check_step_files(state)
        except CheckpointError as exc:
            raise BadField(f"names files that fail their check ({exc})") from None
        self.recovered = f"{self.recovered}; rebuilt it from {path.name}"
        return dict(state)

    def _check_step_files(self, state: dict[str, Any]) -> tuple[Path, Path]:
        """The two step files the commit names, each intact and holding the commit's step."""
        step = state["step"]
        files = check_files(state["files"], (weights_name(step), optim_name(step)))
        paths = []
        for name, alias in ((weights_name(step), WEIGHTS), (optim_name(step), OPTIM)):
            path = self.ckpt_dir / name  # a name made from the step: always inside ckpt_dir
            shown_as = f"{self.ckpt_dir / alias} (= {name})"
            if not path.is_file() or path.is_symlink():
                raise CheckpointError(
                    f"checkpoint file {self.ckpt_dir / name}, the step-{step} file last.json "
                    "commits, is missing or not a regular file; restore it, or delete "
                    f"{self.ckpt_dir} to restart the run"
                )
            size, sha = files[name]
            if path.stat().st_size != size or _sha256(path) != sha:
                raise CheckpointError(
                    f"checkpoint file {shown_as} is truncated or corrupt "
                    f"({path.stat().st_size} bytes, {size} written, SHA-256 differs); restore it "
                    f"or delete {self.ckpt_dir} to restart the run"
                )
            try:
                held = step_metadata(path).get("step")
            except BadField as exc:
                raise CheckpointError(f"checkpoint file {path} {exc}") from None
            if held != str(step):
                raise CheckpointError(
                    f"{self.last_json} says step {step} but {name} holds step {shown(held)}: "
                    "last.json was edited; restore it, or delete it to resume from the newest "
                    "intact step files"
                )
            paths.append(path)
        return paths[0], paths[1]

    # metrics ----------------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any], columns: Sequence[str]) -> None:
        self.check_layout()  # never append through a symlink to a file outside the run
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
        self.check_layout()
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.csv_path, buf.getvalue())

    def drop_metrics(self) -> None:
        """Remove the metrics of a run killed before its first checkpoint (it starts over).

        Only after :meth:`load_checkpoint` found no checkpoint ever committed: the metrics of
        an epoch are written after its checkpoint, so these hold nothing a checkpoint kept.
        """
        self.check_layout()
        commits = [p for p in self.ckpt_dir.glob("step-*.json") if step_of(p.name)]
        if os.path.lexists(self.last_json) or commits:
            raise CheckpointError(f"{self.ckpt_dir} holds a checkpoint; resume it")  # a bug guard
        for path in (self.metrics_path, self.csv_path):
            path.unlink(missing_ok=True)

    def read_records(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records ([] when absent: a run that diverged in its first epoch)."""
        if not os.path.lexists(self.metrics_path):
            return []
        fix = f"restore it, or delete it and result.json and resume {self.path} to rewrite it"
        text = read_bounded(self.metrics_path, MAX_JSON_BYTES, fix)
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(check_record(parse_json(line), f"line {i}"))
            except BadJSON as exc:
                raise CheckpointError(
                    f"{self.metrics_path} line {i} is not JSON ({exc}); {fix}"
                ) from None
            except BadField as exc:
                raise CheckpointError(f"{self.metrics_path} {exc}; {fix}") from None
        return records


def _file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _remove_temps(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def find_runs(root: str | Path) -> list[Path]:
    """The run folders directly under ``root`` that hold a result.json, sorted."""
    return sorted(p.parent for p in Path(root).glob("*/result.json"))


def run_config_near(weights: Path) -> dict[str, Any] | None:
    """The saved settings of the run folder a weights file sits in (or in its checkpoints/)."""
    for folder in (weights.parent, weights.parent.parent):
        candidate = folder / "config.json"
        if candidate.is_file():
            try:
                data = read_json(candidate, "")
            except ReslabError:
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
