"""Today's nets stay bit-identical: state_dict keys, shapes, initial weights and outputs.

The fixture was written before the ablation options (He et al. 2016, arXiv:1603.05027) were
added, so every registered net built with its default options must still match it. Regenerate
it only on purpose: ``PYTHONPATH=src python tests/models/test_fingerprints.py > FILE``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from reslab.models import count_params, create_model

FIXTURE = Path(__file__).with_name("fingerprints.json")
CASES: list[tuple[str, dict[str, Any]]] = [
    ("resnet20", {}),
    ("plain20", {}),
    ("resnet56", {}),
    ("resnet20", {"shortcut": "B"}),
    ("resnet20", {"shortcut": "C", "in_channels": 1}),
    ("resnet20", {"zero_init_residual": True}),
    ("preact_resnet110", {}),
    ("preact_plain110", {}),
    ("preact_resnet164", {}),
    ("cifar_resnet50", {}),
    ("resnet18", {}),
    ("resnet50", {}),
]


def fingerprint(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Parameter count, a hash of the keys and shapes, one of the initial weights, the logits."""
    torch.manual_seed(0)
    model = create_model(name, **options)
    weights, keys = hashlib.sha256(), hashlib.sha256()
    for key, tensor in model.state_dict().items():
        keys.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        weights.update(key.encode())
        weights.update(tensor.detach().contiguous().numpy().tobytes())
    # The forward too, on a fixed input: a reordered forward keeps the weights but not this.
    channels = model.input_size[0]
    x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.eval()(x)
    return {
        "name": name,
        "options": options,
        "params": count_params(model),
        "keys": keys.hexdigest()[:16],
        "weights": weights.hexdigest()[:16],
        "logits_sum": round(float(logits.sum()), 6),
        "logits_abs_sum": round(float(logits.abs().sum()), 6),
    }


SAVED = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"torch": "", "models": []}


@pytest.mark.parametrize("saved", SAVED["models"], ids=lambda s: f"{s['name']}{s['options']}")
def test_default_nets_are_unchanged(saved: dict[str, Any]) -> None:
    now = fingerprint(saved["name"], saved["options"])
    assert (now["params"], now["keys"]) == (saved["params"], saved["keys"])
    for key in ("logits_sum", "logits_abs_sum"):
        assert now[key] == pytest.approx(saved[key], rel=1e-4, abs=1e-4)
    if torch.__version__ != SAVED["torch"]:
        pytest.skip(f"initial weights hashed under torch {SAVED['torch']}, not {torch.__version__}")
    assert now["weights"] == saved["weights"]


def test_the_fixture_covers_every_case() -> None:
    assert [(s["name"], s["options"]) for s in SAVED["models"]] == CASES


if __name__ == "__main__":
    print(
        json.dumps(
            {"torch": torch.__version__, "models": [fingerprint(*c) for c in CASES]}, indent=1
        )
    )
