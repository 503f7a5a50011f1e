"""Hypothesis fuzzing of every file a run folder holds, with extremes: inf, nan, 10^k, huge
ints, wrong JSON types, deep nesting, long strings, truncation (issue 11, "Must show").

Each example edits one file of a killed run (committed at the end of epoch 1) and reads the
folder as a resume does. The reader either accepts a file that is still valid, or raises one
ReslabError line; it never writes or deletes anything (every file byte-identical afterwards),
and each call is bounded in time. ``RESLAB_FUZZ_EXAMPLES`` sets the examples per property.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from run_folder_helpers import Runs, make_runs, snapshot, step_files
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from reslab.data import DeviceLoader, load_dataset
from reslab.errors import ReslabError
from reslab.train import RunFolder
from reslab.train.run_folder import get_rng_state, set_rng_state
from reslab.train.schedule import Schedule
from reslab.train.state import Running, TrainState

Files = dict[Path, bytes]
TIME_LIMIT_S = 5.0  # per read; a valid read of this folder takes milliseconds
DEEP = "\0DEEP\0"  # replaced by 100,000 nested lists in the file's text
LONG = "x" * 200_000

EXTREMES = st.one_of(
    st.sampled_from(
        [math.inf, -math.inf, math.nan, -1, 0, 2**31, 2**63, 2**64, 10**30, 10**400, 1e308,
         -0.0, True, False, None, "", "abc", "22", LONG, [], {}, [[[]]], {"a": {"b": [1]}}, DEEP]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=4),
)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("fuzz"), reference=False)


@pytest.fixture(scope="module")
def train_state(runs: Runs) -> TrainState:
    """A TrainState shaped like the run's, to load what the reader accepted (as resume does)."""
    config = RunFolder(runs.killed).read_config()
    ds = load_dataset("digits", seed=config.seed)
    loader = DeviceLoader(
        ds.train_images, ds.train_labels, batch_size=config.batch_size, mean=ds.mean,
        std=ds.std, augment=config.augment or ds.augment, seed=config.seed, channels_last=False,
    )  # fmt: skip
    state = TrainState(Schedule(config, 2 * len(loader)), loader, Running(torch.device("cpu")))
    loaded = RunFolder(runs.killed).load_checkpoint(repair=False)
    assert loaded is not None
    with _rng_kept():
        state.load_state_dict(loaded[0])  # the untouched checkpoint loads
    return state


@pytest.fixture(scope="module")
def pristine(runs: Runs) -> Files:
    return {p: p.read_bytes() for p in runs.killed.rglob("*") if p.is_file()}


@pytest.fixture
def folder(runs: Runs, pristine: Files) -> Iterator[RunFolder]:
    yield RunFolder(runs.killed)
    _restore(runs, pristine)


def _restore(runs: Runs, pristine: Files) -> RunFolder:
    """Put the killed run back byte for byte: every example starts from it."""
    for p in runs.killed.rglob("*"):
        if p.is_file() and p not in pristine:
            p.unlink()
    for p, data in pristine.items():
        p.write_bytes(data)
    return RunFolder(runs.killed)


class _rng_kept:
    """Loading a state sets the global RNGs; put them back for the next example."""

    def __enter__(self) -> None:
        self.saved = get_rng_state()

    def __exit__(self, *_: object) -> None:
        set_rng_state(self.saved)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a JSON document (lists: the first three items)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj[:3])
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, (dict, list)) and value:
            yield from _paths(value, (*prefix, key))


