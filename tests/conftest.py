"""Shared test settings: small, deterministic, and quiet."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep each test process to one intra-op thread so pytest-xdist workers don't fight.
torch.set_num_threads(1)
os.environ.setdefault("RESLAB_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# Studies and reports, for tests/report, tests/experiments and tests/cli: synthetic results.json
# contents shaped like a real study's, and a PNG reader. (Added with the experiments registry.)

from typing import Any  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if ``data`` is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    assert data[12:16] == b"IHDR", "first chunk is not IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def fake_run(
    family: str, depth: int, seed: int, shortcut: str | None, epochs: int
) -> dict[str, Any]:
    """A run record whose errors fall with a learning-rate drop; deep plain nets train worse."""
    import numpy as np

    rng = np.random.default_rng(depth * 10 + seed + (100 if family == "plain" else 0))
    floor = 2.0 + (0.08 * (depth - 20) if family == "plain" else -0.02 * (depth - 20))
    t = np.arange(1, epochs + 1)
    drop = np.where(t > epochs * 2 // 3, 0.5, 1.0)
    train = floor + 40.0 * np.exp(-t / 3.0) * drop + rng.normal(0, 0.2, epochs)
    test = train + 4.0 + rng.normal(0, 0.3, epochs)
    tag = "plain" if family == "plain" else "resnet"
    return {
        "name": f"{tag}{depth}{shortcut or ''}-s{seed}",
        "model": f"{tag}{depth}",
        "family": family,
        "depth": depth,
        "shortcut": shortcut,
        "seed": seed,
        "params": 270_000 if depth == 20 else 850_000,
        "final_clean_train_error": float(train[-1]),
        "final_test_error": float(test[-1]),
        "wall_time": 12.5,
        "curves": {
            "epoch": t.tolist(),
            "step": (t * 50).tolist(),
            "clean_train_error": train.tolist(),
            "train_error": (train + 1.0).tolist(),
            "test_error": test.tolist(),
            "train_loss": (train / 20).tolist(),
            "lr": (0.1 * drop).tolist(),
        },
    }


def fake_probes(depths: tuple[int, ...], seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Probe entries for plain and residual nets at ``depths``; ``seed`` keys if several seeds."""
    import numpy as np

    gradient_flow, magnitude, responses = [], [], []
    for family in ("plain", "residual"):
        for depth in depths:
            for seed in seeds:
                label = f"{'plain' if family == 'plain' else 'resnet'}-{depth}"
                blocks = (depth - 2) // 2
                idx = np.arange(blocks)
                common: dict[str, Any] = {"label": label, "family": family, "depth": depth}
                if len(seeds) > 1:
                    common["seed"] = seed
                scale = 1.0 + 0.1 * seed
                for when in ("init", "trained"):
                    decay = 0.9 if family == "plain" and when == "trained" else 0.99
                    gradient_flow.append(
                        {
                            **common,
                            "when": when,
                            "block": [f"block{i}" for i in idx],
                            "input_grad_norm": (scale * 1e-2 * decay ** (blocks - idx)).tolist(),
                            "layer": [f"conv{i}" for i in range(depth - 1)],
                            "weight_grad_norm": [0.01] * (depth - 1),
                        }
                    )
                residual = family == "residual"
                ratio = scale * ((0.2 + 0.1 * np.sin(idx)) if residual else (1.0 + 0 * idx))
                magnitude.append(
                    {
                        **common,
                        "block": [f"block{i}" for i in idx],
                        "ratio": ratio.tolist(),
                        "f_norm": (ratio * 10).tolist(),
                        "shortcut_norm": [10.0] * blocks if residual else None,
                    }
                )
                std = scale * (0.6 if residual else 1.5) * (1 + 0.3 * np.cos(np.arange(depth - 2)))
                responses.append(
                    {
                        **common,
                        "layer": [f"conv{i}" for i in range(depth - 2)],
                        "std": std.tolist(),
                        "std_sorted": sorted(std.tolist(), reverse=True),
                    }
                )
    return {
        "gradient_flow": gradient_flow,
        "residual_magnitude": magnitude,
        "layer_responses": responses,
    }


def synthetic_results(
    depths: tuple[int, ...] = (20, 56), seeds: int = 2, epochs: int = 12
) -> dict[str, Any]:
    """A degradation study's results: plain and residual nets × depths × seeds, and probes."""
    from reslab.experiments.degradation import degradation_verdict
    from reslab.report.stats import summarize_runs

    runs = [
        fake_run(family, depth, seed, None if family == "plain" else "A", epochs)
        for family in ("plain", "residual")
        for depth in depths
        for seed in range(seeds)
    ]
    summary = summarize_runs(runs)
    return {
        "schema": 1,
        "experiment": "degradation",
        "title": "Degradation: plain vs residual nets (synthetic)",
        "reslab_version": "0.1.0",
        "torch_version": "2.13.0",
        "python_version": "3.12.0",
        "created": "2025-01-31T12:00:00+00:00",
        "machine": "test machine, 2 CPUs",
        "config": {"depths": list(depths), "seeds": seeds, "epochs": epochs, "lr": 0.1},
        "verdict": degradation_verdict(summary),
        "runs": runs,
        "summary": summary,
        "probes": fake_probes(depths),
    }
