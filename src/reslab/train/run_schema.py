"""The schema of every file :mod:`reslab.train.run_folder` reads, checked before it is trusted.

A run folder is input like any other: a user may edit it, a disk may damage it, someone may
hand over a hostile one. Each reader here takes bytes and returns data of the documented shape,
or raises one :class:`CheckpointError` line that names the file, the first bad field and what to
do. Nothing is echoed unbounded (:func:`~reslab.checks.shown`), nothing is read without a size
limit, and every number is checked for its type (``True`` is not an int), finiteness and range.

* ``checkpoints/last.json``: :func:`check_checkpoint` (step, step-file names *derived from the
  step*, so no path in it can leave ``checkpoints/``, sizes, SHA-256, loader, RNG, history).
* step files: :func:`step_metadata`, a bounded parse of the safetensors header (whose
  ``step`` entry must agree with ``last.json``, so an edited step is refused).
* ``result.json`` (finished or diverged): :func:`check_result`.
* ``metrics.jsonl``: :func:`check_record`, line by line.
* ``config.json``: an object here, its settings then checked by ``check_settings``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import stat
import struct
from pathlib import Path
from typing import Any

from reslab.checks import shown
from reslab.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "MAX_JSON_BYTES",
    "BadField",
    "check_checkpoint",
    "check_config_values",
    "check_record",
    "check_result",
    "commit_name",
    "optim_name",
    "parse_json",
    "read_json",
    "step_metadata",
    "step_of",
    "weights_name",
]

CHECKPOINT_FORMAT = 1
MAX_JSON_BYTES = 64 << 20  # last.json with 10^5 epochs of history is ~20 MB
MAX_HEADER_BYTES = 16 << 20
MAX_STEP = 1 << 40
_STEP_FILE = re.compile(r"step-(\d{9,13})\.(safetensors|optim\.safetensors|json)")
_SHA = re.compile(r"[0-9a-f]{64}")
_NP_KEYS, _PY_KEYS = 624, 625  # MT19937 state words (Python adds the position)


class BadField(ValueError):
    """One field of a run file breaks the schema; the reader adds the file and the fix."""


class BadJSON(BadField):
    """The text is not JSON at all (truncated, garbage, NaN, nested too deeply)."""


def weights_name(step: int) -> str:
    return f"step-{step:09d}.safetensors"


def optim_name(step: int) -> str:
    return f"step-{step:09d}.optim.safetensors"


def commit_name(step: int) -> str:
    return f"step-{step:09d}.json"


def step_of(name: str) -> tuple[int, str] | None:
    """(step, kind) for a step file's name (kind: "safetensors", "optim.safetensors", "json")."""
    match = _STEP_FILE.fullmatch(name)
    return None if match is None else (int(match.group(1)), match.group(2))


# --- reading bytes ----------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise BadJSON(f"{name}, which JSON does not allow")


