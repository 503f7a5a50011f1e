"""Hostile input, issue 11 classes 1, 2, 3 and 7: bounds and types, checked at the edge.

One test per class holds the examples the issue found (each failed on the main of 2026-12-01),
then hypothesis draws extremes (inf, nan, -0.0, 10^k, huge ints, bools where numbers go,
strings, lists, tables, deep nesting, long strings, wrong JSON types) for **every**
``TrainConfig`` field (as a flag, in a TOML file, in a JSON file), every ``StudyConfig`` field,
every study's every flag, and every field of a weights header. Each call must end in exit code 2
with exactly one line on stderr, write nothing, and return within :data:`SECONDS` -- or, for a
value that is legitimately in range, reach the point where training (or evaluation) would
start, with the value as given. Training itself is stubbed out: the validation must fire
before it. ``RESLAB_FUZZ_EXAMPLES`` scales the examples (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import reslab.cli
import reslab.train
from conftest import ONE_LINE
from reslab.checks import MAX_ECHO, MAX_LINE, MAX_THREADS, max_threads
from reslab.errors import ModelError, ReslabError
from reslab.experiments import StudyConfig, get_study, list_studies
from reslab.models import create_model
from reslab.train import TrainConfig
from reslab.weights import CONFIG_KEY, load_weights

SECONDS = 5.0  # per call; the cases took minutes (resnet6000002) or crashed
EXAMPLES = int(os.environ.get("RESLAB_FUZZ_EXAMPLES", "40"))


class Started(Exception):
    """Raised by the stubs where training or evaluation would begin: validation passed."""

    def __init__(self, what: Any) -> None:
        super().__init__("started")
        self.what = what


@dataclasses.dataclass
class Outcome:
    code: int | str  # 2, or "started"
    line: str  # the one stderr line ("" when started)
    what: Any  # what reached the stub
    seconds: float


@pytest.fixture
def edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[list[str]], Outcome]:
    """``edge(argv)``: ``reslab`` in-process in ``tmp_path``, training and evaluation stubbed.

    Asserts what every call must satisfy: no exception but :class:`Started`, exit code 2 with
    one ``reslab: error:`` line and no traceback otherwise, nothing created under ``tmp_path``
    unless the call started, and at most :data:`SECONDS`.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "data-home"))
    parser = functools.cache(reslab.cli.build_parser)  # 0.1 s a call otherwise
    monkeypatch.setattr(reslab.cli, "build_parser", parser)

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise Started(args[0] if args else kwargs)

    monkeypatch.setattr(reslab.train, "fit", stop)
    runner = importlib.import_module("reslab.experiments.runner")
    monkeypatch.setattr(runner, "execute", lambda c, *a, **k: stop(c))
    monkeypatch.setattr(importlib.import_module("reslab.train.evaluate"), "evaluate", stop)

    def run(argv: list[str]) -> Outcome:
        before = _names(tmp_path)
        capsys.readouterr()
        started = time.perf_counter()
        try:
            code: int | str | None = reslab.cli.main(argv)
            what = None
        except SystemExit as exc:  # argparse
            code, what = exc.code, None  # type: ignore[assignment]
        except Started as signal:
            code, what = "started", signal.what
        seconds = time.perf_counter() - started
        err = capsys.readouterr().err
        assert seconds < SECONDS, (argv[:6], seconds)
        if code == "started":
            return Outcome("started", "", what, seconds)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv[:6], code, err[-500:])
        assert len(lines) == 1 and "Traceback" not in err, (argv[:6], err[-500:])
        assert ONE_LINE.match(lines[0]), lines[0][:200]
        assert len(lines[0]) <= MAX_LINE + 40, len(lines[0])
        assert _names(tmp_path) == before, (argv[:6], _names(tmp_path) - before)
        return Outcome(2, lines[0], None, seconds)

    return run


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# Paths are echoed as they are (up to checks.MAX_TEXT, within the line's bound): they say
# where; every other value is cut to checks.MAX_ECHO characters, or refused unquoted.
_PATHS = {"out", "data_dir", "--out", "--data-dir", "--from", "--weights"}


def _no_echo(line: str, text: str, name: str = "") -> None:
    """A long user value is never echoed whole."""
    if len(text) > 4 * MAX_ECHO and name not in _PATHS:
        assert text[: 2 * MAX_ECHO] not in line, line[:200]


