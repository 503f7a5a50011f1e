"""``reslab train`` / ``reslab eval`` end to end: real processes, real files.

(kill -9 and resume: tests/train/test_faults.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reslab.cli import main
from reslab.train import TrainConfig

# A small but real net: resnet20 at a quarter of the paper's widths, on the bundled digits.
SMALL = ["--model", "resnet20", "--width", "0.25", "--dataset", "digits", "--threads", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --- the real command on the real net -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "resnet20-digits"
    args = ["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "6"]
    code = main([*args, "--out", str(out), "--quiet", "--threads", "2"])
    assert code == 0
    return out


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_writes_confusion_matrix(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    weights = digits_run / "checkpoints" / "last.safetensors"
    assert main(["eval", "--weights", str(weights), "--json", str(out)]) == 0
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
    cli_error: Callable[[list[str]], str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = cli_error(["eval", "--weights", str(tmp_path / "nope.safetensors")])
    assert "does not exist" in line


# --- torchrun -----------------------------------------------------------------------------------


_RANKS_SCRIPT = """
import json, os, runpy, sys
import torch
import reslab.train.loop as loop
import reslab.train.runtime as runtime

rank = int(os.environ["RANK"])
out = sys.argv[1]
# Each rank's own look at the load says something else: rank 0 one thread, rank 1 two.
runtime.default_threads = lambda requested, cores: rank + 1
record = loop.record_threads


def recorded(config, device):
    with open(f"{out}.threads-{rank}.json", "w") as f:
        json.dump([torch.get_num_threads()], f)
    return record(config, device)


