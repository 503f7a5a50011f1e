"""Bad input as a user types it: one clear line on stderr, exit code 2, nothing written.

Each case runs ``reslab.cli.main([...])`` in this process (fast) with the working directory and
``$RESLAB_DATA`` inside the test's own folder, and the network cut off
(``reslab.data.download._fetch`` raises), then checks that

* the exit code is 2 and stderr is exactly one line, ``reslab: error: ...`` (or argparse's
  ``reslab <command>: error: ...``), with no traceback;
* the line names the problem (the words listed with the case);
* nothing under the test's folder was created, changed or removed (no ``--out`` folder, no
  half-extracted data, no eval JSON).

Cases already proven elsewhere are not repeated: ``--epochs 0``/``--lr -1``/``--batch-size 0``,
unknown and mistyped TOML keys, ``--device cuda``, a locked or finished run folder, ``--resume``
with changed settings (tests/cli/test_train_cli.py); each data parser's own errors
(tests/data/). The property-based tests in tests/test_fuzz.py check that config parsing, image
folders and weights files raise reslab's own errors (:class:`ReslabError`) and nothing else.
"""

from __future__ import annotations

import pickle
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reslab.data import download as rdd
from reslab.models import create_model
from reslab.weights import CONFIG_KEY, save_weights

TRAIN = ["train", "--model", "resnet8", "--width", "0.25", "--epochs", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and every default path (runs/, the data folder) inside tmp_path."""

    def offline(url: str, dest: Path) -> None:
        raise OSError(f"network disabled in tests ({url})")

    monkeypatch.setattr(rdd, "_fetch", offline)
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "data-home"))
    monkeypatch.chdir(tmp_path)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under ``root``."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# --- files the cases need -------------------------------------------------------------------


def _cifar_bin(root: Path, *, label: int = 3, short: bool = False) -> Path:
    """A CIFAR-10 binary folder of one record per batch; ``label`` goes in the test batch."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, 3072, dtype=np.uint8).tobytes()
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(bytes([i % 10]) + pixels)
    (folder / "test_batch.bin").write_bytes(bytes([label]) + pixels)
    if short:
        (folder / "data_batch_2.bin").write_bytes(bytes(3000))
    return folder


def _png(path: Path, size: int = 6) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 60)).save(path)


def _image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _png(root / split / cls / "a.png")
    return root


def _digits_weights(path: Path, model: str = "resnet8", **kw: Any) -> Path:
    net = create_model(model, in_channels=1, width=0.25, **{"num_classes": 10, **kw})
    return save_weights(net, path)