def parse_json(text: str | bytes) -> Any:
    """json.loads without NaN/Infinity; deep nesting and bad text raise BadField."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"{exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise BadJSON("not UTF-8 text") from None
    except RecursionError:
        raise BadJSON("nested too deeply to be a run file") from None


def read_json(path: Path, fix: str) -> Any:
    """The JSON in ``path`` (a regular file of at most MAX_JSON_BYTES), or one line."""
    data = read_bounded(path, MAX_JSON_BYTES, fix)
    try:
        return parse_json(data)
    except BadField as exc:
        raise CheckpointError(
            f"{path.parent} has a corrupt JSON file {path.name} ({exc}); {fix}"
        ) from None


def read_bounded(path: Path, limit: int, fix: str) -> bytes:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a regular file; {fix}")
        if st.st_size > limit:
            raise CheckpointError(
                f"{path} is {st.st_size:,} bytes, more than any run writes; {fix}"
            )
        with path.open("rb") as f:
            return f.read(limit + 1)[:limit]
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from exc


def step_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors step file, after a bounded check of its header.

    The header must be a JSON object whose tensors' byte ranges tile the rest of the file
    exactly: a truncated or padded file is refused before anything trusts it.
    """
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            head = f.read(8)
            if len(head) < 8:
                raise BadField("is too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise BadField(f"has a header length of {n:,} bytes in a {size:,}-byte file")
            header = parse_json(f.read(n))
    except BadJSON as exc:
        raise BadField(f"has a header that is not JSON ({exc})") from None
    except OSError as exc:
        raise BadField(f"cannot be read ({exc.strerror or exc})") from exc
    if not isinstance(header, dict):
        raise BadField("has a header that is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadField("has __metadata__ that is not an object of strings")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and _all_ints(offsets)):
            raise BadField(f"has a malformed entry for tensor {shown(name)}")
        end = max(end, offsets[1])
    if end != size - 8 - n:
        raise BadField(f"is truncated or padded ({size:,} bytes, its header needs {8 + n + end:,})")
    return meta


def _all_ints(values: list[Any]) -> bool:
    return all(type(v) is int and 0 <= v < 1 << 50 for v in values)


# --- field checks -----------------------------------------------------------------------------


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise BadField(f"has no {where}{key}")
    return obj[key]


def _int(value: Any, name: str, lo: int = 0, hi: int = MAX_STEP) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise BadField(f"has {name} = {shown(value)}, expected an integer in [{lo}, {hi}]")
    return value


def _num(value: Any, name: str, lo: float = 0.0, hi: float = math.inf, none: bool = True) -> None:
    if value is None and none:
        return
    # Python ints are unbounded: 10**400 is "finite" but no float holds it (float() overflows).
    ok = (type(value) is float and math.isfinite(value)) or (
        type(value) is int and abs(value) <= 1 << 63
    )
    ok = ok and lo <= value <= hi
    if not ok:
        raise BadField(f"has {name} = {shown(value)}, expected a finite number in [{lo}, {hi}]")


def _type(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadField(f"has {name} = {shown(value)}, expected {names}")
    return value


def _str(value: Any, name: str, limit: int = 256) -> str:
    _type(value, str, name)
    if len(value) > limit:
        raise BadField(f"has {name} of {len(value):,} characters (at most {limit})")
    return str(value)


def _scalar(value: Any, name: str) -> None:
    """A JSON scalar of bounded size (loader settings, unknown record fields)."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        _num(value, name, -math.inf)
        return
    if isinstance(value, str):
        _str(value, name)
        return
    raise BadField(f"has {name} = {shown(value)}, expected a number, string, boolean or null")


# --- the files --------------------------------------------------------------------------------


def check_checkpoint(state: Any) -> int:
    """Check a ``last.json`` (or the state a step file carries); returns its step.

    The weights and optimizer names must be exactly the step's own file names: a name can then
    never point outside ``checkpoints/`` (``../../etc/hostname`` is refused here, before any
    file is opened), and the step is tied to the files it names.
    """
    _type(state, dict, "its top level")
    fmt = _get(state, "format", "")
    if type(fmt) is not int or fmt != CHECKPOINT_FORMAT:
        raise BadField(f"has format {shown(fmt)}; this reslab reads format {CHECKPOINT_FORMAT}")
    step = _int(_get(state, "step", ""), "step")
    for key, want in (("weights", weights_name(step)), ("optim", optim_name(step))):
        name = _get(state, key, "")
        if name != want:
            raise BadField(f"has {key} = {shown(name)}, but the step-{step} file is {want!r}")
    epoch = _int(_get(state, "epoch", ""), "epoch")
    loader = _type(_get(state, "loader", ""), dict, "loader")
    if _int(_get(loader, "epoch", "loader."), "loader.epoch") != epoch:
        raise BadField(f"has loader.epoch {loader['epoch']} but epoch {epoch}")
    _int(_get(loader, "batch", "loader."), "loader.batch")
    for key, value in loader.items():
        _scalar(value, f"loader.{shown(key)}")
    _check_rng(_get(state, "rng", ""))
    _type(_get(state, "warming", ""), bool, "warming")
    if _get(state, "warmup_end", "") is not None:
        _int(state["warmup_end"], "warmup_end", 0, step)
    _num(_get(state, "best_error", ""), "best_error", 0.0, 100.0)
    records = _type(_get(state, "records", ""), list, "records")
    for i, record in enumerate(records):
        check_record(record, f"records[{i}]")
        if record["step"] > step:
            raise BadField(f"has records[{i}].step {record['step']} after step {step}")
    running = _type(_get(state, "running", ""), dict, "running")
    _num(_get(running, "loss", "running."), "running.loss", -math.inf, none=False)
    for key in ("errors", "count", "window_errors", "window_count"):
        _int(_get(running, key, "running."), f"running.{key}", 0, 1 << 62)
    _num(_get(state, "wall_time", ""), "wall_time", none=False)
    _str(_get(state, "saved", ""), "saved")
    return step


def check_files(files: Any, names: tuple[str, str]) -> dict[str, tuple[int, str]]:
    """``last.json``'s ``files``: a size and a SHA-256 for each of the two step files."""
    _type(files, dict, "files")
    out = {}
    for name in names:
        entry = _type(_get(files, name, "files."), dict, f"files.{name}")
        size = _int(_get(entry, "size", f"files.{name}."), f"files.{name}.size", 0, 1 << 50)
        sha = _get(entry, "sha256", f"files.{name}.")
        if not (isinstance(sha, str) and _SHA.fullmatch(sha)):
            raise BadField(f"has files.{name}.sha256 = {shown(sha)}, expected 64 hex digits")
        out[name] = (size, sha)
    return out


def _check_rng(rng: Any) -> None:
    """The RNG states as :func:`reslab.train.run_folder.get_rng_state` records them."""
    import torch

    _type(rng, dict, "rng")
    text = _str(_get(rng, "torch", "rng."), "rng.torch", 1 << 16)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadField("has rng.torch that is not base64") from None
    if len(raw) != torch.get_rng_state().numel():
        raise BadField(f"has rng.torch of {len(raw)} bytes, not a CPU generator state")
    np_state = _type(_get(rng, "numpy", "rng."), list, "rng.numpy")
    if len(np_state) != 5 or np_state[0] != "MT19937":
        raise BadField("has rng.numpy that is not an MT19937 state")
    _words(np_state[1], _NP_KEYS, "rng.numpy[1]")
    _int(np_state[2], "rng.numpy[2]", 0, _NP_KEYS)
    _int(np_state[3], "rng.numpy[3]", 0, 1)
    _num(np_state[4], "rng.numpy[4]", -math.inf, none=False)
    py_state = _type(_get(rng, "python", "rng."), list, "rng.python")
    if len(py_state) != 3:
        raise BadField("has rng.python that is not a (version, state, gauss) triple")
    _int(py_state[0], "rng.python[0]", 3, 3)
    _words(py_state[1], _PY_KEYS, "rng.python[1]")
    _int(py_state[1][-1], "rng.python[1][-1]", 0, _NP_KEYS)
    _num(py_state[2], "rng.python[2]", -math.inf)


def _words(value: Any, n: int, name: str) -> None:
    _type(value, list, name)
    if len(value) != n or not all(type(v) is int and 0 <= v < 1 << 32 for v in value):
        raise BadField(f"has {name} that is not {n} 32-bit words")


_RESULT_NUMBERS = (
    "clean_train_error",
    "test_error",
    "val_error",
    "best_error",
    "train_loss",
    "images_per_s",
    "wall_time",
)
_RESULT_INTS = ("params", "epochs", "steps", "world_size", "warmup_end_step")


def check_result(result: Any) -> dict[str, Any]:
    """result.json of a finished run, or a diverged run's marker; unknown keys are kept."""
    _type(result, dict, "its top level")
    status = result.get("status", "finished")
    if status not in ("finished", "diverged"):
        raise BadField(f"has status {shown(status)}, expected 'finished' or 'diverged'")
    if "message" in result:
        _str(result["message"], "message", 1 << 16)
    for key in _RESULT_NUMBERS:
        _num(result.get(key), key, -math.inf if key == "train_loss" else 0.0)
    for key in _RESULT_INTS:
        if result.get(key) is not None:
            _int(result[key], key, 0, 1 << 50)
    for key in ("weights", "eval_weights"):
        if key in result:
            _relative(result[key], key)
    for key in ("model", "dataset"):
        if key in result:
            _str(result[key], key)
    checksums = result.get("rank_checksums", [])
    _type(checksums, list, "rank_checksums")
    if len(checksums) > 1 << 16:
        raise BadField(f"has {len(checksums):,} rank_checksums")
    for i, value in enumerate(checksums):
        _str(value, f"rank_checksums[{i}]")
    return result


def _relative(value: Any, name: str) -> None:
    """A path recorded in a run file: relative, inside the run folder, no ``..``."""
    path = _str(value, name, 1024)
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts or "\0" in path:
        raise BadField(f"has {name} = {shown(path)}, which is not a path inside the run folder")


def check_config_values(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's values bounded before the settings are checked key by key.

    Every value is a JSON scalar or a short list of them (milestones, snapshot steps): no
    nested structures, no 10**400, no 50 MB string to echo. What each key means is then
    :func:`reslab.train.config.check_settings`'s to check.
    """
    for key, value in config.items():
        name = shown(key)
        if key == "_meta":
            continue  # provenance, never read back as settings
        _str(key, "a key")
        if isinstance(value, list):
            if len(value) > 1 << 16:
                raise BadField(f"has {name} with {len(value):,} items")
            for i, item in enumerate(value):
                _scalar(item, f"{name}[{i}]")
        else:
            _scalar(value, name)
    return config


def check_record(record: Any, name: str) -> dict[str, Any]:
    """One epoch's metrics: epoch ≥ 1, step ≥ 0, finite numbers (or null), bounded strings."""
    _type(record, dict, name)
    _int(_get(record, "epoch", f"{name}."), f"{name}.epoch", 1)
    _int(_get(record, "step", f"{name}."), f"{name}.step")
    for key, value in record.items():
        _scalar(value, f"{name}.{shown(key)}")
    return record