TRAIN = ["train", "--model", "resnet8", "--width", "0.25", "--epochs", "1", "--threads", "1"]


# --- files the cases need --------------------------------------------------------------------

_BASE = create_model("resnet8", in_channels=1, width=0.25)
_STATE = {k: v.contiguous() for k, v in _BASE.state_dict().items()}


def _weights(
    path: Path, header: str | None = None, state: dict[str, Any] | None = None, **entries: str
) -> Path:
    """resnet8's tensors under ``header`` (default: the net's own config), as safetensors;
    ``entries`` are more header entries (``normalization=...``)."""
    raw = json.dumps(_BASE.reslab_config) if header is None else header
    extra = {f"reslab.{k}": v for k, v in entries.items()}
    save_file(state or _STATE, path, metadata={CONFIG_KEY: raw, **extra})
    return path


def _header(**fields: str) -> str:
    """The net's own header with ``fields`` replaced by raw JSON text (``"1e400"``, ...)."""
    items = {k: json.dumps(v) for k, v in _BASE.reslab_config.items()}
    items.update(fields)
    return _object(items)


def _object(items: dict[str, str]) -> str:
    """A JSON object from keys and raw JSON value texts."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in items.items() if k) + "}"


def _finished_run(folder: Path, model: str) -> Path:
    """A finished run folder whose config.json names ``model`` (written by hand)."""
    folder.mkdir(parents=True)
    config = {"model": model, "dataset": "digits", "width": 1.0, "seed": 0}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "result.json").write_text(json.dumps({"status": "finished", "test_error": 5.0}))
    return folder


# --- class 1: numbers that passed validation and crashed later --------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--width", "inf"], ("width", "got inf")),
        (["--seed", "99999999999999999999999"], ("seed", "below 2**63")),
        (["--wd", "inf"], ("weight_decay", "got inf")),
        (["--warmup-lr", "inf"], ("warmup_lr", "got inf")),
        (["--grad-clip", "inf"], ("grad_clip", "got inf")),
        (["--shortcut-mode", "dropout", "--shortcut-dropout", "nan"], ("shortcut_dropout",)),
    ],
)
def test_class1_numbers_are_finite_and_in_range_before_anything_starts(
    edge: Callable[[list[str]], Outcome], args: list[str], words: tuple[str, ...]
) -> None:
    outcome = edge([*TRAIN, *args, "--out", "out"])
    assert outcome.code == 2, "passed validation: training would have started"
    for word in words:
        assert word in outcome.line


def test_class1_the_same_numbers_from_files(
    edge: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text("width = inf\n")
    assert "width" in edge([*TRAIN[:1], "--config", "run.toml", "--out", "out"]).line
    (tmp_path / "run.json").write_text('{"seed": 1e400, "epochs": 1}')
    assert "seed" in edge([*TRAIN[:1], "--config", "run.json", "--out", "out"]).line
    _weights(tmp_path / "w.safetensors", _header(width="1e400"))
    assert "width" in edge(["eval", "--weights", "w.safetensors"]).line


# --- class 2: sizes with no upper bound ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--width", "1e6"], ("width", "at most 64")),
        (["--model", "resnet20", "--width", "64"], ("parameters", "500,000,000")),
        (["--threads", "100000"], ("threads",)),
        (["--model", "resnet6000002"], ("2,000 layers",)),
        (["--batch-size", "100000000"], ("batch_size",)),
    ],
)
def test_class2_sizes_are_bounded_before_anything_is_built(
    edge: Callable[[list[str]], Outcome], args: list[str], words: tuple[str, ...]
) -> None:
    outcome = edge([*TRAIN, *args, "--out", "out"])
    assert outcome.code == 2
    for word in words:
        assert word in outcome.line


def test_class2_threads_are_bounded_by_this_machine_but_saved_runs_still_load() -> None:
    too_many = max_threads() + 1
    with pytest.raises(
        ReslabError, match=f"threads must be a positive integer, at most {too_many - 1}"
    ):
        reslab.train.resolve({"threads": too_many})
    assert TrainConfig(threads=MAX_THREADS).threads == MAX_THREADS  # a bigger machine's run
    with pytest.raises(ReslabError, match="threads"):
        TrainConfig(threads=MAX_THREADS + 1)


def test_class2_files_and_studies_cannot_ask_for_huge_nets(
    edge: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet20", num_classes=10**12)
    _weights(tmp_path / "nc.safetensors", _header(num_classes=str(10**9)))
    assert "num_classes" in edge(["eval", "--weights", "nc.safetensors"]).line
    _weights(tmp_path / "deep.safetensors", _header(name='"resnet6000002"'))
    assert "layers" in edge(["eval", "--weights", "deep.safetensors"]).line
    # Within the bounds but far bigger than the file's tensors: refused before it is built.
    _weights(tmp_path / "big.safetensors", _header(name='"resnet1202"', width="1.0"))
    outcome = edge(["eval", "--weights", "big.safetensors"])
    assert "does not fit" in outcome.line and outcome.seconds < 1.0
    _finished_run(tmp_path / "runs" / "r", "resnet6000002")
    assert "layers" in edge(["report", "runs"]).line
    assert "--depths" in edge(["degradation", "--depths", "20,6000002", "--out", "deg"]).line
    assert "--jobs" in edge(["degradation", "--jobs", str(10**6), "--out", "deg"]).line


def test_class2_config_files_are_bounded_in_size_nesting_and_echo(
    edge: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    (tmp_path / "deep.toml").write_text("width = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested more than" in edge(["train", "--config", "deep.toml"]).line
    (tmp_path / "deep.json").write_text('{"milestones": ' + "[" * 50 + "]" * 50 + "}")
    assert "nested more than" in edge(["train", "--config", "deep.json"]).line
    long = "x" * 5_000_000
    (tmp_path / "long.toml").write_text(f'model = "{long[:900_000]}"\n')
    line = edge(["train", "--config", "long.toml"]).line
    assert "model" in line and len(line) < 300
    (tmp_path / "huge.toml").write_text(f'model = "{long}"\n')
    assert "1,024 KiB" in edge(["train", "--config", "huge.toml"]).line
    (tmp_path / "digits.json").write_text('{"seed": ' + "9" * 5000 + "}")
    assert "not valid JSON" in edge(["train", "--config", "digits.json"]).line
    line = edge([*TRAIN, "--epochs", "9" * 5000]).line
    _no_echo(line, "9" * 5000)


# --- class 3: a weights file trusted beyond its shapes ------------------------------------------


def test_class3_weights_are_floating_point_and_header_types_strict(
    edge: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    state = dict(_STATE)
    state["conv1.weight"] = (state["conv1.weight"] * 1e9).to(torch.int32)
    _weights(tmp_path / "i32.safetensors", state=state)
    line = edge(["eval", "--weights", "i32.safetensors"]).line
    assert "conv1.weight" in line and "I32" in line
    # Through the Python API, on a PyTorch checkpoint, the model's dtypes are the reference.
    torch.save(state, tmp_path / "i32.pt")
    with pytest.raises(ReslabError, match=r"conv1\.weight is int32, not floating-point"):
        load_weights(create_model("resnet8", in_channels=1, width=0.25), tmp_path / "i32.pt")
    for field, raw in [("plain", '"no"'), ("zero_init_residual", "1"), ("width", '"0.25"')]:
        _weights(tmp_path / "h.safetensors", _header(**{field: raw}))
        assert field in edge(["eval", "--weights", "h.safetensors"]).line
    for name in (None, 20, ["resnet20"]):
        with pytest.raises(ModelError, match="model name must be a string"):
            create_model(name)  # type: ignore[arg-type]


# --- class 7: messages that mislead -----------------------------------------------------------


def test_class7_paths_say_what_is_wrong_with_them(
    edge: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for argv in (
        ["eval", "--weights", "a"],
        ["train", "--config", "a"],
        ["lesion", "--weights", "a", "--out", "o"],
        ["lesion", "--from", "a", "--out", "o"],
        ["report", "a"],
    ):
        assert "symlink loop" in edge(argv).line, argv
    assert "broken symlink" in edge(["eval", "--weights", "gone"]).line
    assert "is a folder" in edge(["eval", "--weights", "."]).line
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfepochs = 1\n")
    assert "byte-order mark" in edge(["train", "--config", "bom.toml"]).line


def test_class7_a_refused_pickle_is_one_line_from_a_real_process(tmp_path: Path) -> None:
    """torch's UserWarning about the pickle protocol used to add two stderr lines."""
    torch.save({"w": torch.zeros(2)}, tmp_path / "p4.pt", pickle_protocol=4)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "reslab", "eval", "--weights", "p4.pt", "--model", "resnet8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("reslab: error: refused p4.pt")


