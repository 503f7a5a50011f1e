"""StudyConfig: every bad setting is one clear line; repeats are dropped; options stay flat."""

from __future__ import annotations

import dataclasses

import pytest

from reslab.errors import ReslabError
from reslab.experiments import StudyConfig, get_study
from reslab.experiments.runner import BF16_CAVEAT, precision_line, train_config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depths": (20,)}, "two or more --depths"),
        ({"depths": ()}, "at least one depth"),
        ({"depths": (21, 56)}, r"depth 21 is not 6n\+2"),
        ({"seeds": ()}, "at least one seed"),
        ({"experiment": "nope"}, "unknown experiment 'nope': try degradation, shortcuts"),
        ({"jobs": 0}, "--jobs must be a positive integer, at most"),
        ({"probe_steps": (0, -5)}, r"--probe-steps\[1\] must be an integer, zero or positive"),
        ({"families": ("plain", "deep")}, "family 'deep' is not one of plain, residual"),
        ({"experiment": "shortcuts", "depths": (20,), "variants": ("plain", "D")}, "variant 'D'"),
        ({"precision": "fp16"}, "--precision must be one of auto, fp32, bf16, got 'fp16'"),
    ],
)
def test_bad_study_configs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ReslabError, match=message) as info:
        StudyConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_repeats_are_dropped_and_variants_normalised() -> None:
    config = StudyConfig(depths=(20, 56, 20), seeds=(1, 0, 1), probe_steps=(30, 0, 30))
    assert (config.depths, config.seeds, config.probe_steps) == ((20, 56), (1, 0), (0, 30))
    shortcuts = StudyConfig(experiment="shortcuts", depths=(20,), variants=("plain", "b"))
    assert shortcuts.variants == ("plain", "B")


def test_to_json_is_every_field_with_options_flat() -> None:
    config = StudyConfig(options={"grid": 21})
    saved = config.to_json()
    fields = [f.name for f in dataclasses.fields(StudyConfig) if f.name != "options"]
    assert list(saved) == [*fields, "grid"]
    assert saved["grid"] == 21 and saved["depths"] == (20, 32, 56)
    assert "options" not in StudyConfig().to_json()  # results.json's config as before


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_the_precision_reaches_every_run_and_the_banner_says_it(precision: str) -> None:
    # One setting for every run of a study (issue 22: bf16 where the CPU runs it natively):
    # each run's trainer config carries it, and the banner says what it resolves to here.
    config = StudyConfig(precision=precision, device="cpu")
    specs = get_study("degradation").plan(config)
    assert {train_config(config, spec, 1).precision for spec in specs} == {precision}
    line = precision_line(config)
    assert line.startswith(precision if precision != "auto" else ("fp32", "bf16"))
    assert ("(auto: " in line) == (precision == "auto")
    assert (BF16_CAVEAT in line) == line.startswith("bf16")  # bf16 moved a plain-56's training