class _Payload:
    """Unpickling this creates the sentinel file: proof that code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.sentinel,))


# --- the cases ------------------------------------------------------------------------------

Build = Callable[[Path, pytest.MonkeyPatch], list[str]]
CASES: dict[str, tuple[Build, tuple[str, ...]]] = {}


def case(name: str, *words: str) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        CASES[name] = (build, words)
        return build

    return register


def _train(*flags: str) -> Build:
    return lambda tmp, _mp: [*TRAIN, *flags, "--out", str(tmp / "out")]


# Flags with wrong values: (name, flags, words the message must hold).
_FLAG_CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("unknown-model", ["--model", "resnet999x"], ("unknown model 'resnet999x'", "reslab models")),
    ("invalid-depth", ["--model", "resnet21"], ("21 is not 6n+2", "try 20")),
    ("plain-invalid-depth", ["--model", "plain33"], ("33",)),
    ("negative-epochs", ["--epochs", "-3"], ("epochs must be a positive integer", "--epochs")),
    ("zero-steps", ["--steps", "0"], ("steps", "--steps")),
    ("negative-batch-size", ["--batch-size", "-8"], ("batch_size", "--batch-size")),
    ("zero-lr", ["--lr", "0"], ("lr must be a positive number", "--lr")),
    ("nan-lr", ["--lr", "nan"], ("lr", "nan")),
    ("momentum-above-one", ["--momentum", "1.5"], ("momentum", "[0, 1)")),
    ("zero-width", ["--width", "0"], ("width", "--width")),
    ("zero-threads", ["--threads", "0"], ("threads", "--threads")),
    ("zero-eval-every", ["--eval-every", "0"], ("eval_every", "--eval-every")),
    ("negative-seed", ["--seed", "-1"], ("seed", "--seed")),
    ("label-smoothing-one", ["--label-smoothing", "1"], ("label_smoothing",)),
    ("ema-above-one", ["--ema", "1.5"], ("ema", "0.999")),
    ("zero-grad-clip", ["--grad-clip", "0"], ("grad_clip",)),
    ("nesterov-without-momentum", ["--nesterov", "--momentum", "0"], ("nesterov",)),
    ("warmup-error-above-100", ["--warmup-until-error", "150"], ("warmup_until_error",)),
    ("milestones-decreasing", ["--milestones", "0.9,0.5"], ("milestones", "increasing")),
    ("unknown-schedule", ["--schedule", "linear"], ("schedule", "cosine")),
    ("unknown-augment", ["--augment", "rotate"], ("augment", "cifar")),
    ("unknown-precision", ["--precision", "fp8"], ("precision", "bf16")),
    ("unknown-recipe", ["--recipe", "nope"], ("recipe", "paper-cifar")),
    ("bad-shortcut", ["--shortcut", "D"], ("shortcut must be A, B or C", "--shortcut")),
    ("unknown-device", ["--device", "tpu"], ("device", "cuda:N")),
    ("unknown-dataset", ["--dataset", "imagenet21k"], ("unknown dataset 'imagenet21k'",)),
    ("batch-too-large", ["--batch-size", "5000"], ("--batch-size 5000", "or less")),
    ("batch-beyond-bound", ["--batch-size", "100000000"], ("batch_size", "at most 65,536")),
    ("val-split-too-large", ["--val-split", "5000"], ("5000", "1437")),
    # argparse, before reslab sees the value
    ("epochs-not-a-number", ["--epochs", "abc"], ("--epochs", "invalid int value: 'abc'")),
    ("milestones-not-numbers", ["--milestones", "0.5,x"], ("--milestones", "0.5,x")),
    ("milestones-infinite", ["--milestones", "0.5,inf"], ("finite",)),
]
for _name, _flags, _words in _FLAG_CASES:
    CASES[_name] = (_train(*_flags), _words)

if not torch.cuda.is_available():
    CASES["cuda-index-without-cuda"] = (
        _train("--device", "cuda:1"),
        ("CUDA is not available", "--device cpu"),
    )
    CASES["eval-cuda-without-cuda"] = (
        lambda tmp, _mp: [
            "eval",
            "--weights",
            str(_digits_weights(tmp / "w.safetensors")),
            "--device",
            "cuda",
        ],
        ("CUDA is not available",),
    )


@case("unknown-command", "invalid choice: 'trian'")
def _unknown_command(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["trian", "--out", str(tmp / "out")]


@case("out-is-a-file", "as a run folder", "choose another --out")
def _out_is_file(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "notes.txt").write_text("mine, keep")
    return [*TRAIN, "--out", str(tmp / "notes.txt")]


@case("out-under-a-file", "Not a directory", "choose another --out")
def _out_under_file(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "notes.txt").write_text("mine, keep")
    return [*TRAIN, "--out", str(tmp / "notes.txt" / "run")]


@case("resume-nothing-there", "no run to resume", "without --resume")
def _resume_nothing(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "empty").mkdir()
    return ["train", "--resume", str(tmp / "empty")]


@case("resume-with-config", "--resume uses the run's saved config", "drop --config")
def _resume_with_config(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "run.toml").write_text("epochs = 2\n")
    return ["train", "--resume", str(tmp / "somewhere"), "--config", str(tmp / "run.toml")]


# data ------------------------------------------------------------------------------------------


@case("cifar10-empty-data-dir-offline", "could not download", "by hand", "cifar-10-binary")
def _cifar_offline(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "data").mkdir()
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("mnist-missing-offline", "could not download", "mnist")
def _mnist_offline(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "data" / "mnist").mkdir(parents=True)
    return [*TRAIN, "--dataset", "mnist", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-corrupt-archive", "cifar-10-binary.tar.gz is not a readable", "download it again")
def _corrupt_archive(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "data").mkdir()
    (tmp / "data" / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not a tarball")
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-truncated-archive", "cifar-10-binary.tar.gz is not a readable", "download")
def _truncated_archive(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    folder = _cifar_bin(tmp / "src")
    archive = tmp / "data" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-checksum-mismatch", "checksum mismatch", "c32a1d4ab5d03f1284b67883e8d87530")
def _checksum(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr(rdd, "_fetch", lambda url, dest: dest.write_bytes(b"a captive portal's page"))
    (tmp / "data").mkdir()
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-label-out-of-range", "test_batch.bin: label 12", "outside 0..9")
def _label_12(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    _cifar_bin(tmp / "data", label=12)
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-truncated-batch", "data_batch_2.bin is 3000 bytes", "truncated")
def _short_batch(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    _cifar_bin(tmp / "data", short=True)
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("cifar10-evil-python-batch", "refusing to unpickle", "posix.system")
def _evil_batch(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    folder = tmp / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    evil = b"cposix\nsystem\n(Vtouch " + str(tmp / "pwned").encode() + b"\ntR."
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(evil)
    return [*TRAIN, "--dataset", "cifar10", "--data-dir", str(tmp / "data"), "--out", "out"]


@case("imagefolder-no-classes", "has no class folders")
def _no_classes(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "imgs" / "train").mkdir(parents=True)
    (tmp / "imgs" / "test").mkdir()
    return [*TRAIN, "--dataset", "imagefolder", "--data-dir", str(tmp / "imgs"), "--out", "out"]


@case("imagefolder-unreadable-image", "broken.png is not an image", "remove it")
def _broken_image(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    root = _image_folder(tmp / "imgs")
    good = (root / "train" / "cat" / "a.png").read_bytes()
    (root / "train" / "cat" / "broken.png").write_bytes(good[: len(good) // 2])
    return [*TRAIN, "--dataset", "imagefolder", "--data-dir", str(root), "--out", "out"]


@case("imagefolder-non-image-file", "notes.txt is not an image")
def _non_image(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    root = _image_folder(tmp / "imgs")
    (root / "test" / "dog" / "notes.txt").write_text("not a picture")
    return [*TRAIN, "--dataset", "imagefolder", "--data-dir", str(root), "--out", "out"]


@case("imagefolder-no-test-split", "no test/ (or val/) folder")
def _no_test(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    _png(tmp / "imgs" / "train" / "cat" / "a.png")
    return [*TRAIN, "--dataset", "imagefolder", "--data-dir", str(tmp / "imgs"), "--out", "out"]


# config files ---------------------------------------------------------------------------------


def _with_config(text: str) -> Build:
    def build(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
        (tmp / "run.toml").write_text(text)
        return ["train", "--config", str(tmp / "run.toml"), "--out", str(tmp / "out")]

    return build


CASES["config-unknown-table"] = (
    _with_config("[optimizer]\nlr = 0.1\n"),
    ("unknown key optimizer",),
)
CASES["config-wrong-type"] = (_with_config('lr = "fast"\n'), ("lr", "must be float", "'fast'"))
CASES["config-bool-for-int"] = (_with_config("epochs = true\n"), ("epochs", "must be int"))
CASES["config-string-for-list"] = (_with_config('milestones = "0.5"\n'), ("milestones", "list"))
CASES["config-invalid-toml"] = (_with_config("epochs = = 3\n"), ("run.toml is not valid",))
CASES["config-missing-file"] = (
    lambda tmp, _mp: ["train", "--config", str(tmp / "nope.toml"), "--out", str(tmp / "out")],
    ("cannot read config file", "does not exist"),
)


# reslab eval -----------------------------------------------------------------------------------


@case("eval-other-architecture", "does not fit", "another architecture", "unexpected keys")
def _other_arch(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    weights = _digits_weights(tmp / "r32.safetensors", "resnet32")
    return ["eval", "--weights", str(weights), "--model", "resnet8", "--json", "eval.json"]


@case("eval-wrong-class-count", "100 outputs but digits has 10 classes", "--dataset")
def _class_count(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    weights = _digits_weights(tmp / "w.safetensors", num_classes=100)
    return ["eval", "--weights", str(weights), "--json", "eval.json"]


@case("eval-truncated-safetensors", "w.safetensors is not a readable safetensors file")
def _truncated_weights(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    weights = _digits_weights(tmp / "w.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    return ["eval", "--weights", str(weights), "--json", "eval.json"]


@case("eval-corrupt-model-header", "corrupt reslab.model entry")
def _corrupt_header(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    from safetensors.torch import save_file

    state = create_model("resnet8", in_channels=1, width=0.25).state_dict()
    path = tmp / "w.safetensors"
    save_file(dict(state), path, metadata={CONFIG_KEY: '{"width": 0.25'})
    return ["eval", "--weights", str(path), "--json", "eval.json"]


@case("eval-garbage-pt", "refused", "garbage.pt")
def _garbage_pt(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    return ["eval", "--weights", str(tmp / "garbage.pt"), "--model", "resnet8"]


@case("eval-pickle-carrying-code", "refused", "evil.pth", "trust")
def _evil_pth(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    state = create_model("resnet8", in_channels=1, width=0.25).state_dict()
    torch.save({"state_dict": state, "payload": _Payload(tmp / "pwned")}, tmp / "evil.pth")
    return ["eval", "--weights", str(tmp / "evil.pth"), "--model", "resnet8", "--json", "e.json"]


@case("eval-legacy-pickle-carrying-code", "refused", "evil.pkl")
def _evil_pkl(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "evil.pkl").write_bytes(pickle.dumps(_Payload(tmp / "pwned"), protocol=2))
    return ["eval", "--weights", str(tmp / "evil.pkl"), "--model", "resnet8"]


@case("eval-no-model-config", "carries no model config", "--model")
def _no_config(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    torch.save(create_model("resnet8").state_dict(), tmp / "w.pt")
    return ["eval", "--weights", str(tmp / "w.pt")]


@case("eval-zero-batch-size", "--batch-size must be a positive integer")
def _eval_batch(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    weights = _digits_weights(tmp / "w.safetensors")
    return ["eval", "--weights", str(weights), "--batch-size", "0"]


@case("eval-unknown-split", "--split", "invalid choice: 'val'")
def _eval_split(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    return ["eval", "--weights", str(tmp / "w.safetensors"), "--split", "val"]


# studies, report, explain ----------------------------------------------------------------------


def _study(*flags: str) -> Build:
    return lambda tmp, _mp: ["degradation", *flags, "--out", str(tmp / "study")]


CASES["degradation-depth-not-6n2"] = (_study("--depths", "21,56"), ("depth 21 is not 6n+2",))
CASES["degradation-single-depth"] = (_study("--depths", "20"), ("two or more --depths",))
CASES["degradation-depth-not-int"] = (_study("--depths", "20,abc"), ("--depths[1]", "'abc'"))
CASES["degradation-bad-shortcut"] = (_study("--shortcut", "Q"), ("shortcut must be A, B or C",))
CASES["degradation-zero-jobs"] = (_study("--jobs", "0"), ("--jobs must be a positive integer",))
CASES["degradation-unknown-dataset"] = (
    _study("--dataset", "foo", "--epochs", "1"),
    ("unknown dataset 'foo'",),
)
CASES["degradation-zero-epochs"] = (_study("--epochs", "0"), ("epochs must be a positive",))
if not torch.cuda.is_available():
    CASES["degradation-cuda-without-cuda"] = (
        _study("--device", "cuda"),
        ("--device cuda", "CUDA is not available"),
    )
CASES["bench-negative-workers"] = (lambda tmp, _mp: ["bench", "--workers", "-1"], ("--workers",))
CASES["bench-zero-threads"] = (lambda tmp, _mp: ["bench", "--threads", "0"], ("--threads",))


@case("degradation-out-is-a-file", "cannot use", "choose another --out")
def _study_out_file(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "taken").write_text("a file")
    return ["degradation", "--out", str(tmp / "taken")]


@case("explain-figure-under-a-file", "cannot write", "choose another path")
def _explain_under_file(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "taken").write_text("a file")
    return ["explain", "--figure", str(tmp / "taken" / "x.png")]


CASES["shortcuts-unknown-variant"] = (
    lambda tmp, _mp: ["shortcuts", "--variants", "plain,D", "--out", str(tmp / "study")],
    ("variant 'D'",),
)


@case("report-empty-folder", "no results.json and no finished run folders")
def _report_empty(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "study").mkdir()
    return ["report", str(tmp / "study")]


@case("report-corrupt-results", "results.json is not valid JSON")
def _report_corrupt(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "study").mkdir()
    (tmp / "study" / "results.json").write_text('{"runs": [')
    return ["report", str(tmp / "study")]


@case("report-corrupt-run-result", "corrupt JSON")
def _report_run_corrupt(tmp: Path, _mp: pytest.MonkeyPatch) -> list[str]:
    run = tmp / "study" / "runs" / "resnet8-s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model": "resnet8"}')
    (run / "result.json").write_text("{")
    return ["report", str(tmp / "study")]


CASES["explain-x-not-numbers"] = (lambda tmp, _mp: ["explain", "--x", "abc"], ("--x", "'abc'"))
CASES["explain-length-mismatch"] = (
    lambda tmp, _mp: ["explain", "--x", "1,2", "--target", "1"],
    ("--x has 2 values but --target has 1",),
)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_writes_nothing(
    cli_error: Callable[[list[str]], str],
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build, words = CASES[name]
    argv = build(tmp_path, monkeypatch)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    line = cli_error(argv)
    for word in words:
        assert word in line, line
    after = _snapshot(tmp_path)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"
    assert not (tmp_path / "pwned").exists(), "a pickle payload ran"


# --- numerical faults a flag can cause ----------------------------------------------------------


def test_nan_loss_from_the_command_line_names_step_and_lr(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine's NaN stop seen from the CLI (tests/train/test_loop.py: the kept checkpoint)."""
    out = tmp_path / "out"
    argv = [*TRAIN, "--lr", "1e30", "--schedule", "constant", "--out", str(out)]
    line = cli_error(argv)
    assert re.search(r"NaN/inf at step \d+ \(lr 1e\+\d\d\)", line), line
    assert "--lr" in line and "no checkpoint was written" in line
    assert not (out / "result.json").exists()


def test_detect_anomaly_names_the_operation(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--detect-anomaly shows the forward call behind the NaN, then stops with one error line."""
    out = tmp_path / "out"
    argv = [*TRAIN, "--lr", "1e30", "--schedule", "constant", "--detect-anomaly"]
    # autograd's report of the forward call (a warning; on a terminal it precedes the error)
    with pytest.warns(UserWarning, match="Traceback of forward call"):
        line = cli_error([*argv, "--out", str(out)])
    assert line.startswith("reslab: error: --detect-anomaly: Function '"), line
    assert "returned nan values" in line and re.search(r"at step \d+ \(lr ", line)
    assert "no checkpoint was written" in line
    assert not torch.is_anomaly_enabled()
