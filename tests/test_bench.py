"""`reslab bench`: both pipelines and the ratio in one run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reslab.bench import BenchConfig, PerSampleCifar, run_bench
from reslab.cli import main


def test_bench_prints_both_pipelines_and_the_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--model", "resnet8", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
    assert main([*args, "--workers", "0", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^reslab\s+[\d,]+\s+[\d.]+", out, re.M)
    assert re.search(r"^baseline\s+[\d,]+\s+[\d.]+.*DataLoader per-sample", out, re.M)
    assert re.search(r"reslab / baseline: training \d+\.\d\dx, inference \d+\.\d\dx", out)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [r["pipeline"] for r in saved["results"]] == ["reslab", "baseline"]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in saved["results"])


def test_reslab_pipeline_in_process_honours_switches() -> None:
    cfg = BenchConfig(
        model="resnet8",
        batch_size=8,
        steps=1,
        warmup=0,
        precision="fp32",
        channels_last=False,
        baseline=False,
        eval_batches=1,
    )
    (result,) = run_bench(cfg, isolate=False)
    assert result.settings.startswith("fp32, NCHW")


def test_baseline_dataset_augments_one_image_at_a_time() -> None:
    import torch

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    data = PerSampleCifar(images, torch.arange(4), seed=0)
    x, label = data[2]
    assert x.shape == (3, 8, 8) and label == 2
