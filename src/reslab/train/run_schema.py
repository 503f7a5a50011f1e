"""The schema of every file :mod:`reslab.train.run_folder` reads, checked before it is trusted.

A run folder is input like any other: a user may edit it, a disk may damage it, someone may
hand over a hostile one. Each reader here takes bytes and returns data of the documented shape,
or raises one :class:`CheckpointError` line that names the file, the first bad field and what to
do. Nothing is echoed unbounded (:func:`~reslab.checks.shown`), nothing is read without a size
limit, and every number is checked for its type (``True`` is not an int), finiteness and range,
by the declarations below (:mod:`reslab.checks.document`).

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
import errno
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

from reslab.checks import (
    FLOAT_MAX,
    InRange,
    Invalid,
    Is,
    ListOf,
    MapOf,
    Maybe,
    Object,
    Spec,
    file_kind,
    integer,
    is_int,
    is_number,
    maybe,
    number,
    one_of,
    shown,
    text,
)
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
    """At most ``limit`` bytes of a run's own regular file: opened without following a
    symlink (a link could point outside the run) and without blocking (a FIFO), checked on
    the descriptor."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP and path.is_symlink():
            raise CheckpointError(f"{path} is a symlink, not the run's own file; {fix}") from None
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from exc
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = file_kind(st.st_mode)
                raise CheckpointError(f"{path} is {kind}, not a regular file; {fix}")
            if st.st_size > limit:
                raise CheckpointError(
                    f"{path} is {st.st_size:,} bytes, more than any run writes; {fix}"
                )
            os.set_blocking(fd, True)
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


# --- the declarations -----------------------------------------------------------------------

MAX_SHORT = 256  # a short text value: a name, a date, a checksum, a loader setting
STEP = InRange(integer(0, MAX_STEP))
AT_LEAST_0 = InRange(number(0, FLOAT_MAX))  # finite bounds: no inf, and no 10**400


def _finite(v: Any) -> bool:
    """A finite float (nan, inf fail), or an int that fits in 64 bits (10**400 overflows float)."""
    return is_number(v) and abs(v) <= (1 << 63 if isinstance(v, int) else FLOAT_MAX)


# A loss is loaded with Tensor.fill_, which overflows on an int of more than 64 bits.
FINITE = Is(_finite, "must be a finite number, not {value}")


def _scalar(v: Any) -> bool:
    """A JSON scalar of bounded size (loader settings, unknown record fields, settings)."""
    if isinstance(v, str):
        return len(v) <= MAX_SHORT
    return v is None or isinstance(v, bool) or _finite(v)


