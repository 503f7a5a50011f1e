"""``reslab report`` trusts nothing in results.json (issue 20, class 6): the file is parsed with
bounds and checked whole before anything is drawn; a report is written whole or not at all."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import synthetic_results
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.experiments import get_study, list_studies
from reslab.report.schema import RESULTS_NAME, load_results

FIXTURES = Path(__file__).parents[1] / "fixtures"
_SLOT = "\u0000slot\u0000"  # a placeholder string, replaced by a hostile JSON text

# Hostile JSON texts, each put at a leaf or in place of a container.
HOSTILE = {
    "401-digit int": "1" + "0" * 400,
    "5001-digit int": "9" * 5001,
    "100,000 nested arrays": "[" * 100_000 + "]" * 100_000,
    "40 nested objects": '{"a":' * 40 + "1" + "}" * 40,
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e999": "1e999",
    "1e308": "1e308",
    "-1e99": "-1e99",
    "1e-320": "1e-320",
    "2**63": str(2**63),
    "-1": "-1",
    "0": "0",
    "true": "true",
    "null": "null",
    "empty list": "[]",
    "empty object": "{}",
    "list of lists": "[[1, 2], [3]]",
    "long string": json.dumps("x" * 200_000),
    "escapes": json.dumps("\x1b[31m[/]red\u202e<b>&amp;"),
}


def real_results() -> dict[str, dict[str, Any]]:
    """Real results files: the saved shortcuts and responses studies, a degradation study with
    probes, and every study's own section (the declarations' own valid examples)."""
    sections = Path(__file__).parents[1] / "experiments" / "test_result_sections.py"
    spec = importlib.util.spec_from_file_location("result_sections", sections)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the sections the study tests declare valid
    degradation = synthetic_results(depths=(8, 14), seeds=1, epochs=3)
    bases = {
        "shortcuts": json.loads((FIXTURES / "results_v1_shortcuts.json").read_text()),
        "responses": json.loads((FIXTURES / "results_v1_responses.json").read_text()),
        "degradation": degradation,
    }
    for name, (section, _) in module._EDITS.items():
        SECTIONS[name] = set(section)
        bases[name] = {**copy.deepcopy(degradation), "experiment": name, **copy.deepcopy(section)}
    return bases


SECTIONS: dict[str, set[str]] = {}  # a study's own keys, by the name of its base
BASES = real_results()


def places(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every leaf and container below ``obj``, once per shape: a list's first item stands for
    every item (``runs[0].curves.epoch[0]`` for all runs' epochs), and the last for the rest
    when it differs in type."""
    if path:
        yield path
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from places(value, (*path, key))
    elif isinstance(obj, list) and obj:
        yield from places(obj[0], (*path, 0))
        if type(obj[-1]) is not type(obj[0]):
            yield from places(obj[-1], (*path, len(obj) - 1))


def mutated(base: dict[str, Any], path: tuple[Any, ...], hostile: str | None) -> str:
    """``base`` as JSON text with the value at ``path`` replaced by ``hostile`` (a JSON text),
    or removed (``None``)."""
    results = copy.deepcopy(base)
    parent = results
    for key in path[:-1]:
        parent = parent[key]
    if hostile is None:
        del parent[path[-1]]
        return json.dumps(results)
    parent[path[-1]] = _SLOT
    return json.dumps(results).replace(json.dumps(_SLOT), hostile, 1)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


STUDIES = {name: get_study(name) for name in list_studies()}
CHECKS = {n: s.look().results for n, s in STUDIES.items() if s.look().results}
# A study's own section is mutated in its base; the common parts in the three full files.
PLACES = [
    (b, p)
    for b, base in BASES.items()
    for p in places(base)
    if b not in SECTIONS or p[0] in SECTIONS[b]
]
CASES = [(b, p, h) for b, p in PLACES for h in [*HOSTILE, None]]


@pytest.mark.slow  # 7,128 files read (about 10 s of CPU); the property test below draws from them
def test_every_mutation_is_read_or_refused_in_one_line(tmp_path: Path) -> None:
    """At every leaf and container of every real results file, each hostile value: the reader
    returns or refuses in one short line, never a traceback (the check before any drawing)."""
    path = tmp_path / RESULTS_NAME
    outcomes = {"read": 0, "refused": 0}
    for base, where in PLACES:
        slot = json.dumps(_SLOT)
        slotted = mutated(BASES[base], where, slot)  # one copy per place, then each value
        texts = [slotted.replace(slot, value, 1) for value in HOSTILE.values()]
        texts.append(mutated(BASES[base], where, None))
        for hostile, text in zip([*HOSTILE, None], texts, strict=True):
            # A new file each time: ext4 flushes a file truncated and rewritten when it is
            # closed (auto_da_alloc), 3 ms a write here against 0.2 ms for a new one.
            path.unlink(missing_ok=True)
            path.write_text(text, "utf-8")
            try:
                load_results(path, experiments=tuple(STUDIES), checks=CHECKS)
                outcomes["read"] += 1
            except ReslabError as exc:
                message = str(exc)
                assert "\n" not in message and len(message) < 600, (base, where, hostile, message)
                outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"]  # both kinds of member were tried


