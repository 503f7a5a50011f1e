"""Adding a study is one module and one register() line: a throw-away study proves it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from reslab.checks import NUMBERS, Object, integer, maybe
from reslab.cli import main
from reslab.errors import ConfigError
from reslab.experiments import (
    Flag,
    Study,
    StudyConfig,
    Views,
    get_study,
    list_studies,
    register,
    registry,
)
from reslab.report.figures import FigureSpec, new_figure, styled
from reslab.report.html import Section, table

# --- the whole study: what a new module would hold ------------------------------------------


def _analyse(config: StudyConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    assert records == []  # it plans no runs: nothing is trained
    return {"tiny": {"values": [float(v) for v in range(config.options["knob"])]}}


def _verdict(results: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    values = results["tiny"]["values"]
    return {"text": f"tiny: {len(values)} values, mean {sum(values) / len(values):.1f}"}


@styled
def _draw(results: Mapping[str, Any]) -> Any:
    fig = new_figure(3.0, 2.0)
    fig.add_subplot().plot(results["tiny"]["values"])
    return fig


def _tables(results: Mapping[str, Any]) -> list[Section]:
    rows = [[str(i), f"{v:.1f}"] for i, v in enumerate(results["tiny"]["values"])]
    body = (
        '<section id="tiny"><h2>Tiny values</h2>' + table(["i", "value"], rows, {1}) + "</section>"
    )
    return [Section("tiny", "Tiny values", body)]


TINY = Study(
    name="tiny",
    help="a throw-away study that trains nothing",
    title="Tiny study on {dataset}, knob {knob}, depth {depth}",
    intro="A study made up by the registry test.",
    plan=lambda config: [],
    analyse=_analyse,
    verdict=_verdict,
    views=Views(
        figures=(FigureSpec("tiny_values", "The tiny values.", "Read it left to right.", _draw),),
        tables=_tables,
        results=Object({"tiny": maybe(Object({"values": NUMBERS}))}),
    ),
    depths=(8,),
    flags=(Flag("--knob", "3", "how many values", integer(0, 100)),),
)


@pytest.fixture
def tiny() -> Iterator[Study]:
    saved = dict(registry._STUDIES)
    register(TINY)
    yield TINY
    registry._STUDIES.clear()
    registry._STUDIES.update(saved)


def test_a_registered_study_gets_a_command_a_run_and_a_report(
    tiny: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list_studies()[-1] == "tiny" and get_study("tiny") is tiny
    with pytest.raises(SystemExit):
        main(["tiny", "--help"])
    assert "--knob KNOB" in capsys.readouterr().out

    out = tmp_path / "t"
    assert main(["tiny", "--knob", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny: 0 runs on digits" in printed and "tiny: 4 values, mean 1.5" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "tiny" and saved["tiny"] == {"values": [0.0, 1.0, 2.0, 3.0]}
    assert saved["title"] == "Tiny study on digits, knob 4, depth 8"
    assert saved["config"]["knob"] == 4 and saved["config"]["depths"] == [8]
    html = (out / "report.html").read_text()
    assert '<section id="tiny"><h2>Tiny values</h2>' in html
    assert '<a href="#tiny">Tiny values</a>' in html and 'id="fig-tiny_values"' in html
    assert "A study made up by the registry test." in html
    assert (out / "figures" / "tiny_values.png").is_file()

    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0  # rebuilt from results.json alone
    assert (out / "report.html").read_text() == html


def test_a_study_checks_its_section_when_the_report_is_rebuilt(
    tiny: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results.json").write_text(
        json.dumps({"schema": 1, "experiment": "tiny", "tiny": {"values": "many"}})
    )
    assert main(["report", str(tmp_path)]) == 2
    assert "tiny.values must be a list of numbers" in capsys.readouterr().err


def test_names_are_unique_and_unknown_names_are_one_line() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_study("degradation"))
    with pytest.raises(
        ConfigError, match="unknown experiment 'no-such-study': try degradation, short"
    ):
        get_study("no-such-study")