# --- fuzzing: extremes for every field, every flag, every header field -------------------------

_FLAG_EXTREMES = [
    "inf", "-inf", "nan", "-0.0", "0", "-1", "1e400", "-1e400", "1e-400", "2**63", str(2**63),
    str(2**64), str(-(2**63) - 1), "9" * 5000, "true", "False", "", " ", "1,2", "0,nan", "[1]",
    "{}", "0x10", "1_000", "é", "\udcff", "A", "resnet20",
]  # fmt: skip
_FLAG_TEXT = st.one_of(
    st.sampled_from(_FLAG_EXTREMES),
    st.integers(0, 40).map(lambda k: str(10**k)),
    st.integers(0, 40).map(lambda k: str(-(10**k))),
    st.integers(-400, 400).map(lambda k: f"1e{k}"),
    st.floats().map(repr),
    st.integers(1, 100_000).map(lambda n: "x" * n),
)


def _nested(depth: int, left: str = "[", right: str = "]") -> str:
    return left * depth + right * depth


# Raw TOML and JSON value text: extremes, wrong types, deep nesting, long strings.
_COMMON_RAW = [
    "-0.0", "0", "-1", "1e400", "-1e400", str(2**63), str(2**64), "9" * 5000, "true", "false",
    '""', '"x"', '"inf"', '"1"', "[]", "[1, 2]", '["a"]', "[true]", "[[1]]", '"\\u0000"',
]  # fmt: skip
_TOML_RAW = st.one_of(
    st.sampled_from([*_COMMON_RAW, "inf", "-inf", "nan", "{}", "{a = 1}", "1979-05-27"]),
    st.integers(0, 40).map(lambda k: str(10**k)),
    st.integers(1, 200_000).map(_nested),
    st.integers(1, 100_000).map(lambda n: '"' + "x" * n + '"'),
)
_JSON_RAW = st.one_of(
    st.sampled_from([*_COMMON_RAW, "Infinity", "NaN", "null", "{}", '{"a": 1}', '"\\ud800"']),
    st.integers(0, 40).map(lambda k: str(10**k)),
    st.integers(1, 200_000).map(_nested),
    st.integers(1, 100_000).map(lambda n: json.dumps("x" * n)),
)