@pytest.fixture
def small_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import reslab.report.figures as figures

    monkeypatch.setattr(figures, "DPI", 10)  # the same figures, drawn fast


Report = Callable[[str], tuple[int, str, dict[str, bytes], dict[str, bytes]]]


@pytest.fixture
def report(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_figures: None) -> Report:
    """``report(text)``: `reslab report` on a study folder whose results.json is ``text`` and
    which holds a previous report; returns the exit code, stderr, files before and after."""

    def run(text: str) -> tuple[int, str, dict[str, bytes], dict[str, bytes]]:
        folder = tmp_path / f"study{len(list(tmp_path.iterdir()))}"
        (folder / "figures").mkdir(parents=True)
        (folder / "report.html").write_text("the previous report")
        (folder / "figures" / "error_curves.png").write_bytes(b"the previous figure")
        (folder / RESULTS_NAME).write_text(text, "utf-8")
        before = snapshot(folder)
        code = main(["report", str(folder)])
        return code, capsys.readouterr().err, before, snapshot(folder)

    return run


def check_outcome(code: int, err: str, before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Exit 2, one line and nothing written; or exit 0 and a whole new report."""
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("reslab: error: "), err
        assert after == before
        return
    assert code == 0, err
    page = after["report.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    figures = [data for name, data in after.items() if name.startswith("figures/")]
    assert all(data.startswith(b"\x89PNG") for data in figures)  # drawn now, none stale
    assert page.count("<img") == len(figures)


@pytest.mark.parametrize(
    "hostile", ["401-digit int", "5001-digit int", "100,000 nested arrays", "Infinity", "1e308"]
)
def test_a_hostile_number_or_nesting_is_one_line_and_writes_nothing(
    hostile: str, report: Report
) -> None:
    """Fails before the bounded parser: OverflowError after two figures were written,
    ValueError (4,300 digits), RecursionError, "Axis limits cannot be NaN or Inf"."""
    base = BASES["shortcuts"]
    text = mutated(base, ("summary", 0, "test_error_mean"), HOSTILE[hostile])
    code, err, before, after = report(text)
    assert code == 2, err
    check_outcome(code, err, before, after)


@pytest.mark.parametrize(
    ("field", "hostile"),
    [
        ("test_error_std", "-1e99"),  # matplotlib: "'yerr' must not contain negative values"
        ("clean_train_error_std", "-1"),
        ("test_error_std", "2**63"),  # OverflowError: Python int too large to convert to C long
        ("test_error_mean", "2**63"),
    ],
)
def test_a_negative_spread_or_an_int_past_2_53_is_one_line(
    field: str, hostile: str, report: Report
) -> None:
    """Found by the property test below: both drew half a report, then raised."""
    text = mutated(BASES["shortcuts"], ("summary", 0, field), HOSTILE[hostile])
    code, err, before, after = report(text)
    assert code == 2, err
    assert field in err
    check_outcome(code, err, before, after)


@settings(max_examples=max(8, settings.default.max_examples // 4))
@given(case=st.sampled_from(CASES))
def test_report_is_whole_or_nothing_for_any_mutation(
    case: tuple[str, tuple[Any, ...], str | None], report: Report
) -> None:
    base, where, hostile = case
    check_outcome(*report(mutated(BASES[base], where, HOSTILE.get(hostile or ""))))


def test_what_a_study_writes_the_report_reads(tmp_path: Path) -> None:
    """A diverged number (1e150, inf) is written as null, so the bounded reader takes it."""
    from reslab.report.schema import write_results

    results = copy.deepcopy(BASES["shortcuts"])
    results["runs"][0]["curves"]["train_loss"][0] = 1e150
    results["runs"][0]["final_test_error"] = float("inf")
    write_results(tmp_path, results)
    read = load_results(tmp_path)
    assert read["runs"][0]["curves"]["train_loss"][0] is None
    assert read["runs"][0]["final_test_error"] is None
