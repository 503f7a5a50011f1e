"""Issue 20, class 3: small inputs and legal values must not ask for more than the machine has.

Each reader estimates what an input will cost from its header or layout before allocating
(:mod:`reslab.checks.budget`): a pickle whose memo repeats one row, a ``.pt`` whose zip record
inflates a thousandfold, a model × batch beyond the memory, a study of thousands of runs or
beyond the free disk. Each is one line, in seconds, with ``--allow-large`` named where the
estimate may be too cautious. Training and the study's runs are stubbed out: the refusal
must come before them (on the main of 2026-12-07 each of these reached them).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reslab
from reslab.data import load_dataset
from reslab.data.unpickle import safe_unpickle
from reslab.errors import CheckpointError, DataError
from reslab.models import model_layout
from reslab.weights import read_state_dict


def _budget() -> Any:
    """The budget module, imported where a test needs it (new with this class's fix)."""
    from reslab.checks import budget

    return budget


def _training_bytes(*args: Any) -> int:
    from reslab.models.counting import training_bytes

    return int(training_bytes(*args))


class Reached(Exception):
    """Raised by a stub where the work would start: the budget check did not fire."""


def _memo_batch(rows: int, rows_per_ref: int = 3072) -> dict[bytes, Any]:
    row = [i % 256 for i in range(rows_per_ref)]
    return {b"data": [row] * rows, b"labels": [i % 10 for i in range(rows)]}


def _memo_cifar(root: Path, rows: int) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = _memo_batch(rows if name == "data_batch_1" else 10)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder / "data_batch_1"


def _inflating_pt(path: Path, record_bytes: int) -> Path:
    """A torch zip checkpoint whose one tensor record is ``record_bytes`` of deflated zeros
    (torch writes records stored; this one declares its inflated size in the zip directory)."""
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(zi, "w", force_zip64=True) as out:
                    chunk = bytes(1 << 20)
                    for start in range(0, record_bytes, len(chunk)):
                        out.write(chunk[: record_bytes - start])
            else:
                dst.writestr(info, src.read(info.filename))
    return path


# --- files: pickles and zip archives ------------------------------------------------------------


def test_a_pickle_whose_memo_repeats_a_row_is_refused_before_it_expands(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    # 5,000 references to one 3,072-value row: 35 kB on disk, 123 MB as the array it becomes
    # (the 606 kB file became 4.24 GB and trained; main returns this one as data).
    path = _memo_cifar(tmp_path / "data", 5000)
    assert path.stat().st_size < 40_000
    with pytest.raises(DataError, match=r"would take .* from a .* file .*× its size"):
        load_dataset("cifar10", data_dir=tmp_path / "data")
    line = cli_error(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
         "--model", "resnet8", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert "data_batch_1 would take" in line
    assert not (tmp_path / "out").exists()


def test_a_pt_whose_record_inflates_is_refused_before_it_is_read(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pt = _inflating_pt(tmp_path / "w.pt", 48 << 20)  # 48 MB of zeros in a ~50 kB file
    assert pt.stat().st_size < 100_000

    def never(*args: Any, **kwargs: Any) -> Any:
        raise Reached("torch.load was called")

    monkeypatch.setattr(torch, "load", never)
    for argv in (
        ["eval", "--weights", str(pt), "--model", "resnet8"],
        ["lesion", "--weights", str(pt), "--model", "resnet8", "--out", str(tmp_path / "s")],
    ):
        assert "would take 50.3 MB in memory from a" in cli_error(argv)
    with pytest.raises(CheckpointError, match="would take"):
        reslab.load_weights(reslab.create_model("resnet8"), pt)


@given(
    row=st.integers(1, 4000),
    repeats=st.integers(1, 3000),
    nest=st.integers(1, 3),
    proto=st.sampled_from([2, 4, 5]),
)
def test_fuzz_shared_pickles_are_refused_exactly_past_the_budget(
    row: int, repeats: int, nest: int, proto: int
) -> None:
    """Random pickles whose memo shares rows ``repeats`` times at each of ``nest`` levels: the
    ones whose expanded size passes :func:`reslab.checks.check_inflation`'s budget load, the
    others are one DataError, decided from the unpickled graph before anything expands."""
    obj: Any = list(range(row))
    for _ in range(nest):
        obj = [obj] * repeats
    data = pickle.dumps({b"data": obj}, protocol=proto)
    expanded = 8 * row * repeats**nest  # every value an 8-byte number
    limit = _budget().MAX_INFLATION * len(data) + (4 << 20)
    if expanded > limit:
        with pytest.raises(DataError, match="would take"):
            safe_unpickle(data)
    else:
        assert len(safe_unpickle(data)[b"data"]) == repeats


@given(
    sizes=st.lists(st.integers(0, 24 << 20), min_size=1, max_size=3),
    deflate=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_fuzz_zip_archives_are_refused_by_their_declared_sizes(
    tmp_path: Path, sizes: list[int], deflate: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random zip archives (entries of zeros, stored or deflated) as ``.pt`` files: whenever
    the sizes their directory declares exceed the budget, the file is refused before
    ``torch.load`` opens it; never anything but a CheckpointError."""
    path = tmp_path / "w.pt"
    with zipfile.ZipFile(path, "w") as archive:
        for i, size in enumerate(sizes):
            kind = zipfile.ZIP_DEFLATED if deflate[i] else zipfile.ZIP_STORED
            archive.writestr(f"archive/data/{i}", bytes(size), compress_type=kind)
    declared = sum(sizes)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(Reached()))
    over = declared > _budget().MAX_INFLATION * path.stat().st_size + (4 << 20)
    if over:
        with pytest.raises(CheckpointError, match="would take"):
            read_state_dict(path)
    else:  # torch.load's own errors, the stub's here, are a CheckpointError too
        with pytest.raises(CheckpointError, match="Reached"):
            read_state_dict(path)


# --- model × batch ------------------------------------------------------------------------------


def test_a_model_and_batch_beyond_the_memory_are_refused_before_building(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main built ResNet-1202 and trained past 12 GB into a 62-line allocator traceback
    def never(*args: Any, **kwargs: Any) -> Any:
        raise Reached("the net was built")

    monkeypatch.setattr("reslab.train.session.create_model", never)
    monkeypatch.setattr(_budget(), "available_memory", lambda: 8 * 10**9)
    out = tmp_path / "out"
    argv = ["train", "--model", "resnet1202", "--dataset", "synthetic", "--batch-size", "512"]
    line = cli_error([*argv, "--out", str(out)])
    assert "training resnet1202 at --batch-size 512 needs about" in line
    assert "8.0 GB available; use --batch-size " in line and "--allow-large" in line
    assert not out.exists()
    fits = int(line.split("use --batch-size ")[1].split()[0])
    layout = model_layout("resnet1202", num_classes=10)
    assert _training_bytes(layout, fits) <= 8 * 10**9 < _training_bytes(layout, fits + 1)
    with pytest.raises(Reached):  # the override goes on to build
        reslab.cli.main([*argv, "--out", str(out), "--allow-large"])


@given(
    depth=st.sampled_from([8, 20, 56, 110, 1202]),
    width=st.sampled_from([0.25, 1.0, 4.0]),
    batch=st.integers(1, 4096),
    have=st.integers(10**6, 10**12),
)
def test_fuzz_the_batch_a_refusal_names_fits(
    depth: int, width: float, batch: int, have: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the net, batch and memory: refused exactly when the estimate exceeds what the
    machine has, and the batch the line names fits while one more would not."""
    from reslab.train.distributed import Dist
    from reslab.train.session import check_memory

    monkeypatch.setattr(_budget(), "available_memory", lambda: have)
    monkeypatch.delenv(_budget().ALLOW_LARGE, raising=False)
    layout = model_layout(f"resnet{depth}", width=width)
    config = type("C", (), {"batch_size": batch, "model": f"resnet{depth}"})()
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    ds = type("D", (), {"train_images": images})()
    need = _training_bytes(layout, batch)
    try:
        check_memory(config, layout, ds, Dist(), torch.device("cpu"))  # type: ignore[arg-type]
        assert need <= have
    except reslab.errors.ConfigError as exc:
        assert need > have
        if "use --batch-size " in str(exc):
            fits = int(str(exc).split("use --batch-size ")[1].split()[0])
            assert _training_bytes(layout, fits) <= have < _training_bytes(layout, fits + 1)
        else:
            assert _training_bytes(layout, 1) > have


# --- studies ------------------------------------------------------------------------------------


@pytest.fixture
def no_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise Reached("the study's runs started")

    monkeypatch.setattr("reslab.experiments.runner.execute", never)


def test_a_study_of_thousands_of_runs_needs_allow_large(
    tmp_path: Path, cli_error: Callable[[list[str]], str], no_runs: None
) -> None:
    # main planned 4,000 runs and started writing (617 MB in 60 s, about 50 GB projected)
    out = tmp_path / "study"
    seeds = ",".join(map(str, range(300)))
    line = cli_error(["degradation", "--seeds", seeds, "--depths", "20,56", "--out", str(out)])
    assert "this study plans 1,200 runs; more than 256 needs --allow-large" in line
    assert not out.exists()
    with pytest.raises(Reached):
        reslab.cli.main(["degradation", "--seeds", "0,1", "--depths", "20,56", "--out",
                         str(out), "--allow-large"])  # fmt: skip


def test_a_study_beyond_the_free_disk_is_refused(
    tmp_path: Path,
    cli_error: Callable[[list[str]], str],
    no_runs: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_budget(), "free_disk", lambda path: 10**6)
    out = tmp_path / "study"
    argv = ["degradation", "--seeds", "0,1", "--depths", "20,56", "--out", str(out)]
    line = cli_error(argv)
    assert "this study (8 runs to train) will write about" in line and "1.0 MB free" in line
    assert "--allow-large" in line and not out.exists()
    with pytest.raises(Reached):
        reslab.cli.main([*argv, "--allow-large"])
    assert _budget().ALLOW_LARGE not in os.environ  # restored after the command