loop.record_threads = recorded
# The command a user runs under torchrun (`torchrun -m reslab train ...`), to its exit.
sys.argv = ["reslab", *sys.argv[2:], "--out", out]
runpy.run_module("reslab", run_name="__main__")
"""


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_agree_on_weights_and_rank_0s_thread_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One launch, two properties: DDP keeps both ranks' weights identical, and with no
    --threads every rank trains with rank 0's count, whatever its own look at the load says."""
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    common = ["--model", "resnet20", "--width", "0.25", "--dataset", "digits"]
    common += ["--epochs", "2", "--batch-size", "64", "--quiet"]
    out = tmp_path / "ddp"
    env = {**_env(), "OMP_NUM_THREADS": "2"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*launch, str(script), str(out), "train", *common],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(Path(f"{out}.threads-0.json").read_text()) == [1]
    assert json.loads(Path(f"{out}.threads-1.json").read_text()) == [1]  # not its own 2
    assert json.loads((out / "config.json").read_text())["threads"] == 1
    # The single-process twin, with the ranks' thread count (here: no process to isolate).
    single = tmp_path / "single"
    assert main(["train", *common, "--threads", "1", "--out", str(single)]) == 0, (
        capsys.readouterr().err
    )

    ddp = json.loads((out / "result.json").read_text())
    assert ddp["world_size"] == 2
    sums = ddp["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # DDP kept both ranks' weights identical
    # Same global batch and data order; only BN statistics differ (32 vs 64 images per batch).
    rec_ddp = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    rec_one = json.loads((single / "metrics.jsonl").read_text().splitlines()[0])
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


def test_unknown_toml_key_is_one_line(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = 2\nlearning_rate = 0.1\n")
    out = tmp_path / "run"
    line = cli_error(["train", "--config", str(toml), "--out", str(out)])
    assert "learning_rate" in line and "unknown key" in line
    assert not out.exists()


def test_wrong_toml_type_is_one_line(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('epochs = "ten"\n')
    line = cli_error(["train", "--config", str(toml)])
    assert "epochs" in line and "int" in line


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--epochs", "0", "epochs"), ("--lr", "-1", "lr"), ("--batch-size", "0", "batch_size")],
)
def test_invalid_values_exit_2_and_write_nothing(
    cli_error: Callable[[list[str]], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    field: str,
) -> None:
    out = tmp_path / "run"
    line = cli_error(["train", flag, value, "--out", str(out)])
    assert field in line and flag in line
    assert not out.exists()


def test_device_cuda_without_cuda(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = cli_error(["train", "--device", "cuda", "--out", str(tmp_path / "x")])
    assert "CUDA is not available" in line


def test_locked_run_folder_is_refused(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
        line = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(out)])
        assert f"in use by another process (pid {holder.pid})" in line
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_existing_run_needs_resume(
    cli_error: Callable[[list[str]], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = (out / "checkpoints" / "last.json").read_bytes()
    line = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(out)])
    assert "--resume" in line and "--out" in line
    assert (out / "checkpoints" / "last.json").read_bytes() == before
    # --resume on the finished run does nothing and succeeds; changing the math is refused.
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    capsys.readouterr()
    line = cli_error(["train", "--resume", str(out), "--lr", "0.5"])
    assert "--lr" in line


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """One flag per TrainConfig field, named after it, booleans with their --no- form."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"{flag}\b", text), flag
        if hints[f.name] in (bool, bool | None):
            assert "--no-" + flag[2:] in text, flag
        assert " ".join(f.metadata["help"].split()[:3]) in " ".join(text.split()), f.name
    for flag in ("--config", "--resume", "--print-config", "--wd"):
        assert flag in text, flag


# A valid value for each string and list field (numbers and booleans are generic).
_VALUES: dict[str, tuple[str, typing.Any]] = {
    "model": ("resnet32", "resnet32"),
    "shortcut": ("B", "B"),
    "activation": ("relu_preact", "relu_preact"),
    "shortcut_mode": ("exclusive_gate", "exclusive_gate"),
    "norm": ("none", "none"),
    "init": ("skipinit", "skipinit"),
    "nonlinearity": ("tanh", "tanh"),
    "dataset": ("mnist", "mnist"),
    "data_dir": ("/data", "/data"),
    "augment": ("flip", "flip"),
    "recipe": ("fast-cifar", "fast-cifar"),
    "schedule": ("multistep", "multistep"),
    "device": ("cpu", "cpu"),
    "precision": ("fp32", "fp32"),
    "out": ("runs/x", "runs/x"),
    "milestones": ("0.3,0.6", [0.3, 0.6]),
    "snapshot_steps": ("0,5", [0, 5]),
    "accum_steps": ("4", 4),  # a divisor of the default batch of 128
}
# The shortcut-mode options are checked with their mode at the edge (the model's layout).
_WITH = {
    "shortcut_scale": ["--shortcut-mode", "scale"],
    "branch_scale": ["--shortcut-mode", "scale"],
    "gate_bias": ["--shortcut-mode", "shortcut_gate"],
    "shortcut_dropout": ["--shortcut-mode", "dropout"],
}


@pytest.mark.slow
def test_every_field_is_settable_by_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Each generated flag sets its own field: --print-config shows the value given."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if f.name in _VALUES:
            text, want = _VALUES[f.name]
            args = [flag, text]
        elif hint in (bool, bool | None):
            args, want = [flag], True
        elif hint in (int, int | None):
            args, want = [flag, "7"], 7
        else:
            assert hint in (float, float | None), f"no test value for {f.name}"
            args, want = [flag, "0.25"], 0.25
        args += _WITH.get(f.name, [])
        assert main(["train", *args, "--print-config"]) == 0, (f.name, capsys.readouterr().err)
        assert json.loads(capsys.readouterr().out)[f.name] == want, f.name


def test_print_config_resolves_the_recipe_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--dataset", "cifar10", "--recipe", "paper-cifar", "--print-config"])
    assert code == 0
    config = json.loads(capsys.readouterr().out)
    assert config["steps"] == 64_000 and config["weight_decay"] == 1e-4
    assert config["out"] == "runs/resnet20-cifar10-s0"
    assert list(tmp_path.iterdir()) == []
    # --weight-decay and its old spelling --wd set the same field.
    for flag in ("--weight-decay", "--wd"):
        assert main(["train", flag, "0.003", "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["weight_decay"] == 0.003
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_eval_out_is_refused_with_the_json_flag_named(
    cli_error: Callable[[list[str]], str],
    digits_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = digits_run / "checkpoints" / "last.safetensors"
    target = tmp_path / "e.json"
    line = cli_error(["eval", "--weights", str(weights), "--out", str(target)])
    assert "--json" in line and not target.exists()


def _saved_run(tmp_path: Path, threads: int, explicit: list[str]) -> Path:
    """A run's config.json as a machine with more cores would have written it."""
    from reslab.train import resolve

    config = resolve({"model": "resnet20", "width": 0.25, "dataset": "digits", "steps": 2})
    saved = {**config.to_dict(), "threads": threads, "_meta": {"explicit": explicit}}
    path = tmp_path / "big-machine" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(saved))
    return path


def test_a_recorded_thread_count_too_big_for_this_machine_is_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reslab.checks import max_threads

    too_many = max_threads() + 1
    saved = _saved_run(tmp_path, too_many, ["dataset", "model", "steps", "width"])
    out = tmp_path / "rerun"
    assert main(["train", "--config", str(saved), "--out", str(out), "--quiet"]) == 0
    assert f"records {too_many} threads, which reslab chose" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["threads"] <= max_threads()
    # A count the user set on that machine is theirs: refused here as any --threads would be.
    (tmp_path / "user").mkdir()
    asked = _saved_run(tmp_path / "user", too_many, ["threads"])
    assert main(["train", "--config", str(asked), "--out", str(tmp_path / "no"), "--quiet"]) == 2
    assert "at most" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
