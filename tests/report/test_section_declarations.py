"""Each study's hand-written check of its results.json section, as a declaration: the same
sections pass and the same broken ones are refused (issue: one validation mechanism)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reslab.checks import (
    NUMBER,
    NUMBER_OR_NULL,
    NUMBERS,
    TEXT,
    Is,
    ListOf,
    Object,
    Spec,
    at_least,
    is_int,
    maybe,
    objects,
    one_of,
)
from reslab.errors import ReslabError
from reslab.experiments import ablation, landscape, lesion, shattering
from reslab.report.schema import FAMILY_DEPTH, Validator, load_results, write_results

# --- the declarations (as each study would hold them) ---------------------------------------

LESION = Object({"lesion": maybe(Object({
    "chance_error": maybe(NUMBER),
    "nets": objects({
        **FAMILY_DEPTH,
        "intact_error": maybe(NUMBER),
        "block": ListOf(TEXT, "must be a list of block names"),
        "stage": ListOf(Is(is_int, ""), "must be a list of integers", length="block",
                        length_problem="block, stage and shape_preserving must have one length"),
        "shape_preserving": ListOf(
            Is(lambda v: isinstance(v, bool), ""), "must be a list of true/false", length="block",
            length_problem="block, stage and shape_preserving must have one length"),
        "deleted_error": ListOf(NUMBER_OR_NULL, "must be a list of numbers", length="block",
                                length_problem="must have one entry per block ({n})"),
        **{curve: objects({"k": at_least(1, "must be a positive integer"), "errors": NUMBERS})
           for curve in ("deleted", "swapped")},
    }),
}))})  # fmt: skip

_ROWS = ListOf(
    ListOf(NUMBER_OR_NULL, "must be a list of numbers", length="grid",
           length_problem="must have one value per grid value"),
    "must be a list of rows, one per grid value", length="grid",
)  # fmt: skip
_SCALARS = "loss_origin error_origin ring_radius rise curvature nonconvex cosine scan_time"
LANDSCAPE = Object({"landscape": maybe(Object({
    "settings": maybe(Object({}), null=False),
    "nets": objects({
        **FAMILY_DEPTH,
        **{key: NUMBERS for key in ("grid", "curve_alpha", "curve_loss", "curve_error")},
        "ring_loss": NUMBERS,
        "loss": _ROWS,
        "error": _ROWS,
        **{key: maybe(NUMBER) for key in _SCALARS.split()},
        **{key: maybe(NUMBER) for key in ("hessian_ratio", "lambda_max", "lambda_min")},
    }),
}))})  # fmt: skip

SHATTERING = Object({"shattering": maybe(Object({
    **{kind: maybe(Object({
        "positions": NUMBERS,
        "nets": objects({**FAMILY_DEPTH, "lag1": maybe(NUMBER), "correlation": NUMBERS,
                         "gradients": maybe(NUMBERS)}),
    })) for kind in shattering.KINDS},
    "summary": objects({
        "kind": one_of(shattering.KINDS),
        **FAMILY_DEPTH,
        **{key: maybe(NUMBER) for key in ("lag1_mean", "lag1_std", "n_seeds")},
        "correlation_mean": NUMBERS,
    }),
}))})  # fmt: skip

ABLATION = Object({
    "ablation": Object({"depth": at_least(1, "must be a positive integer")},
                       "must be an object with the study's depth and shortcut option"),
    "summary": objects({
        **{key: TEXT for key in ("variant", "label", "fig", "on_shortcut", "on_f", "paper_error")},
        "tables": ListOf(one_of((1, 2)), "must be a list of table numbers, 1 and/or 2",
                         nonempty=True),
        "params": maybe(NUMBER),
    }),
})  # fmt: skip

# --- valid sections and their breakages ----------------------------------------------------------

_NET = {"family": "residual", "depth": 20, "shortcut": "A"}
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
    "summary": [{"kind": shattering.KINDS[0], **_NET, "lag1_mean": 0.9, "correlation_mean": []}],
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
_SPECS: dict[str, tuple[Spec, Callable[..., None]]] = {
    "lesion": (LESION, lesion.check_results),
    "landscape": (LANDSCAPE, landscape.check_results),
    "shattering": (SHATTERING, shattering.check_results),
    "ablation": (ABLATION, ablation.check_results),
}
_CASES = [(study, i) for study, (_, edits) in _EDITS.items() for i in range(-1, len(edits))]


def _verdict(check: Callable[[dict[str, Any]], None], results: dict[str, Any]) -> str | None:
    """None when ``check`` accepts ``results``, else its message (which must be one line)."""
    try:
        check(results)
    except ReslabError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    return None


@pytest.mark.parametrize(("study", "edit"), _CASES)
def test_the_declaration_judges_as_the_hand_written_check(study: str, edit: int) -> None:
    """edit -1 is the valid section; every other is one breakage, refused by both."""
    spec, hand_written = _SPECS[study]
    results = {"schema": 1, "experiment": study, **copy.deepcopy(_EDITS[study][0])}
    if edit >= 0:
        _EDITS[study][1][edit](results)
    declared = _verdict(lambda r: Validator("r").run(spec, r, ""), results)
    by_hand = _verdict(lambda r: hand_written(r, Validator("r")), results)
    assert (declared is None) == (by_hand is None) == (edit < 0), (declared, by_hand)


def test_an_absent_optional_section_passes_both() -> None:
    for study in ("lesion", "landscape", "shattering"):
        spec, hand_written = _SPECS[study]
        Validator("r").run(spec, {"schema": 1}, "")
        hand_written({"schema": 1}, Validator("r"))


def test_a_known_difference_the_declaration_refuses_a_boolean_depth() -> None:
    """ablation.check_results takes ``"depth": true`` (isinstance(True, int)); at_least does not."""
    results = {**copy.deepcopy(_ABLATION), "ablation": {"depth": True}}
    ablation.check_results(results, Validator("r"))
    with pytest.raises(ReslabError, match=r"ablation\.depth must be a positive integer"):
        Validator("r").run(ABLATION, results, "")


def test_write_and_load_take_a_declaration(tmp_path: Path) -> None:
    good = {"schema": 1, "experiment": "lesion", **copy.deepcopy(_LESION)}
    write_results(tmp_path, good, check=LESION)
    assert load_results(tmp_path, checks={"lesion": LESION})["lesion"] == good["lesion"]
    good["lesion"]["nets"][0]["deleted_error"] = [1.0]
    with pytest.raises(ReslabError, match=r"lesion\.nets\[0\]\.deleted_error must have one entry"):
        write_results(tmp_path, good, check=LESION)
