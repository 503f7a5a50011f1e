"""The nets that train without shortcuts or BN: norm, init and nonlinearity (reslab.models.inits).

Each paper's reference property at initialisation, then what every variant must do: build,
count as its layout says, run without NaN, get a gradient in every parameter, round-trip
through a weights file, train a few SGD steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from reslab.blocks import DiracConv2d, FixupBasicBlock, SkipInitAdd
from reslab.cli import main
from reslab.errors import ModelError
from reslab.models import ResNet, count_params, create_model, layout_params, model_layout
from reslab.models.inits import DELTA_ORTHOGONAL_GAIN, fixup_std
from reslab.weights import load_model, save_weights

SMALL = {"width": 0.25}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("plain20", {"norm": "none"}),
    ("resnet20", {"norm": "none"}),
    ("resnet20", {"norm": "none", "shortcut": "B"}),
    ("resnet20", {"nonlinearity": "tanh"}),
    ("plain20", {"init": "dirac"}),
    ("plain20", {"init": "dirac", "norm": "none"}),
    ("plain20", {"init": "looks_linear"}),
    ("plain20", {"init": "looks_linear", "norm": "none"}),
    ("plain20", {"init": "delta_orthogonal", "nonlinearity": "tanh", "norm": "none"}),
    ("resnet20", {"init": "skipinit", "norm": "none"}),
    ("resnet20", {"init": "skipinit"}),
    ("resnet20", {"init": "fixup", "norm": "none"}),
    ("resnet20", {"init": "fixup", "norm": "none", "shortcut": "B"}),
]
IDS = [f"{name}-{'-'.join(map(str, options.values()))}" for name, options in VARIANTS]


def _batch(n: int = 8, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g, dtype=dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


def _block_io(model: ResNet, x: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """(block, its input, its output) for every block, from one forward pass."""
    seen: list[tuple[nn.Module, Tensor, Tensor]] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: seen.append((m, i[0].clone(), o.clone())))
        for b in model.blocks()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


# --- each paper's property at initialisation ----------------------------------------------------


def test_dirac_conv_with_b_zero_is_the_identity_on_its_input() -> None:
    x = torch.randn(2, 8, 6, 6)
    conv = DiracConv2d(8, 8)
    assert torch.equal(conv.alpha, torch.ones(8)) and torch.allclose(
        conv.beta, torch.full((8,), 0.1)
    )
    with torch.no_grad():
        conv.beta.zero_()
    assert torch.equal(conv(x), x)
    # Widening and striding: the identity on the first channels, subsampled, zeros beyond.
    wide = DiracConv2d(8, 16, stride=2)
    with torch.no_grad():
        wide.beta.zero_()
    out = wide(x)
    assert torch.equal(out[:, :8], x[:, :, ::2, ::2]) and not out[:, 8:].any()


def test_dirac_nets_parametrise_every_block_conv() -> None:
    model = create_model("plain20", init="dirac", **SMALL)
    convs = [m for b in model.blocks() for m in (b.conv1, b.conv2)]
    assert all(isinstance(c, DiracConv2d) for c in convs) and len(convs) == 18
    assert type(model.conv1) is nn.Conv2d  # the stem reads the image: a plain conv


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_looks_linear_net_is_linear_at_init(norm: str) -> None:
    model = create_model("plain20", init="looks_linear", norm=norm, **SMALL).double().eval()
    x, _ = _batch(4, torch.float64)
    y = torch.randn_like(x)
    with torch.no_grad():
        f0 = model(torch.zeros_like(x))
        fx, fy, fxy = model(x), model(y), model(x + y)
        f_scaled = model(-2.5 * x)
    assert torch.allclose(fxy, fx + fy - f0, atol=1e-9)
    assert torch.allclose(f_scaled - f0, -2.5 * (fx - f0), atol=1e-9)
    assert (fx - f0).abs().max() > 1e-3  # not trivially zero


def test_delta_orthogonal_kernels_are_an_orthogonal_centre_tap() -> None:
    model = create_model(
        "plain20", init="delta_orthogonal", nonlinearity="tanh", norm="none", **SMALL
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19
    gain2 = DELTA_ORTHOGONAL_GAIN**2
    for conv in convs:
        w = conv.weight.detach().double()
        centre = w[:, :, 1, 1]
        off = w.clone()
        off[:, :, 1, 1] = 0
        assert not off.any()
        out, inp = centre.shape
        gram = centre.T @ centre if out >= inp else centre @ centre.T
        assert torch.allclose(gram, gain2 * torch.eye(min(out, inp), dtype=w.dtype), atol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_skipinit_blocks_are_their_shortcuts_at_init(norm: str) -> None:
    model = create_model("resnet20", init="skipinit", norm=norm, **SMALL)
    assert all(isinstance(b.join, SkipInitAdd) and b.join.alpha.item() == 0 for b in model.blocks())
    seen = _block_io(model, _batch()[0])
    assert len(seen) == 9
    for block, x, out in seen:
        assert block.shortcut is not None and torch.equal(out, block.shortcut(x))


def test_fixup_zeroes_rescales_and_starts_every_block_as_its_shortcut() -> None:
    model = create_model("resnet20", init="fixup", norm="none")  # full width: enough samples
    blocks = model.blocks()
    assert len(blocks) == 9 and all(isinstance(b, FixupBasicBlock) for b in blocks)
    assert not model.fc.weight.any() and not model.fc.bias.any()
    assert not any(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    standardised = []
    for b in blocks:
        assert not b.conv2.weight.any()
        predicted = fixup_std(b.conv1, len(blocks), 2)
        # He's std (fan-out) times L^(-1/(2m-2)) = 9^(-1/2) for 9 branches of 2 layers.
        fan_out = b.conv1.out_channels * 9
        assert predicted == pytest.approx((2 / fan_out) ** 0.5 / 3)
        standardised.append(b.conv1.weight.detach().flatten() / predicted)
    assert torch.cat(standardised).std().item() == pytest.approx(1.0, rel=0.03)
    for block, x, out in _block_io(model, _batch()[0]):
        assert block.shortcut is not None and torch.equal(out, block.shortcut(x))


# --- what every variant does --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_variant_builds_counts_and_gets_a_finite_gradient_everywhere(
    name: str, options: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    model = create_model(name, **options, **SMALL)
    assert count_params(model) == layout_params(model_layout(name, **options, **SMALL))
    assert model.reslab_config == {"name": name, **SMALL, **options}
    x, target = _batch()
    loss = nn.functional.cross_entropy(model(x), target)
    assert torch.isfinite(loss)
    loss.backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_variant_trains_a_few_steps_and_round_trips(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = create_model(name, **options, **SMALL)
    moved = dict.fromkeys(dict(model.named_parameters()), False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, target = _batch()
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        for k, p in model.named_parameters():
            moved[k] |= bool(p.grad is not None and p.grad.any())
    # Zero-initialised layers (Fixup, SkipInit) get a non-zero gradient within a few steps.
    assert [k for k, ok in moved.items() if not ok] == []
    path = save_weights(model, tmp_path / "w.safetensors")
    loaded = load_model(path)
    assert loaded.reslab_config == model.reslab_config
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- what is refused, in one line naming the option ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet56", {"init": "dirac"}, "init='dirac' is for plain nets"),
        ("resnet20", {"init": "looks_linear"}, "init='looks_linear' is for plain nets"),
        ("plain20", {"init": "looks_linear", "nonlinearity": "tanh"}, "nonlinearity='relu'"),
        ("plain20", {"init": "looks_linear", "width": 0.3}, "every width must be even"),
        ("plain20", {"init": "delta_orthogonal"}, "init='delta_orthogonal' is for Xiao"),
        ("resnet20", {"init": "delta_orthogonal", "norm": "none", "nonlinearity": "tanh"}, "plain"),
        ("plain20", {"init": "skipinit"}, "init='skipinit' scales each residual branch"),
        ("plain20", {"init": "fixup", "norm": "none"}, "init='fixup' scales each residual"),
        ("resnet56", {"init": "fixup"}, "init='fixup' replaces BN"),
        (
            "resnet20",
            {"init": "skipinit", "shortcut_mode": "scale"},
            "init='skipinit' sets the join",
        ),
        ("resnet20", {"norm": "none", "zero_init_residual": True}, "zero_init_residual=True"),
        ("resnet20", {"init": "fixup", "norm": "none", "zero_init_residual": True}, "zero_init"),
        ("resnet20", {"norm": "none", "activation": "full_preact"}, "norm='none' needs a block"),
        (
            "resnet20",
            {"init": "skipinit", "activation": "bn_after_add"},
            "init='skipinit' is built",
        ),
        ("resnet20", {"nonlinearity": "tanh", "block": "bottleneck"}, "nonlinearity='tanh' needs"),
        ("resnet18", {"init": "skipinit"}, "resnet18 has no option init"),
        ("wrn16_8", {"norm": "none"}, "wrn16_8 has no option norm"),
        ("plain20", {"nonlinearity": "gelu"}, "nonlinearity 'gelu' is not one of relu, tanh"),
    ],
)
def test_a_combination_that_makes_no_sense_is_refused_in_one_line(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        model_layout(name, **options)
    assert "\n" not in str(info.value)


def test_the_options_reach_the_trainer(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--model", "plain20", "--init", "dirac", "--norm", "none", "--print-config"]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["init"], config["norm"], config["nonlinearity"]) == ("dirac", "none", None)
    assert main(["train", "--model", "resnet20", "--init", "dirac", "--print-config"]) != 0
    assert "init='dirac' is for plain nets" in capsys.readouterr().err
