"""The Python API's edge: every function ``reslab`` exports refuses an argument of the wrong
type in one line, an ArgumentError, before it runs (issue 20, class 7; on main these ended in
an AttributeError or TypeError from deep inside, e.g. ``'str' object has no attribute 'out'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import reslab
from reslab.errors import ArgumentError, ConfigError, ReslabError
from reslab.weights import Normalization

MODULE = nn.Linear(1, 1)
STUDY = reslab.StudyConfig(depths=(8, 14), seeds=(0,))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(n: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, list | tuple) and (n is None or len(v) == n)
                      and all(map(_int, v)))  # fmt: skip


def _or_none(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or accepts(v)


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (bool not in types and isinstance(v, bool))


def _str_map(values: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, Mapping) and all(isinstance(k, str) and values(x) for k, x in v.items())
    )


def _strs(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)


_PATH = _is(str, Path)
_NUMBER = lambda v: _is(int, float)(v)  # noqa: E731
# What each argument accepts, written out here from the documented signatures (the oracle the
# checker is tested against), and valid values for the rest of each call.
ACCEPTS: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("create_model", "name"): _is(str),
    ("create_model", "features_only"): _is(bool),
    ("create_model", "out_indices"): _or_none(lambda v: _int(v) or _ints()(v)),
    ("count_macs", "model"): _is(nn.Module),
    ("count_macs", "input_size"): _or_none(_ints()),
    ("count_params", "model"): _is(nn.Module),
    ("list_models", "pattern"): _or_none(_is(str)),
    ("load_model", "path"): _PATH,
    ("load_weights", "model"): _is(nn.Module),
    ("load_weights", "path"): _PATH,
    ("load_weights", "strict"): _is(bool),
    ("save_weights", "model"): _is(nn.Module),
    ("save_weights", "path"): _PATH,
    ("save_weights", "metadata"): _or_none(_str_map(_is(str))),
    ("save_weights", "normalization"): _or_none(_is(Normalization)),
    ("fit", "config"): _or_none(_is(reslab.TrainConfig)),
    ("fit", "resume"): _is(bool),
    ("fit", "resume_from"): _or_none(_PATH),
    ("fit", "explicit"): _or_none(_strs),
    ("fit", "overrides"): _or_none(_str_map(lambda _: True)),
    ("run_study", "config"): _is(reslab.StudyConfig),
    ("run_study", "log"): callable,
    ("load_dataset", "name"): _is(str),
    ("load_dataset", "data_dir"): _or_none(_PATH),
    ("load_dataset", "download"): _is(bool),
    ("load_dataset", "image_size"): _or_none(_int),
    ("load_dataset", "synthetic_shape"): _ints(3),
    ("load_dataset", "synthetic_size"): _ints(2),
    ("load_dataset", "num_classes"): _int,
    ("load_dataset", "seed"): _int,
    ("Residual", "branch"): _is(nn.Module),
    ("Residual", "shortcut"): _or_none(_is(nn.Module)),
    ("Residual", "plain"): _is(bool),
    ("ResidualMLP", "in_features"): _int,
    ("ResidualMLP", "hidden_features"): _or_none(_int),
    ("ResidualMLP", "dropout"): _NUMBER,
    ("ResidualMLP", "zero_init"): _is(bool),
}
VALID: dict[str, dict[str, Any]] = {
    "create_model": {"name": "resnet8"},
    "count_macs": {"model": MODULE},
    "count_params": {"model": MODULE},
    "list_models": {},
    "load_model": {"path": "w.safetensors"},
    "load_weights": {"model": MODULE, "path": "w.safetensors"},
    "save_weights": {"model": MODULE, "path": "w.safetensors"},
    "fit": {},
    "run_study": {"config": STUDY},
    "load_dataset": {"name": "digits"},
    "Residual": {"branch": MODULE},
    "ResidualMLP": {"in_features": 4},
}
VALUES = [None, 0, 3, -1, 2.5, True, "resnet8", b"bytes", [1, 2], (3, 32, 32), ["a"], {"a": "b"},
          {1: 2}, object(), Path("p"), MODULE, print, STUDY, reslab.TrainConfig()]  # fmt: skip


class Reached(Exception):
    """The call got past the edge."""


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every exported function's body replaced: a test here never trains or reads a file."""

    def body(*args: Any, **kwargs: Any) -> None:
        raise Reached

    for name in VALID:
        obj = getattr(reslab, name)
        monkeypatch.setattr(obj.__init__ if isinstance(obj, type) else obj, "__wrapped__", body)


def _call(export: str, **changes: Any) -> None:
    getattr(reslab, export)(**{**VALID[export], **changes})


def test_the_table_names_every_export() -> None:
    functions = {n for n in reslab.__all__ if callable(getattr(reslab, n))}
    configs = {"StudyConfig", "TrainConfig", "ReslabError"}  # check their own fields
    assert {name for name, _ in ACCEPTS} == functions - configs == set(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_arguments_pass_the_edge(stubbed: None, name: str) -> None:
    with pytest.raises(Reached):
        _call(name)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: reslab.fit("resnet20"), "fit() argument config must be TrainConfig, got str"),
        (lambda: reslab.run_study({"experiment": "lesion"}), "run_study() argument config"),
        (lambda: reslab.count_params("resnet20"), "count_params() argument model must be Module"),
        (lambda: reslab.save_weights(None, "w.safetensors"), "save_weights() argument model"),
        (lambda: reslab.load_dataset(10), "load_dataset() argument name must be str, got int"),
        (lambda: reslab.count_macs(MODULE, 32), "input_size must be Sequence[int], got int 32"),
        (lambda: reslab.fit(overrides={"lr": 1}, resume="yes"), "argument resume must be bool"),
        (lambda: reslab.fit(reslab.TrainConfig(), 1), "fit(): too many positional arguments"),
    ],
)
def test_a_wrong_type_is_one_line_before_anything_runs(call: Callable[[], Any], words: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        call()
    assert isinstance(caught.value, ReslabError) and isinstance(caught.value, TypeError)
    assert words in str(caught.value) and "\n" not in str(caught.value)


@given(argument=st.sampled_from(sorted(ACCEPTS)), value=st.sampled_from(VALUES))
def test_any_wrong_type_for_any_argument_is_refused_at_the_edge(
    stubbed: None, argument: tuple[str, str], value: Any
) -> None:
    name, param = argument
    assume(not ACCEPTS[argument](value))
    with pytest.raises(ArgumentError) as caught:
        _call(name, **{param: value})
    message = str(caught.value)
    assert message.startswith(f"{name}() argument {param}") and "must be" in message
    assert "\n" not in message and len(message) < 300


def test_an_unknown_override_is_refused_with_the_closest_setting(tmp_path: Path) -> None:
    """On main ``fit(config, overrides={"epochz": 1})`` trained 30 epochs, the key ignored."""
    config = reslab.TrainConfig.resolve(model="resnet8", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="unknown setting 'epochz'; did you mean 'epochs'"):
        reslab.fit(config, overrides={"epochz": 1})
    with pytest.raises(ConfigError, match=r"did you mean 'threads'.*valid keys: data_dir, "):
        reslab.fit(resume_from=tmp_path / "run", overrides={"thread": 1})
    assert not (tmp_path / "run").exists()