def _legit(name: str, value: Any) -> None:
    """What a value that started must be: its field's type, finite, bounded, as typed."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(value, float):
        assert math.isfinite(value), (name, value)
    if isinstance(value, int):
        assert not isinstance(value, bool) or hint in (bool, bool | None), (name, value)
        assert -(2**63) <= value < 2**63, (name, value)
    if isinstance(value, str):
        assert len(value) <= 4096 and "\x00" not in value, name


@settings(max_examples=max(4, EXAMPLES // 4))
@given(data=st.data())
def test_fuzz_every_train_field_by_flag_toml_and_json(
    edge: Callable[[list[str]], Outcome], tmp_path: Path, data: st.DataObject
) -> None:
    refused = 0
    for f in dataclasses.fields(TrainConfig):
        via = data.draw(st.sampled_from(["flag", "toml", "json"]))
        flag = "--" + f.name.replace("_", "-")
        out = [] if f.name == "out" else ["--out", "out"]
        if via == "flag" and f.type in ("bool", "bool | None"):
            text = data.draw(st.sampled_from([flag, "--no-" + flag[2:], flag + "=x"]))
            argv = ["train", text, *out]
        elif via == "flag":
            text = data.draw(_FLAG_TEXT)
            argv = ["train", f"{flag}={text}", *out]
        else:
            text = data.draw(_TOML_RAW if via == "toml" else _JSON_RAW)
            body = f"{f.name} = {text}\n" if via == "toml" else f'{{"{f.name}": {text}}}'
            (tmp_path / f"c.{via}").write_text(body, encoding="utf-8", errors="surrogatepass")
            argv = ["train", "--config", f"c.{via}", *out]
        outcome = edge(argv)
        (tmp_path / f"c.{via}").unlink(missing_ok=True)
        if outcome.code == "started":
            _legit(f.name, getattr(outcome.what, f.name))
        else:
            refused += 1
            _no_echo(outcome.line, text, f.name)
    assert refused > 0  # the extremes do reach the error paths


_PY_EXTREMES = [
    math.inf, -math.inf, math.nan, -0.0, 0, -1, True, False, None, "", "x", [], {}, (), 2**63,
    2**64, -(2**63) - 1, 10**400, "\x00", "\ud800", [math.nan], (20, True),
]  # fmt: skip
_PY_VALUES = st.one_of(
    st.sampled_from(_PY_EXTREMES),
    st.integers(0, 40).map(lambda k: 10**k),
    st.floats(),
    st.integers(1, 200_000).map(lambda n: "x" * n),
    st.integers(1, 200).map(lambda d: functools.reduce(lambda a, _: [a], range(d), [])),
)


@settings(max_examples=max(4, EXAMPLES // 4))
@given(data=st.data())
def test_fuzz_every_study_field_and_flag(
    edge: Callable[[list[str]], Outcome], tmp_path: Path, data: st.DataObject
) -> None:
    # Every StudyConfig field from Python: a one-line ReslabError, or a config.
    for f in dataclasses.fields(StudyConfig):
        value = data.draw(_PY_VALUES)
        started = time.perf_counter()
        try:
            StudyConfig(**{f.name: value})
        except ReslabError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 500, (f.name, str(exc)[:300])
        assert time.perf_counter() - started < SECONDS
    # Every flag of one study from the command line.
    study = get_study(data.draw(st.sampled_from(list_studies())))
    parser = reslab.cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[study.name]  # type: ignore[attr-defined]
    flags = [o for a in sub._actions for o in a.option_strings[:1] if o not in ("-h", "--out")]
    for i, flag in enumerate(flags):
        text = data.draw(_FLAG_TEXT)
        argv = [study.name, f"{flag}={text}", "--epochs", "1", "--out", f"o{i}"]
        outcome = edge(argv)
        if outcome.code == 2:
            _no_echo(outcome.line, text, flag)
            assert not (tmp_path / f"o{i}").exists(), (argv, outcome.line)
        shutil.rmtree(tmp_path / f"o{i}", ignore_errors=True)  # examples share tmp_path


_HEADER_FIELDS = [
    "name", "num_classes", "in_channels", "width", "shortcut", "plain", "zero_init_residual",
    "preact", "block", "activation", "shortcut_mode", "shortcut_scale", "branch_scale",
    "gate_bias", "shortcut_dropout", "drop_rate", "norm", "init", "nonlinearity",
    "features_only", "out_indices", "unknown",
]  # fmt: skip
# The other header entry: the input normalisation the net was trained with.
_NORM = {"name": '"digits"', "mean": "[0.5]", "std": "[0.25]"}


@settings(max_examples=max(2, EXAMPLES // 10))
@given(data=st.data())
def test_fuzz_every_weights_header_field(
    edge: Callable[[list[str]], Outcome], tmp_path: Path, data: st.DataObject
) -> None:
    norm_fields = [f"normalization.{k}" for k in _NORM]
    for field in [*_HEADER_FIELDS, "normalization", *norm_fields]:
        raw = data.draw(_JSON_RAW)
        if field.startswith("normalization"):
            items = {**_NORM, field.partition(".")[2]: raw}
            entry = raw if field == "normalization" else _object(items)
            _weights(tmp_path / "w.safetensors", normalization=entry)
        else:
            _weights(tmp_path / "w.safetensors", _header(**{field: raw}))
        outcome = edge(["eval", "--weights", "w.safetensors", "--json", "out.json"])
        (tmp_path / "w.safetensors").unlink()
        if outcome.code == 2:
            _no_echo(outcome.line, raw)
        else:  # the header still describes the file's net (e.g. "-0.0" for an option)
            assert isinstance(outcome.what, torch.nn.Module)
        assert not (tmp_path / "out.json").exists()


def test_fuzzers_stay_within_memory() -> None:
    """Run last in this module: the process never grew past a few GB (allocations refused)."""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gb < 4, peak_gb
