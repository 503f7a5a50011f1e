"""The one evaluation: every image counted once, confusion matrix and per-class errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reslab.errors import ConfigError
from reslab.models import create_model
from reslab.train import (
    eval_run,
    evaluate,
)
from reslab.train.evaluate import parse_normalize
from reslab.weights import save_weights


def test_evaluate_counts_every_image() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25, num_classes=10, in_channels=1)
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37) % 10
    result = evaluate(model, images, labels, mean=(0.5,), std=(0.25,), batch_size=8)
    assert result.n == 37 and int(result.confusion.sum()) == 37
    assert result.confusion.shape == (10, 10)
    correct = int(result.confusion.diagonal().sum())
    assert result.error == pytest.approx(100 * (37 - correct) / 37)
    assert math.isfinite(result.loss)
    per_class = result.per_class_error()
    assert len(per_class) == 10 and all(0 <= e <= 100 for e in per_class)
    assert model.training  # evaluate() restores the mode


# --- the input normalisation a weights file expects (issue 10) -----------------------------------


def _brightness_cifar(root: Path) -> None:
    """A tiny CIFAR-10 folder (binary format) whose two classes differ in brightness alone:
    class 0 dark, class 1 light, overlapping, so a net's error depends on where its
    threshold sits in input units, i.e. on the normalisation it is fed."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)

    def write(name: str, n: int) -> None:
        labels = rng.integers(0, 2, n)
        level = np.where(labels == 0, rng.uniform(0, 80, n), rng.uniform(50, 130, n))
        noise = rng.uniform(-10, 10, (n, 3 * 32 * 32))
        pixels = np.clip(level[:, None] + noise, 0, 255).astype(np.uint8)
        records = np.concatenate([labels[:, None].astype(np.uint8), pixels], axis=1)
        (folder / name).write_bytes(records.tobytes())

    for i in range(1, 6):
        write(f"data_batch_{i}.bin", 32)
    write("test_batch.bin", 256)


def _plain_torch_checkpoint(root: Path) -> tuple[torch.nn.Module, float]:
    """resnet8 trained and scored in plain torch on ImageNet-normalised inputs, as a published
    checkpoint would be: its own error on its own preprocessing. Only the classifier is trained
    (on the fixed random features of the eval-mode net), which keeps it to a fraction of a
    second and is all the test needs: the error depends on the normalisation."""
    from reslab.data import load_dataset

    ds = load_dataset("cifar10", data_dir=root, download=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def prep(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - mean) / std

    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10).eval()
    features: list[torch.Tensor] = []
    hook = net.fc.register_forward_pre_hook(lambda module, args: features.append(args[0]))
    with torch.no_grad():
        net(prep(ds.train_images))
    hook.remove()
    opt = torch.optim.SGD(net.fc.parameters(), lr=0.5, momentum=0.9)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net.fc(features[0]), ds.train_labels).backward()
        opt.step()
    with torch.no_grad():
        wrong = (net(prep(ds.test_images)).argmax(1) != ds.test_labels).sum().item()
    return net, 100.0 * wrong / len(ds.test_labels)


@pytest.mark.slow
def test_eval_with_normalize_imagenet_reproduces_an_imported_checkpoints_own_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from reslab.cli import main

    _brightness_cifar(tmp_path / "data")
    net, own_error = _plain_torch_checkpoint(tmp_path / "data")
    assert 0 < own_error < 40  # it learned the task, not perfectly
    # Saved as the popular checkpoints are: no reslab header at all.
    torch.save({"state_dict": net.state_dict()}, tmp_path / "net.pth")
    save_file(dict(net.state_dict()), tmp_path / "net.safetensors")

    def error(weights: str, *normalize: str) -> float:
        out = tmp_path / "e.json"
        args = ["eval", "--weights", str(tmp_path / weights), "--model", "resnet8"]
        args += ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--json", str(out)]
        assert main([*args, *normalize]) == 0
        return float(json.loads(out.read_text())["error"])

    assert error("net.pth", "--normalize", "imagenet") == own_error
    imagenet = "0.485,0.456,0.406,0.229,0.224,0.225"  # the same, as MEAN,STD per channel
    assert error("net.safetensors", "--normalize", imagenet) == own_error
    # Without the flag: the dataset's own statistics, as always, and another error.
    assert error("net.pth") != own_error
    assert "inputs normalised with imagenet statistics" in capsys.readouterr().out


def test_a_reslab_file_carries_its_normalisation_into_eval(tmp_path: Path) -> None:
    from reslab.weights import IMAGENET

    _brightness_cifar(tmp_path / "data")
    net, own_error = _plain_torch_checkpoint(tmp_path / "data")
    path = save_weights(net, tmp_path / "net.safetensors", normalization=IMAGENET)
    result = eval_run(path, dataset="cifar10", data_dir=str(tmp_path / "data"))
    assert result["error"] == own_error and result["normalization"]["name"] == "imagenet"
    # --normalize wins over the header.
    other = eval_run(path, dataset="cifar10", data_dir=str(tmp_path / "data"), normalize="dataset")
    assert other["normalization"]["name"] == "cifar10" and other["error"] != own_error


def test_parse_normalize_reads_the_three_forms_and_refuses_bad_values() -> None:
    from reslab.data import load_dataset
    from reslab.weights import IMAGENET

    digits = load_dataset("digits")  # one channel
    three = _rgb_dataset()
    assert parse_normalize("imagenet", three) == IMAGENET
    assert parse_normalize("dataset", digits).mean == digits.mean
    assert parse_normalize("0.5,0.25", three).std == (0.25, 0.25, 0.25)
    custom = parse_normalize("0.1,0.2,0.3,0.4,0.5,0.6", three)
    assert (custom.name, custom.mean, custom.std) == ("custom", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    for text, words in [
        ("imagenet", "3 channels"),  # digits has one
        ("0.1,0.2,0.3", "give 2 numbers"),
        ("0.5,nan", "finite"),
        ("0.5,inf", "finite"),
        ("0.5,0", "positive"),
        ("0.5,-1", "positive"),
        ("125,60", "divide 0-255"),
        ("zscore", "imagenet, dataset or MEAN,STD"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_normalize(text, digits)


def _rgb_dataset() -> Any:
    from reslab.data import load_dataset

    return load_dataset("synthetic", synthetic_size=(4, 2))


def test_eval_refuses_a_bad_normalize_in_one_line(
    cli_error: Callable[[list[str]], str], tmp_path: Path
) -> None:
    weights = save_weights(
        create_model("resnet8", width=0.25, num_classes=10, in_channels=1),
        tmp_path / "w.safetensors",
    )
    line = cli_error(["eval", "--weights", str(weights), "--normalize", "0.5,0"])
    assert "--normalize '0.5,0'" in line and "positive" in line
