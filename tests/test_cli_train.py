"""``reslab train`` / ``reslab eval`` end to end: real processes, real files, real kills."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reslab.cli import main

# A small but real net: resnet20 at a quarter of the paper's widths, on the bundled digits.
SMALL = ["--model", "resnet20", "--width", "0.25", "--dataset", "digits", "--threads", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _reslab(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reslab", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        **kw,  # type: ignore[call-overload]
    )


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# --- the real command on the real net -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "resnet20-digits"
    args = ["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "6"]
    code = main([*args, "--out", str(out), "--quiet", "--threads", "2"])
    assert code == 0
    return out


def test_train_resnet20_digits_reaches_low_test_error(digits_run: Path) -> None:
    result = json.loads((digits_run / "result.json").read_text())
    assert result["status"] == "finished"
    assert result["model"] == "resnet20" and result["params"] == 269_434  # the real resnet20
    assert result["test_error"] < 10.0
    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["clean_train_error"] < 10.0
    csv_lines = (digits_run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,lr,train_loss,train_error,clean_train_error")
    assert len(csv_lines) == 7
    config = json.loads((digits_run / "config.json").read_text())
    assert config["recipe"] == "digits" and config["_meta"]["torch_version"] == torch.__version__
    assert {"model", "dataset", "epochs", "out"} <= set(config["_meta"]["explicit"])


def test_eval_writes_confusion_matrix(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    weights = digits_run / "checkpoints" / "last.safetensors"
    assert main(["eval", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["dataset"] == "digits" and result["n"] == 360
    confusion = result["confusion"]
    assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert sum(map(sum, confusion)) == 360
    expected = json.loads((digits_run / "result.json").read_text())["test_error"]
    assert result["error"] == pytest.approx(expected)
    assert f"top-1 error {result['error']:.2f} %" in printed
    # With an explicit model name and dataset, too.
    assert (
        main(["eval", "--model", "resnet20", "--weights", str(weights), "--dataset", "digits"]) == 0
    )


def test_eval_of_missing_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = _one_line_error(capsys, main(["eval", "--weights", str(tmp_path / "nope.safetensors")]))
    assert "does not exist" in line


# --- kill -9 and resume -------------------------------------------------------------------------


def test_kill9_then_resume_is_bit_identical(tmp_path: Path) -> None:
    args = [
        "train",
        *SMALL,
        "--epochs",
        "8",
        "--batch-size",
        "32",
        "--deterministic",
        "--quiet",
        "--checkpoint-every-steps",
        "15",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reslab", *args, "--out", str(killed)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoints" / "last.json").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 1.5))  # land anywhere: mid-step, mid-write, mid-eval
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "result.json").exists()

    resumed = _reslab("train", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    baseline = _reslab(*args, "--out", str(whole))
    assert baseline.returncode == 0, baseline.stderr

    a = load_file(whole / "checkpoints" / "last.safetensors")
    b = load_file(killed / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((whole / "result.json").read_text())
    rb = json.loads((killed / "result.json").read_text())
    assert ra["rank_checksums"] == rb["rank_checksums"]
    assert ra["test_error"] == rb["test_error"]
    # The metrics files hold each epoch once, with the same numbers (timings aside).
    timing = {"images_per_s", "epoch_time", "wall_time"}
    rows_a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == list(range(1, 9))
    for x, y in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in x.items() if k not in timing} == pytest.approx(
            {k: v for k, v in y.items() if k not in timing}
        )


# --- torchrun -----------------------------------------------------------------------------------


def test_torchrun_two_cpu_ranks_agree(tmp_path: Path) -> None:
    common = [*SMALL, "--epochs", "2", "--batch-size", "64", "--quiet"]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "reslab",
            "train",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = _reslab("train", *common, "--out", str(tmp_path / "single"))
    assert one.returncode == 0, one.stderr

    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2
    sums = ddp["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # DDP kept both ranks' weights identical
    # Same global batch and data order; only BN statistics differ (32 vs 64 images per batch).
    rec_ddp = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    rec_one = json.loads((tmp_path / "single" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec_ddp["step"] == rec_one["step"] == 1437 // 64
    assert rec_ddp["train_loss"] == pytest.approx(rec_one["train_loss"], rel=0.15)
    assert rec_ddp["lr"] == pytest.approx(rec_one["lr"])


# --- config files and flags ---------------------------------------------------------------------


def test_command_line_wins_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('model = "resnet20"\nwidth = 0.25\nepochs = 5\nlr = 0.05\nbatch-size = 64\n')
    out = tmp_path / "run"
    code = main(["train", "--config", str(toml), "--epochs", "1", "--out", str(out), "--quiet"])
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1  # command line
    assert saved["lr"] == 0.05 and saved["batch_size"] == 64 and saved["width"] == 0.25  # file
    assert saved["momentum"] == 0.9 and saved["recipe"] == "digits"  # recipe
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    # The saved config.json reproduces the run elsewhere (out on the command line wins).
    again = tmp_path / "again"
    assert (
        main(["train", "--config", str(out / "config.json"), "--out", str(again), "--quiet"]) == 0
    )
    assert (again / "result.json").is_file()
    a = load_file(out / "checkpoints" / "last.safetensors")
    b = load_file(again / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_toml_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = 2\nlearning_rate = 0.1\n")
    out = tmp_path / "run"
    line = _one_line_error(capsys, main(["train", "--config", str(toml), "--out", str(out)]))
    assert "learning_rate" in line and "unknown key" in line
    assert not out.exists()


def test_wrong_toml_type_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('epochs = "ten"\n')
    line = _one_line_error(capsys, main(["train", "--config", str(toml)]))
    assert "epochs" in line and "int" in line


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--epochs", "0", "epochs"), ("--lr", "-1", "lr"), ("--batch-size", "0", "batch_size")],
)
def test_invalid_values_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, field: str
) -> None:
    out = tmp_path / "run"
    line = _one_line_error(capsys, main(["train", flag, value, "--out", str(out)]))
    assert field in line and flag in line
    assert not out.exists()


def test_device_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _one_line_error(
        capsys, main(["train", "--device", "cuda", "--out", str(tmp_path / "x")])
    )
    assert "CUDA is not available" in line


def test_locked_run_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    # Another process takes the lock the way a training run does, and holds it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        line = _one_line_error(capsys, main(["train", *SMALL, "--epochs", "1", "--out", str(out)]))
        assert f"in use by another process (pid {holder.pid})" in line
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_existing_run_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = (out / "checkpoints" / "last.json").read_bytes()
    line = _one_line_error(capsys, main(["train", *SMALL, "--epochs", "1", "--out", str(out)]))
    assert "--resume" in line and "--out" in line
    assert (out / "checkpoints" / "last.json").read_bytes() == before
    # --resume on the finished run does nothing and succeeds; changing the math is refused.
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, main(["train", "--resume", str(out), "--lr", "0.5"]))
    assert "--lr" in line


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in [
        "--model",
        "--dataset",
        "--recipe",
        "--epochs",
        "--steps",
        "--batch-size",
        "--lr",
        "--wd",
        "--shortcut",
        "--plain",
        "--zero-init-residual",
        "--device",
        "--compile",
        "--no-compile",
        "--channels-last",
        "--precision",
        "--seed",
        "--deterministic",
        "--out",
        "--data-dir",
        "--config",
        "--resume",
        "--quiet",
        "--detect-anomaly",
        "--tensorboard",
        "--ema",
        "--label-smoothing",
        "--grad-clip",
        "--val-split",
        "--threads",
    ]:
        assert flag in text, flag
