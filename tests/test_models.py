"""Models and registry, against the papers' parameter counts and torchvision's layout."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from reslab.blocks import Projection
from reslab.errors import ModelError
from reslab.models import (
    CIFAR_DEPTHS,
    ResNet,
    count_macs,
    count_params,
    create_model,
    list_models,
)

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_resnet_state_dicts.json"
TORCHVISION = json.loads(FIXTURE.read_text())["models"]

# He et al. 2015 Table 6 (CIFAR-10, option A) and He et al. 2016 Table 3, in millions as the
# papers round them, with reslab's exact counts. Both are checked.
PAPER_PARAMS_M = {
    "resnet20": (0.27, 269_722),
    "resnet32": (0.46, 464_154),
    "resnet44": (0.66, 658_586),
    "resnet56": (0.85, 853_018),
    "resnet110": (1.7, 1_727_962),
    "resnet1202": (19.4, 19_421_274),
    "preact_resnet110": (1.7, 1_730_522),
    "preact_resnet164": (1.7, 1_703_258),
}
# Too big for a quick forward/backward on CPU: they build and are counted.
BUILD_ONLY = {"resnet1202", "plain1202", "preact_resnet1001", "resnet101", "resnet152"}


def _decimals(value: float) -> int:
    text = f"{value}"
    return len(text.split(".")[1]) if "." in text else 0


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_trains(name: str) -> None:
    model = create_model(name)
    assert isinstance(model, ResNet)
    assert count_params(model) > 0
    if name in BUILD_ONLY:
        return
    size = 32 if model.input_size[1] == 32 else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, model.fc.out_features)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


@pytest.mark.parametrize(("name", "paper"), PAPER_PARAMS_M.items())
def test_parameter_counts_match_the_papers(name: str, paper: tuple[float, int]) -> None:
    rounded, exact = paper
    n = count_params(create_model(name))
    assert n == exact
    assert round(n / 1e6, _decimals(rounded)) == rounded


def test_preact_1001_matches_the_paper_without_bn() -> None:
    # He et al. 2016 quote 10.2M for ResNet-1001: the count of convolution and fc weights.
    # With BN's scales and shifts (150k more) it is 10.33M.
    model = create_model("preact_resnet1001")
    weights = sum(p.numel() for n, p in model.named_parameters() if "bn" not in n)
    assert round(weights / 1e6, 1) == 10.2
    assert count_params(model) == 10_327_706


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_plain_twin_has_exactly_the_same_parameters_with_option_a(depth: int) -> None:
    res, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    shapes = {k: v.shape for k, v in res.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    assert count_params(res) == count_params(plain)


def test_plain_twin_of_option_b_loses_only_the_projections() -> None:
    res = create_model("resnet56", shortcut="B")
    plain = create_model("plain56", shortcut="B")
    projections = sum(
        p.numel() for m in res.modules() if isinstance(m, Projection) for p in m.parameters()
    )
    assert projections > 0
    assert count_params(res) - count_params(plain) == projections


def test_shortcut_options_order_parameter_counts() -> None:
    a, b, c = (count_params(create_model("resnet20", shortcut=s)) for s in "ABC")
    assert a < b < c


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_state_dict_matches_torchvision(name: str) -> None:
    model = create_model(name)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == TORCHVISION[name]["state_dict"]
    assert count_params(model) == TORCHVISION[name]["params"]


def test_torchvision_layout_loads_strict() -> None:
    src = create_model("resnet18")
    # A state_dict with torchvision's keys (same order, same shapes) loads with strict=True.
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in
             src.state_dict().items()}  # fmt: skip
    dst = create_model("resnet18")
    dst.load_state_dict(state, strict=True)
    assert torch.equal(dst.fc.weight, state["fc.weight"])


@pytest.mark.parametrize("name", ["resnet20", "plain20", "preact_resnet110", "resnet50"])
def test_zero_init_residual_blocks_start_as_their_shortcuts(name: str) -> None:
    model = create_model(name.replace("plain", "resnet"), zero_init_residual=True).eval()
    captured: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: captured.append((m, i[0], o)))
        for b in model.blocks()
    ]
    size = model.input_size[1] if model.input_size[1] == 32 else 64
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
        for h in hooks:
            h.remove()
        for block, x, out in captured:
            if isinstance(block.shortcut, Projection):
                pre = block.relu(block.bn1(x)) if model.preact else x
                skip = block.shortcut(pre)
                skip = skip if model.preact else torch.relu(skip)
            else:
                skip = block.shortcut(x)
            assert torch.equal(out, skip)


def test_zero_init_with_plain_is_refused() -> None:
    with pytest.raises(ModelError, match="zero_init_residual"):
        create_model("plain20", zero_init_residual=True)


def test_option_a_model_survives_torch_save_and_deepcopy() -> None:
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # the model this test just saved
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))


def test_overrides() -> None:
    model = create_model("resnet20", num_classes=100, in_channels=1, width=2)
    assert model.fc.out_features == 100
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 32
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 100)
    assert create_model("resnet20", shortcut="B", plain=True).plain
    assert create_model("resnet20").reslab_config == {"name": "resnet20"}
    assert create_model("plain74", width=0.5).reslab_config == {"name": "plain74", "width": 0.5}


def test_any_valid_cifar_depth_by_name() -> None:
    assert len(create_model("resnet74").blocks()) == 36
    assert create_model("plain74").plain
    assert len(create_model("preact_resnet56").blocks()) == 27


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet21", {}, r"depth 21 is not 6n\+2: try 20, 32, 44, 56, 110"),
        ("resnet20x", {}, "unknown model 'resnet20x'.*did you mean"),
        ("preact_resnet165", {"block": "bottleneck"}, r"not 9n\+2"),
        ("resnet20", {"shortcut": "Z"}, "not one of A, B, C"),
        ("resnet20", {"colour": "red"}, "no option colour"),
        ("resnet20", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnet20", {"width": -1}, "width must be a positive number"),
    ],
)
def test_bad_names_and_options_raise_value_errors(
    name: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_list_models_covers_the_papers() -> None:
    names = list_models()
    for depth in CIFAR_DEPTHS:
        assert f"resnet{depth}" in names and f"plain{depth}" in names
    for name in ["preact_resnet164", "preact_resnet1001", "resnet18", "resnet152", "plain34"]:
        assert name in names
    assert list_models("^plain") == [n for n in names if n.startswith("plain")]


def test_macs_match_known_figures() -> None:
    # ResNet-50 is 4.09 GMACs at 224x224; ResNet-18 1.81; CIFAR ResNet-20 about 41M.
    assert round(count_macs(create_model("resnet50")) / 1e9, 2) == 4.09
    assert round(count_macs(create_model("resnet18")) / 1e9, 2) == 1.81
    assert round(count_macs(create_model("resnet20")) / 1e6) == 41


def test_cifar_names_never_mean_an_imagenet_net() -> None:
    from reslab.models import cifar_model_name

    assert cifar_model_name(56, plain=False) == "resnet56"
    assert cifar_model_name(50, plain=False) == "cifar_resnet50"
    res, plain = (create_model(cifar_model_name(50, p)) for p in (False, True))
    assert res.input_size == plain.input_size == (3, 32, 32)
    assert res.depth == plain.depth == 50 and plain.plain
    assert count_params(res) == count_params(plain)
    with pytest.raises(ModelError, match=r"not 6n\+2"):
        cifar_model_name(18, plain=False)
