"""``reslab <study>`` comes from the registry: the flags and defaults of before, no cut plurals."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reslab.cli import build_parser, main
from reslab.errors import ConfigError
from reslab.experiments import StudyConfig, get_study, list_studies

_COMMON: dict[str, Any] = {
    "dataset": "digits",
    "data_dir": None,
    "recipe": None,
    "epochs": None,
    "steps": None,
    "batch_size": None,
    "lr": None,
    "width": 1.0,
    "device": "auto",
    "jobs": None,
    "cluster": "local",
    "ray_address": None,
}
# Each study's own flags and defaults as reslab 0.1.0 (before the registry) parsed them.
BEFORE: dict[str, dict[str, Any]] = {
    "degradation": {"depths": "20,32,56", "seeds": "0,1", "shortcut": "A", "probe_steps": "0"},
    "shortcuts": {"depths": "56", "seeds": "0,1", "variants": "plain,A,B,C"},
    "gradients": {"depths": "20,56", "seeds": "0", "shortcut": "A", "probe_steps": "0,10,30"},
    "responses": {"depths": "20,56", "seeds": "0", "shortcut": "A"},
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_study_keeps_its_flags_and_defaults(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _captured(monkeypatch, [name]).to_json()
    assert config.pop("pack") is None  # --pack/--no-pack: a switch (default: on CUDA only)
    for key, text in {**_COMMON, **BEFORE[name], "out": f"runs/{name}"}.items():
        value = config[key]
        assert (",".join(map(str, value)) if isinstance(value, list | tuple) else value) == text
    one = "--depth" if get_study(name).one_depth else "--depths"
    flags = [
        one if k == "depths" else f"--{k.replace('_', '-')}" for k in (*_COMMON, *BEFORE[name])
    ]
    for flag in flags:  # every flag still takes a value
        assert build_parser().parse_args([name, flag, "7"])


@pytest.mark.parametrize("name", list_studies())
def test_python_gets_exactly_what_the_command_line_gets(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StudyConfig(experiment=s) is `reslab s`'s config, for every registered study."""
    assert _captured(monkeypatch, [name]).to_json() == StudyConfig(experiment=name).to_json()
    out = "elsewhere/s"
    given = _captured(monkeypatch, [name, "--out", out, "--seeds", "3"])
    assert given.to_json() == StudyConfig(experiment=name, out=out, seeds=(3,)).to_json()


@pytest.mark.parametrize("name", list_studies())
def test_print_config_prints_the_resolved_config_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    assert main([name, "--out", str(out), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(StudyConfig(experiment=name, out=str(out)).to_json()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [s for s in list_studies() if get_study(s).one_depth])
def test_a_one_depth_study_takes_depth_and_says_so(
    name: str, tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    # The flag is --depth, singular, in every such study; --depths means several everywhere.
    assert "unrecognized arguments: --depths" in cli_error([name, "--depths", "20"])
    line = cli_error([name, "--depth", "20,56", "--out", str(tmp_path / "s")])
    assert "--depth takes one depth" in line
    with pytest.raises(ConfigError, match="takes nets of one depth"):
        StudyConfig(experiment=name, depths=(20, 56))
    assert not (tmp_path / "s").exists()


def test_subcommands_are_the_registered_studies_in_order() -> None:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    studies = ["degradation", "shortcuts", "gradients", "responses"]
    assert list(sub.choices)[: len(list_studies()) + 1] == [*list_studies(), "report"]
    assert list(list_studies())[:4] == studies  # the studies of issue 12 come after these


def _captured(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> StudyConfig:
    seen: list[StudyConfig] = []
    monkeypatch.setattr("reslab.experiments.run_study", lambda config: seen.append(config))
    assert main(argv) == 0
    (config,) = seen
    return config


def test_default_command_builds_the_documented_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _captured(monkeypatch, ["degradation"])
    expected = StudyConfig(depths=(20, 32, 56), seeds=(0, 1), probe_steps=(0,))
    assert config.to_json() == expected.to_json()
    gradients = _captured(monkeypatch, ["gradients", "--shortcut", "b", "--probe-steps", "5,0"])
    assert (gradients.shortcut, gradients.probe_steps, gradients.seeds) == ("B", (0, 5), (0,))
    shortcuts = _captured(monkeypatch, ["shortcuts", "--variants", "plain, a", "--depth", "20"])
    assert shortcuts.variants == ("plain", "A")
    assert {s.depth for s in get_study("shortcuts").plan(shortcuts)} == {20}


@pytest.mark.parametrize("name", ["gradients", "responses"])
def test_probe_studies_plan_every_seed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # They used to train and probe the first seed only.
    config = _captured(monkeypatch, [name, "--depths", "8", "--seeds", "0,1,2"])
    specs = get_study(name).plan(config)
    assert sorted((s.family, s.seed) for s in specs) == [
        (family, seed) for family in ("plain", "residual") for seed in (0, 1, 2)
    ]
