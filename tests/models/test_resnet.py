"""The ResNet class and its factories, against the papers' parameter counts and torchvision."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from reslab.blocks import BasicBlock, Bottleneck, Projection
from reslab.errors import ModelError
from reslab.models import (
    CIFAR_DEPTHS,
    ResNet,
    ResNetLayout,
    cifar_layout,
    cifar_resnet,
    count_params,
    create_model,
    imagenet_layout,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "torchvision_resnet_state_dicts.json"
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


def _decimals(value: float) -> int:
    text = f"{value}"
    return len(text.split(".")[1]) if "." in text else 0


def _projection_params(model: torch.nn.Module) -> int:
    return sum(
        p.numel() for m in model.modules() if isinstance(m, Projection) for p in m.parameters()
    )


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


@pytest.mark.parametrize("depth", CIFAR_DEPTHS[:5])
def test_plain_twin_has_exactly_the_same_parameters_with_option_a(depth: int) -> None:
    res, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    shapes = {k: v.shape for k, v in res.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    assert count_params(res) == count_params(plain)


@pytest.mark.parametrize(
    ("residual", "plain"),
    [("resnet56", "plain56"), ("preact_resnet164", "preact_plain164"), ("resnet50", "plain50")],
)
def test_plain_twin_of_option_b_loses_only_the_projections(residual: str, plain: str) -> None:
    res = create_model(residual, shortcut="B")
    twin = create_model(plain, shortcut="B")
    projections = _projection_params(res)
    assert projections > 0 and _projection_params(twin) == 0
    assert count_params(res) - count_params(twin) == projections


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


def test_layout_fixes_the_shapes_and_the_model_keeps_its_options() -> None:
    layout = cifar_layout(56, shortcut="b", width=0.5)
    assert layout == ResNetLayout(BasicBlock, (9, 9, 9), (8, 16, 32), shortcut="B")
    assert (layout.depth, layout.input_size, layout.preact) == (56, (3, 32, 32), False)
    torch.manual_seed(0)
    model = ResNet.from_layout(layout)
    torch.manual_seed(0)
    direct = cifar_resnet(56, shortcut="B", width=0.5)
    assert (model.shortcut_option, model.depth, model.input_size) == ("B", 56, (3, 32, 32))
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), direct.parameters(), strict=True)
    )
    deep = imagenet_layout(152)
    assert deep.block is Bottleneck and deep.layers == (3, 8, 36, 3) and deep.depth == 152


def test_preact_factory_follows_he_et_al_2016() -> None:
    # Option B, and bottlenecks where 9n+2 fits from 164 layers up; 110 stays basic.
    assert cifar_layout(110, preact=True).block.branch_convs == 2
    assert cifar_layout(164, preact=True).block.branch_convs == 3
    assert cifar_layout(164).block.branch_convs == 2  # the post-activation net is 6n+2
    assert {cifar_layout(d, preact=True).shortcut for d in (56, 110, 164)} == {"B"}
    assert cifar_layout(110, preact=True, shortcut="A").shortcut == "A"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stem": "tiny"}, "stem 'tiny' is not one of 'cifar', 'imagenet'"),
        ({"num_classes": -1}, "num_classes must be an integer ≥ 0 .0: no classifier., got -1"),
        ({"in_channels": True}, "in_channels must be a positive integer, got True"),
        ({"shortcut": "D"}, "shortcut option 'D' is not one of A, B, C"),
    ],
)
def test_a_bad_layout_is_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ResNetLayout(BasicBlock, (1, 1, 1), (16, 32, 64), **kwargs)  # type: ignore[arg-type]