def _edit(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


def _dumps(doc: Any) -> bytes:
    text = json.dumps(doc)  # NaN and Infinity as Python writes them: the reader refuses them
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` JSON with one field set to an extreme, deleted, or the text cut/replaced."""
    kind = draw(st.sampled_from(["field", "field", "field", "delete", "truncate", "whole"]))
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "whole":
        return _dumps(draw(EXTREMES))
    doc = json.loads(original)
    paths = list(_paths(doc))
    _edit(doc, draw(st.sampled_from(paths)), draw(EXTREMES), kind == "delete")
    return _dumps(doc)


def _one_line_or(call: Any) -> Any:
    """The call's value, or None after a one-line ReslabError; bounded in time."""
    start = time.perf_counter()
    try:
        value = call()
        event("accepted")  # --hypothesis-show-statistics counts the outcomes
    except ReslabError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 3000, message[:3000]
        event("refused in one line")
        value = None
    assert time.perf_counter() - start < TIME_LIMIT_S
    return value


# --- last.json ----------------------------------------------------------------------------------


@pytest.mark.slow
@given(data=st.data())
def test_fuzz_last_json(
    folder: RunFolder, runs: Runs, pristine: Files, train_state: TrainState, data: Any
) -> None:
    _restore(runs, pristine)
    original = folder.last_json.read_bytes()
    folder.last_json.write_bytes(data.draw(_mutated(original)))
    before = snapshot(folder.path)
    loaded = _one_line_or(lambda: folder.load_checkpoint(repair=False))
    assert snapshot(folder.path) == before  # nothing written, nothing deleted
    if loaded is not None:  # a valid (or rebuilt) commit: it must load as resume loads it
        state, weights, _ = loaded
        assert state["step"] == runs.step and weights.name == f"step-{runs.step:09d}.safetensors"
        with _rng_kept():
            _one_line_or(lambda: train_state.load_state_dict(state))
    folder.last_json.write_bytes(original)


# --- the step files' headers --------------------------------------------------------------------


@st.composite
def _hostile_step_file(draw: st.DrawFn, original: bytes) -> bytes:
    """A step file with its ``step`` metadata set to an extreme, or its header broken."""
    kind = draw(st.sampled_from(["step", "step", "length", "header", "truncate"]))
    (n,) = struct.unpack("<Q", original[:8])
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "length":
        bad = draw(st.sampled_from([0, 1, n - 1, n + 1, 2**40, 2**63, 2**64 - 1]))
        return struct.pack("<Q", bad) + original[8:]
    if kind == "header":
        header = _dumps(draw(EXTREMES))
        return struct.pack("<Q", len(header)) + header + original[8 + n :]
    value = draw(EXTREMES)
    text = value if isinstance(value, str) and value != DEEP else json.dumps(value)
    return st_save(st_load(original), metadata={"step": text})


@given(data=st.data(), which=st.sampled_from(["weights", "optim"]))
def test_fuzz_step_file_headers(
    folder: RunFolder, runs: Runs, pristine: Files, data: Any, which: str
) -> None:
    """Even with last.json's size and SHA-256 updated to match, a bad header is refused."""
    _restore(runs, pristine)
    state = json.loads(folder.last_json.read_bytes())
    path = folder.ckpt_dir / state[which]
    original, original_json = path.read_bytes(), folder.last_json.read_bytes()
    hostile = data.draw(_hostile_step_file(original))
    path.write_bytes(hostile)
    state["files"][path.name] = {
        "size": len(hostile),
        "sha256": hashlib.sha256(hostile).hexdigest(),
    }
    folder.last_json.write_text(json.dumps(state))
    before = snapshot(folder.path)
    loaded = _one_line_or(lambda: folder.load_checkpoint(repair=False))
    assert snapshot(folder.path) == before
    if loaded is not None:  # only a header that still says this step, over intact tensors
        tensors = load_file(path)
        assert all(torch.isfinite(t).all() or t.dtype == torch.int64 for t in tensors.values())
    path.write_bytes(original)
    folder.last_json.write_bytes(original_json)
    assert step_files(folder.path, runs.step) == step_files(runs.killed, runs.step)


# --- config.json, metrics.jsonl, result.json ----------------------------------------------------


@given(data=st.data())
def test_fuzz_config_json(folder: RunFolder, runs: Runs, pristine: Files, data: Any) -> None:
    _restore(runs, pristine)
    original = folder.config_path.read_bytes()
    folder.config_path.write_bytes(data.draw(_mutated(original)))
    before = snapshot(folder.path)
    _one_line_or(folder.read_saved_config)
    _one_line_or(folder.read_config)
    assert snapshot(folder.path) == before
    folder.config_path.write_bytes(original)


@given(data=st.data(), line=st.integers(0, 2))
def test_fuzz_metrics_jsonl(
    folder: RunFolder, runs: Runs, pristine: Files, data: Any, line: int
) -> None:
    _restore(runs, pristine)
    original = folder.metrics_path.read_bytes()
    record = original.splitlines()[0]
    lines = [record] * 3
    lines[line] = data.draw(_mutated(record))
    folder.metrics_path.write_bytes(b"\n".join(lines) + b"\n")
    records = _one_line_or(folder.read_records)
    for r in records or []:  # what is accepted is an epoch record of finite numbers
        assert isinstance(r["epoch"], int) and r["epoch"] >= 1
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    folder.metrics_path.write_bytes(original)


FINISHED = {
    "status": "finished", "model": "resnet8", "dataset": "digits", "params": 1234, "epochs": 2,
    "steps": 44, "train_loss": 0.8, "clean_train_error": 12.5, "test_error": 14.1,
    "best_error": 14.1, "warmup_end_step": None, "images_per_s": 2000.0, "wall_time": 2.0,
    "world_size": 1, "weights": "checkpoints/last.safetensors", "rank_checksums": ["ab12"],
}  # fmt: skip
DIVERGED = {"status": "diverged", "message": "training loss became NaN/inf at step 3",
            "clean_train_error": None, "test_error": None}  # fmt: skip


@given(data=st.data(), template=st.sampled_from([FINISHED, DIVERGED]))
def test_fuzz_result_json(
    folder: RunFolder, runs: Runs, pristine: Files, data: Any, template: dict[str, Any]
) -> None:
    _restore(runs, pristine)
    folder.result_path.write_bytes(data.draw(_mutated(json.dumps(template).encode())))
    before = snapshot(folder.path)
    result = _one_line_or(folder.read_result)
    assert snapshot(folder.path) == before
    if result is not None:
        for key in ("test_error", "clean_train_error", "wall_time", "train_loss"):
            value = result.get(key)
            assert value is None or (not isinstance(value, bool) and math.isfinite(value))
        assert ".." not in str(result.get("weights", ""))
    folder.result_path.unlink()
