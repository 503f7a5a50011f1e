"""`reslab bench`: both pipelines and the ratio in one run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reslab.bench import BenchConfig, PerSampleCifar, run_bench
from reslab.cli import main


@pytest.mark.slow
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


@pytest.mark.slow
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
    """Each draw is one of the 9x9 pad-4 crops of the image, flipped or not, then normalised."""
    import numpy as np
    import torch

    from reslab.bench import _MEAN, _STD

    images = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    data = PerSampleCifar(images, torch.arange(4), seed=0)
    img = images[2].numpy().transpose(1, 2, 0)
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    mean, std = np.array(_MEAN, np.float32), np.array(_STD, np.float32)
    candidates = []
    for top in range(9):
        for left in range(9):
            crop = padded[top : top + 8, left : left + 8]
            for view in (crop, crop[:, ::-1]):
                x = (view.astype(np.float32) / 255 - mean) / std
                candidates.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))
    seen = set()
    for _ in range(40):
        x, label = data[2]
        assert label == 2 and x.shape == (3, 8, 8)
        matches = [i for i, c in enumerate(candidates) if torch.allclose(x, c, atol=1e-6)]
        assert matches, "a draw that is no crop/flip of image 2"
        seen.add(matches[0])
    assert len(seen) > 10  # the draws differ: it augments, not just normalises
