"""results.json: one validator, atomic writes, strict JSON, and files of schema 1 still load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_results
from reslab.checks import NUMBERS, Object, maybe
from reslab.errors import ReslabError
from reslab.report.schema import (
    RESULTS_NAME,
    SCHEMA_VERSION,
    load_results,
    new_results,
    provenance,
    validate_results,
    write_results,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
STUDIES = ("degradation", "shortcuts", "gradients", "responses")


def test_missing_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReslabError, match=r"no results\.json in .*reslab degradation --out"):
        load_results(tmp_path)
    with pytest.raises(ReslabError, match=r"no results\.json"):
        load_results(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"experiment": "degradation"}', "schema is missing"),
        ('{"schema": true, "experiment": "degradation"}', "schema must be a positive integer"),
        ('{"schema": 7, "experiment": "degradation"}', "newer reslab"),
        ('{"schema": 1, "experiment": "bogus"}', "experiment must be one of degradation, short"),
        ('{"schema": 1, "experiment": "degradation", "verdict": "yes"}', "verdict must be an obj"),
        ('{"schema": 1, "experiment": "degradation", "config": []}', "config must be an object"),
        (
            '{"schema": 1, "experiment": "degradation", "runs": [{"family": "x", "depth": 2}]}',
            r"runs\[0\]\.family must be 'plain' or 'residual'",
        ),
        (
            '{"schema": 1, "experiment": "degradation", "runs": [{"family": "plain", "depth": '
            '8, "curves": {"step": [1, "two"]}}]}',
            r"runs\[0\]\.curves\.step must be a list of numbers",
        ),
        (
            '{"schema": 1, "experiment": "gradients", "probes": {"gradient_flow": '
            '[{"family": "plain", "depth": 8, "input_grad_norm": "big"}]}}',
            r"probes\.gradient_flow\[0\]\.input_grad_norm must be a list of numbers",
        ),
    ],
)
def test_invalid_results_are_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / RESULTS_NAME).write_text(text)
    with pytest.raises(ReslabError, match=match) as info:
        load_results(tmp_path, experiments=STUDIES)
    assert "\n" not in str(info.value)


def test_any_study_name_is_allowed_when_the_caller_names_none() -> None:
    assert validate_results({"schema": 1, "experiment": "lesion"})["experiment"] == "lesion"
    with pytest.raises(ReslabError, match="experiment must be the name of a study"):
        validate_results({"schema": 1, "experiment": ""})


def test_a_study_checks_its_own_section(tmp_path: Path) -> None:
    check = Object({"lesion": maybe(Object({"error": NUMBERS}))})
    good = {"schema": 1, "experiment": "lesion", "lesion": {"error": [1.0, None]}}
    write_results(tmp_path, good, check=check)
    assert load_results(tmp_path, checks={"lesion": check})["lesion"]["error"] == [1.0, None]
    (tmp_path / RESULTS_NAME).write_text(json.dumps({**good, "lesion": {"error": "x"}}))
    with pytest.raises(ReslabError, match=r"lesion\.error must be a list of numbers"):
        load_results(tmp_path, checks={"lesion": check})
    assert load_results(tmp_path, checks={"other": check})  # another study's check not applied


def test_write_results_converts_arrays_and_non_finite_values(tmp_path: Path) -> None:
    results = synthetic_results(depths=(20, 32), seeds=1, epochs=3)
    results["runs"][0]["curves"]["train_loss"] = np.array([1.0, math.nan, math.inf])
    results["runs"][0]["params"] = np.int64(123)
    path = write_results(tmp_path, results)
    assert path == tmp_path / RESULTS_NAME
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_results(tmp_path)
    assert loaded["runs"][0]["curves"]["train_loss"] == [1.0, None, None]
    assert loaded["runs"][0]["params"] == 123
    json.loads(path.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN/Infinity
    with pytest.raises(ReslabError, match="depth"):
        write_results(tmp_path, {**results, "summary": [{"family": "plain", "depth": "deep"}]})
    assert load_results(tmp_path)["runs"][0]["params"] == 123  # the good file is untouched
    with pytest.raises(TypeError, match="cannot be saved"):
        write_results(tmp_path, {**results, "config": {"when": object()}})


def test_new_results_has_the_common_top_level() -> None:
    results = new_results("degradation", "a title", {"depths": (20, 56), "out": Path("x")})
    assert list(results) == [
        "schema",
        "experiment",
        "title",
        "reslab_version",
        "torch_version",
        "python_version",
        "created",
        "machine",
        "config",
        "verdict",
    ]
    assert results["schema"] == SCHEMA_VERSION == 1
    assert results["config"] == {"depths": [20, 56], "out": "x"}
    assert set(provenance()) <= set(results)
    validate_results(results)


@pytest.mark.parametrize("study", ["shortcuts", "responses"])
def test_files_written_before_the_redesign_still_load(study: str) -> None:
    results = load_results(FIXTURES / f"results_v1_{study}.json", experiments=STUDIES)
    assert results["experiment"] == study and results["schema"] == 1
