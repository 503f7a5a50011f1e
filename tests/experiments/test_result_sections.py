"""Each study declares its results.json section (``RESULTS`` on its registry record): a valid
section passes and every breakage of it is refused in one line, before a report is drawn."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reslab.checks import Invalid
from reslab.errors import ReslabError
from reslab.experiments import get_study
from reslab.report.schema import load_results, write_results

# --- valid sections and their breakages ----------------------------------------------------------

_NET = {"family": "residual", "depth": 20, "shortcut": "A", "label": "resnet-20"}
_LESION = {"lesion": {"chance_error": 90.0, "nets": [{
    **_NET, "intact_error": 8.0, "block": ["b0", "b1"], "stage": [1, 2],
    "shape_preserving": [False, True], "deleted_error": [50.0, None],
    "deleted": [{"k": 1, "errors": [9.0, None]}], "swapped": [],
}]}}  # fmt: skip
_LANDSCAPE = {"landscape": {"settings": {"grid": 2}, "nets": [{
    **_NET, "grid": [-1.0, 1.0], "curve_alpha": [0.0], "curve_loss": [1.0], "curve_error": [2],
    "ring_loss": [None], "loss": [[1.0, 2.0], [3.0, None]], "error": [[1, 2], [3, 4]],
    "rise": 0.5, "hessian_ratio": None,
}]}}  # fmt: skip
_SHATTERING = {"shattering": {
    "mlp": {"positions": [0.0, 0.5], "nets": [{**_NET, "lag1": 0.9, "correlation": [1.0]}]},
    "summary": [{"kind": "mlp", **_NET, "n_seeds": 1, "lag1_mean": 0.9, "correlation_mean": []}],
}}  # fmt: skip
_ABLATION = {"ablation": {"depth": 56, "shortcut": "A"}, "summary": [{
    "variant": "identity", "label": "x", "fig": "a", "on_shortcut": "-", "on_f": "-",
    "paper_error": "6.61", "tables": [1, 2], "params": 850000,
}]}  # fmt: skip

Edit = Callable[[dict[str, Any]], Any]
_EDITS: dict[str, tuple[dict[str, Any], list[Edit]]] = {
    "lesion": (
        _LESION,
        [
            lambda r: r.update(lesion=[]),
            lambda r: r["lesion"].update(chance_error="high"),
            lambda r: r["lesion"].update(nets={}),
            lambda r: r["lesion"]["nets"].append(3),
            lambda r: r["lesion"]["nets"][0].update(family="resnet"),
            lambda r: r["lesion"]["nets"][0].update(depth=0),
            lambda r: r["lesion"]["nets"][0].update(shortcut=1),
            lambda r: r["lesion"]["nets"][0].update(intact_error=True),
            lambda r: r["lesion"]["nets"][0].update(block=["b0", 1]),
            lambda r: r["lesion"]["nets"][0].pop("stage"),
            lambda r: r["lesion"]["nets"][0].update(stage=[1, True]),
            lambda r: r["lesion"]["nets"][0].update(stage=[1]),
            lambda r: r["lesion"]["nets"][0].update(shape_preserving=[0, 1]),
            lambda r: r["lesion"]["nets"][0].update(shape_preserving=[True] * 3),
            lambda r: r["lesion"]["nets"][0].update(deleted_error=[1.0]),
            lambda r: r["lesion"]["nets"][0].update(deleted_error=None),
            lambda r: r["lesion"]["nets"][0].update(deleted=[{"k": 0, "errors": []}]),
            lambda r: r["lesion"]["nets"][0].update(swapped=[{"k": 2}]),
            lambda r: r["lesion"]["nets"][0].update(swapped=[[]]),
        ],
    ),
    "landscape": (
        _LANDSCAPE,
        [
            lambda r: r.update(landscape="x"),
            lambda r: r["landscape"].update(settings=None),
            lambda r: r["landscape"].update(settings=[]),
            lambda r: r["landscape"]["nets"][0].update(depth="20"),
            lambda r: r["landscape"]["nets"][0].pop("ring_loss"),
            lambda r: r["landscape"]["nets"][0].update(curve_alpha=["a"]),
            lambda r: r["landscape"]["nets"][0].update(loss=[[1.0, 2.0]]),
            lambda r: r["landscape"]["nets"][0].update(error=[[1, 2], [3]]),
            lambda r: r["landscape"]["nets"][0].update(error=[[1, 2], "ab"]),
            lambda r: r["landscape"]["nets"][0].update(loss=None),
            lambda r: r["landscape"]["nets"][0].update(curvature="flat"),
            lambda r: r["landscape"]["nets"][0].update(lambda_min=[1.0]),
        ],
    ),
    "shattering": (
        _SHATTERING,
        [
            lambda r: r.update(shattering=1),
            lambda r: r["shattering"].update(mlp=[]),
            lambda r: r["shattering"]["mlp"].pop("positions"),
            lambda r: r["shattering"]["mlp"]["nets"][0].update(lag1="0.9"),
            lambda r: r["shattering"]["mlp"]["nets"][0].update(correlation=None),
            lambda r: r["shattering"]["mlp"]["nets"][0].update(gradients={}),
            lambda r: r["shattering"]["mlp"]["nets"][0].update(family=None),
            lambda r: r["shattering"]["summary"][0].update(kind="other"),
            lambda r: r["shattering"]["summary"][0].update(n_seeds="2"),
            lambda r: r["shattering"]["summary"][0].pop("correlation_mean"),
            lambda r: r["shattering"].update(summary=[None]),
        ],
    ),
    "ablation": (
        _ABLATION,
        [
            lambda r: r.pop("ablation"),
            lambda r: r.update(ablation=None),
            lambda r: r["ablation"].update(depth=0),
            lambda r: r["ablation"].update(depth="56"),
            lambda r: r["summary"][0].pop("fig"),
            lambda r: r["summary"][0].update(label=None),
            lambda r: r["summary"][0].update(tables=[]),
            lambda r: r["summary"][0].update(tables=[3]),
            lambda r: r["summary"][0].update(tables="1"),
            lambda r: r["summary"][0].update(params="many"),
            lambda r: r.update(summary=[1]),
        ],
    ),
}

_CASES = [(study, i) for study, (_, edits) in _EDITS.items() for i in range(-1, len(edits))]


def _verdict(check: Callable[[dict[str, Any]], None], results: dict[str, Any]) -> str | None:
    """None when ``check`` accepts ``results``, else its message (which must be one line)."""
    try:
        check(results)
    except Invalid as exc:
        assert "\n" not in str(exc)
        return str(exc)
    return None


def _declared(study: str) -> Any:
    spec = get_study(study).look().results
    assert spec is not None
    return spec


@pytest.mark.parametrize(("study", "edit"), _CASES)
def test_the_declaration_accepts_the_section_and_refuses_each_breakage(
    study: str, edit: int
) -> None:
    """edit -1 is the valid section; every other is one breakage."""
    results = {"schema": 1, "experiment": study, **copy.deepcopy(_EDITS[study][0])}
    if edit >= 0:
        _EDITS[study][1][edit](results)
    declared = _verdict(lambda r: _declared(study).check(r, ""), results)
    assert (declared is None) == (edit < 0), declared


def test_an_absent_optional_section_passes() -> None:
    for study in ("lesion", "landscape", "shattering"):
        _declared(study).check({"schema": 1}, "")


def test_a_boolean_depth_is_not_a_depth() -> None:
    """The hand-written check it replaced took ``"depth": true`` (isinstance(True, int))."""
    results = {**copy.deepcopy(_ABLATION), "ablation": {"depth": True}}
    with pytest.raises(Invalid, match=r"ablation\.depth must be a positive integer"):
        _declared("ablation").check(results, "")


def test_write_and_load_take_a_declaration(tmp_path: Path) -> None:
    lesion = _declared("lesion")
    good = {"schema": 1, "experiment": "lesion", **copy.deepcopy(_LESION)}
    write_results(tmp_path, good, check=lesion)
    assert load_results(tmp_path, checks={"lesion": lesion})["lesion"] == good["lesion"]
    good["lesion"]["nets"][0]["deleted_error"] = [1.0]
    with pytest.raises(ReslabError, match=r"lesion\.nets\[0\]\.deleted_error must have one entry"):
        write_results(tmp_path, good, check=lesion)
