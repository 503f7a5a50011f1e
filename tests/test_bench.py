"""`reslab bench`: reslab's pipeline, its two peers and the ratios in one run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from reslab import bench
from reslab.bench import BenchConfig, Measurement, run_bench
from reslab.bench_peers import PerSampleCifar, hand_crop_flip
from reslab.cli import main


@pytest.mark.slow
def test_bench_prints_every_pipeline_and_the_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--model", "resnet8", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
    # Each pipeline in its own spawned process, as a user runs it; 8x8 images keep each one's
    # inference pass (6 batches of 1,024 images) short.
    args += ["--image-size", "8", "--workers", "0"]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^reslab\s+[\d,]+\s+[\d.]+", out, re.M)
    assert re.search(r"^hand-written\s+[\d,]+\s+[\d.]+.*in-memory float tensor", out, re.M)
    assert re.search(r"^baseline\s+[\d,]+\s+[\d.]+.*DataLoader per-sample", out, re.M)
    for peer in ("hand-written", "baseline"):
        ratio = rf"reslab / {peer}: training \d+\.\d\dx, .*inference \d+\.\d\dx"
        assert re.search(ratio, out)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [r["pipeline"] for r in saved["results"]] == ["reslab", "hand-written", "baseline"]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in saved["results"])
    assert set(saved["ratios"]) == {"hand-written", "baseline"}
    # One thread count for all three, read once: no pipeline gets more cores than another.
    assert len({r["device"] for r in saved["results"]}) == 1


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
        hand_written=False,
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


def _fake(pipeline: str, rate: float) -> Measurement:
    return Measurement(
        pipeline, "s", rate, 1000 / rate, 1.0, 100.0, 2 * rate, "CPU (2 threads)", 1000 / rate
    )


def test_rounds_alternate_the_order_and_every_pipeline_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round r runs the pipelines backwards when r is odd; each row is its rounds' median."""
    order: list[str] = []
    rates = {"reslab": iter([300.0, 100.0, 200.0]), "hand-written": iter([150.0, 100.0, 250.0])}
    rates["baseline"] = iter([50.0, 60.0, 70.0])

    def fake_measure(pipeline: str, cfg: BenchConfig) -> Measurement:
        assert cfg.threads == 2  # resolved once, before any pipeline
        order.append(pipeline)
        return _fake(pipeline, next(rates[pipeline]))

    monkeypatch.setattr(bench, "_measure", fake_measure)
    cfg = BenchConfig(device="cpu", rounds=3, threads=2)
    results = run_bench(cfg, isolate=False)
    three = ["reslab", "hand-written", "baseline"]
    assert order == three + three[::-1] + three
    assert [r.pipeline for r in results] == three
    assert [r.images_per_s for r in results] == [200.0, 150.0, 60.0]
    assert results[0].rounds_images_per_s == [300.0, 100.0, 200.0]
    ratios = bench.ratios(results)
    assert ratios["hand-written"]["training"] == pytest.approx(200 / 150)
    assert ratios["hand-written"]["training_rounds"] == pytest.approx([2.0, 1.0, 0.8])
    table = bench.format_results(cfg, results)
    assert "median of 3 alternating rounds" in table
    assert (
        "reslab / hand-written: training 1.33x (rounds: 2.00 1.00 0.80), by CPU time per step 1.33x"
        in table
    )
    record = bench.as_dict(cfg, results)
    assert [r["pipeline"] for r in record["results"]] == three
    assert json.loads(json.dumps(record))["ratios"]["baseline"]["training"] == pytest.approx(
        200 / 60
    )


def test_peers_can_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "_measure", lambda p, cfg: _fake(p, 1.0))
    cfg = BenchConfig(device="cpu", threads=1, hand_written=False)
    assert [r.pipeline for r in run_bench(cfg, isolate=False)] == ["reslab", "baseline"]
    cfg = BenchConfig(device="cpu", threads=1, baseline=False, hand_written=False)
    (only,) = run_bench(cfg, isolate=False)
    assert only.pipeline == "reslab" and bench.ratios([only]) == {}


def test_hand_written_augmentation_is_a_crop_and_flip_of_each_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 6, 6, generator=gen) + 10  # nowhere zero, as the padding is
    out = hand_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        views = [
            v
            for top in range(9)
            for left in range(9)
            for v in (padded[i, :, top : top + 6, left : left + 6],)
            for v in (v, v.flip(2))
        ]
        assert any(torch.equal(out[i], v) for v in views)