def _words(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(is_int(w) and 0 <= w < 1 << 32 for w in v)


def _numpy_state(v: Any) -> bool:
    """("MT19937", 624 key words, position, has_gauss, gauss), as numpy's get_state gives it."""
    return (
        isinstance(v, list) and len(v) == 5 and v[0] == "MT19937" and _words(v[1], _NP_KEYS)
        and is_int(v[2]) and 0 <= v[2] <= _NP_KEYS and is_int(v[3]) and v[3] in (0, 1)
        and _finite(v[4])
    )  # fmt: skip


def _python_state(v: Any) -> bool:
    """(version 3, 624 key words and the position, gauss), as random.getstate gives it."""
    return (
        isinstance(v, list) and len(v) == 3 and is_int(v[0]) and v[0] == 3
        and _words(v[1], _PY_KEYS) and v[1][-1] <= _NP_KEYS and (v[2] is None or _finite(v[2]))
    )  # fmt: skip


def _inside(v: Any) -> bool:
    """A path recorded in a run file: relative, inside the run folder, no ``..``."""
    if not (isinstance(v, str) and len(v) <= 1024 and "\0" not in v):
        return False
    return bool(Path(v).parts) and not Path(v).is_absolute() and ".." not in Path(v).parts


SCALAR = Is(_scalar, f"must be a number, a string of at most {MAX_SHORT} characters, a boolean "
            "or null, not {value}")  # fmt: skip
#: config.json's values: every one a scalar or a short list of them (milestones, snapshot steps)
SETTING = Is(
    lambda v: _scalar(v) or (isinstance(v, list) and len(v) <= 1 << 16 and all(map(_scalar, v))),
    "must be a number, a short string, a boolean, null or a list of them, not {value}",
)
RECORD = Object({"epoch": InRange(integer(1, MAX_STEP)), "step": STEP}, others=SCALAR)
LAST_JSON = Object({
    "format": Is(lambda v: is_int(v) and v == CHECKPOINT_FORMAT,
                 f"must be {CHECKPOINT_FORMAT}, the format this reslab reads, not {{value}}"),
    "step": STEP,
    "epoch": STEP,
    "loader": Object({"epoch": STEP, "batch": STEP}, others=SCALAR),
    "rng": Object({
        "torch": text(1 << 16),
        "numpy": Is(_numpy_state, "must be numpy's MT19937 state"),
        "python": Is(_python_state, "must be a (version, state, gauss) triple of random's"),
    }),
    "warming": Is(lambda v: isinstance(v, bool), "must be true or false, not {value}"),
    "warmup_end": Maybe(STEP, absent=False),
    "best_error": Maybe(InRange(number(0, 100)), absent=False),
    "records": ListOf(RECORD, "must be a list of epoch records"),
    "running": Object({
        "loss": FINITE,
        **{key: InRange(integer(0, 1 << 62))
           for key in ("errors", "count", "window_errors", "window_count")},
    }),
    "wall_time": AT_LEAST_0,
    "saved": text(MAX_SHORT),
    # the settings the run trained with (absent before issue 20), checked against config.json
    "config": Maybe(MapOf(SETTING)),
}, "must be a JSON object")  # fmt: skip
_RESULT_NUMBERS = "clean_train_error test_error val_error best_error images_per_s wall_time"
_RESULT_INTS = "params epochs steps world_size warmup_end_step"
RESULT = Object({
    "status": maybe(
        one_of(("finished", "diverged"), "must be 'finished' or 'diverged', not {value}"), False
    ),
    "message": maybe(text(1 << 16), null=False),
    "train_loss": maybe(FINITE),
    **{key: maybe(AT_LEAST_0) for key in _RESULT_NUMBERS.split()},
    **{key: maybe(InRange(integer(0, 1 << 50))) for key in _RESULT_INTS.split()},
    **{key: maybe(Is(_inside, "must be a path inside the run folder, not {value}"), null=False)
       for key in ("weights", "eval_weights")},
    **{key: maybe(text(MAX_SHORT), null=False) for key in ("model", "dataset")},
    "rank_checksums": maybe(Is(
        lambda v: isinstance(v, list) and len(v) <= 1 << 16
        and all(isinstance(c, str) and len(c) <= MAX_SHORT for c in v),
        "must be a list of up to 65,536 checksums",
    ), null=False),
}, "must be a JSON object")  # fmt: skip


def _check(spec: Spec, value: Any, where: str = "") -> None:
    """``spec.check``, its one :class:`Invalid` line as the :class:`BadField` readers expect."""
    try:
        spec.check(value, where)
    except Invalid as exc:
        raise BadField(f"is invalid: {exc}") from None


# --- the files --------------------------------------------------------------------------------


def check_checkpoint(state: Any) -> int:
    """Check a ``last.json`` (or the state a step file carries); returns its step.

    The weights and optimizer names must be exactly the step's own file names: a name can then
    never point outside ``checkpoints/`` (``../../etc/hostname`` is refused here, before any
    file is opened), and the step is tied to the files it names.
    """
    _check(LAST_JSON, state)
    step = state["step"]
    for key, want in (("weights", weights_name(step)), ("optim", optim_name(step))):
        if state.get(key) != want:
            name = shown(state.get(key))
            raise BadField(f"has {key} = {name}, but the step-{step} file is {want!r}")
    if state["loader"]["epoch"] != state["epoch"]:
        raise BadField(f"has loader.epoch {state['loader']['epoch']} but epoch {state['epoch']}")
    if (state["warmup_end"] or 0) > step:
        raise BadField(f"has warmup_end {state['warmup_end']} after step {step}")
    for i, record in enumerate(state["records"]):
        if record["step"] > step:
            raise BadField(f"has records[{i}].step {record['step']} after step {step}")
    try:
        raw = base64.b64decode(state["rng"]["torch"], validate=True)
    except (binascii.Error, ValueError):
        raise BadField("has rng.torch that is not base64") from None
    import torch

    if len(raw) != torch.get_rng_state().numel():
        raise BadField(f"has rng.torch of {len(raw)} bytes, not a CPU generator state")
    return step


def check_files(files: Any, names: tuple[str, str]) -> dict[str, tuple[int, str]]:
    """``last.json``'s ``files``: a size and a SHA-256 for each of the two step files."""
    entry = Object({
        "size": InRange(integer(0, 1 << 50)),
        "sha256": Is(lambda v: isinstance(v, str) and _SHA.fullmatch(v) is not None,
                     "must be 64 hex digits, not {value}"),
    })  # fmt: skip
    _check(Object({name: entry for name in names}), files, "files")
    return {name: (files[name]["size"], files[name]["sha256"]) for name in names}


def check_result(result: Any) -> dict[str, Any]:
    """result.json of a finished run, or a diverged run's marker; unknown keys are kept."""
    _check(RESULT, result)
    return result


def check_config_values(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's values bounded before the settings are checked key by key.

    Every value is a JSON scalar or a short list of them (milestones, snapshot steps): no
    nested structures, no 10**400, no 50 MB string to echo. What each key means is then
    :func:`reslab.train.config.check_settings`'s to check.
    """
    settings = {k: v for k, v in config.items() if k != "_meta"}  # _meta: provenance, not read
    long = [key for key in settings if len(key) > MAX_SHORT]
    if long:
        raise BadField(f"has a key of {len(long[0]):,} characters (at most {MAX_SHORT})")
    _check(MapOf(SETTING), settings)
    return config


def check_record(record: Any, name: str) -> dict[str, Any]:
    """One epoch's metrics: epoch ≥ 1, step ≥ 0, finite numbers (or null), bounded strings."""
    _check(RECORD, record, name)
    return record
