"""One study a folder, and nothing written when a study's input is bad (issue 20, classes 1
and 7). Each test failed on main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reslab.data.download as rdd
from reslab.errors import CheckpointError, DataError, ReslabError
from reslab.experiments import StudyConfig, page, run_study
from reslab.train import RunLock


def _study(out: Path) -> StudyConfig:
    """A study that trains nothing (its nets are measured at initialisation): the folder lock
    is the same for every study, and this one takes a second, not a minute."""
    options = {"mlp_depths": (1, 4), "mlp_width": 16, "line_points": 16, "path_points": 8,
               "max_lag": 4}  # fmt: skip
    return StudyConfig(experiment="shattering", depths=(8,), seeds=(0,), probe_batch=8,
                       out=str(out), options=options)  # fmt: skip


def test_a_second_study_on_the_folder_is_refused_and_the_first_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On main the second study trained the first one's runs beside it (the first died after
    6 of 8 runs and neither wrote results.json). Here the second starts while the first is
    running (from its log callback) and is refused in one line; the first finishes."""
    # The report's figures take 20 s on a busy machine and have nothing to do with the lock.
    monkeypatch.setattr(page, "build_report", lambda out: out / "report.html")
    out = tmp_path / "study"
    refused: list[str] = []

    def log(line: str) -> None:
        if not refused and "runs on" in line:  # the first holds the folder now
            before = sorted(p.name for p in out.rglob("*"))
            with pytest.raises(ReslabError) as caught:
                run_study(_study(out), log=lambda _: None)
            refused.append(str(caught.value))
            assert sorted(p.name for p in out.rglob("*")) == before

    results = run_study(_study(out), log=log)
    (message,) = refused
    assert "\n" not in message
    assert f"study folder {out} is in use by another process" in message
    assert "wait for it or choose another --out" in message
    assert json.loads((out / "results.json").read_text())["experiment"] == results["experiment"]
    lock = RunLock(out)  # released
    lock.acquire()
    lock.release()


def test_a_data_error_leaves_no_study_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On main every run of the study made its folder (config.json, train.log) before the data
    was found missing; the README says a bad input writes nothing."""

    def offline(url: str, dest: Path) -> None:
        raise OSError(f"network disabled in tests ({url})")

    monkeypatch.setattr(rdd, "_fetch", offline)
    config = StudyConfig(
        depths=(8, 14), seeds=(0,), dataset="cifar10", data_dir=str(tmp_path / "data"),
        steps=2, jobs=1, out=str(tmp_path / "study"),
    )  # fmt: skip
    with pytest.raises(DataError):
        run_study(config, log=lambda _: None)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("experiment", ["lesion", "landscape"])
@pytest.mark.parametrize("where", ["new", "nested", "existing"])
def test_refused_weights_leave_no_out_folder(tmp_path: Path, experiment: str, where: str) -> None:
    """On main the --out folder stayed behind when the --weights file was refused; a folder
    the user made is kept, without the study's lock file."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not a safetensors file")
    out = {"new": tmp_path / "o", "nested": tmp_path / "a" / "b" / "o",
           "existing": tmp_path / "mine"}[where]  # fmt: skip
    if where == "existing":
        out.mkdir()
    config = StudyConfig(experiment=experiment, options={"weights": str(weights)}, out=str(out))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        run_study(config, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["w.safetensors", *(["mine"] if where == "existing" else [])]
    )
