"""Feature maps in timm's convention: feature_info, forward_intermediates, features_only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from reslab.errors import ModelError
from reslab.models import ResNet, ResNetFeatures, create_model, list_models, model_layout
from reslab.weights import load_model, save_weights

CIFAR_REDUCTION = [1, 1, 2, 4]
IMAGENET_REDUCTION = [2, 4, 8, 16, 32]
# Channels of each map at full width, from the papers' tables (stem first).
CHANNELS = {
    "resnet": [16, 16, 32, 64],
    "plain": [16, 16, 32, 64],
    "preact_resnet": [16, 16, 32, 64],
    "preact_plain": [16, 16, 32, 64],
    "resnet_imagenet": [64, 64, 128, 256, 512],  # 18, 34
    "resnet_imagenet_bottleneck": [64, 256, 512, 1024, 2048],  # 50, 101, 152
    "wrn16_8": [16, 128, 256, 512],
    "wrn28_10": [16, 160, 320, 640],
    "wrn40_4": [16, 64, 128, 256],
    "resnext29": [64, 256, 512, 1024],
    "resnext50": [64, 256, 512, 1024, 2048],
}


def _family(name: str) -> str:
    """The registry's families: a name without its depth and plain prefix/infix."""
    return re.sub(r"\d+", "N", name.replace("plain_", "").replace("plain", "resnet"))


def _expected_channels(name: str) -> list[int]:
    layout = model_layout(name)
    bare = name.replace("plain_", "")
    for key in ("wrn16_8", "wrn28_10", "wrn40_4", "resnext29", "resnext50"):
        if bare.startswith(key):
            return CHANNELS[key]
    if layout.stem == "imagenet":
        bottleneck = layout.block.expansion == 4
        return CHANNELS["resnet_imagenet_bottleneck" if bottleneck else "resnet_imagenet"]
    return CHANNELS["preact_resnet" if name.startswith("preact_") else "resnet"]


# The shallowest registered net of every family, plain twins as families of their own.
_SHALLOWEST: dict[tuple[str, str, bool], str] = {}
for _name in list_models():
    _key = (_family(_name), model_layout(_name).stem, model_layout(_name).plain)
    if _key not in _SHALLOWEST or model_layout(_name).depth < model_layout(_SHALLOWEST[_key]).depth:
        _SHALLOWEST[_key] = _name
FAMILIES = sorted(_SHALLOWEST.values())


def test_the_families_cover_the_registry() -> None:
    assert len(FAMILIES) == 12  # 6 families and their twins
    assert {"wrn16_8", "plain_wrn16_8", "resnext29_8x64d", "plain_resnext29_8x64d"} <= set(FAMILIES)
    assert {"resnext50_32x4d", "plain_resnext50_32x4d", "resnet18", "plain18"} <= set(FAMILIES)
    assert {"preact_resnet110", "preact_plain110", "resnet20", "plain20"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_features_only_shapes_for_every_family(name: str) -> None:
    # At full width on the meta device, at the native input size: shapes, no arithmetic.
    with torch.device("meta"):
        features = create_model(name, features_only=True)
        x = torch.zeros(2, *features.input_size)
    maps = features(x)
    stem = model_layout(name).stem
    reduction = CIFAR_REDUCTION if stem == "cifar" else IMAGENET_REDUCTION
    side = x.shape[-1]
    channels = _expected_channels(name)
    expected = [(2, c, side // r, side // r) for c, r in zip(channels, reduction, strict=True)]
    assert [tuple(m.shape) for m in maps] == expected
    assert features.feature_info.channels() == _expected_channels(name)
    assert features.feature_info.reduction() == reduction
    assert features.feature_info.module_name()[1:] == [f"layer{i}" for i in range(1, len(maps))]


def _hooked_maps(model: ResNet, x: Tensor) -> list[Tensor]:
    """Each feature_info module's output, copied as the module returns it."""
    seen: list[Tensor] = []
    modules = dict(model.named_modules())
    hooks = [
        modules[info["module"]].register_forward_hook(lambda m, i, out: seen.append(out.clone()))
        for info in model.feature_info
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize(
    ("name", "options", "side"),
    [
        ("resnet20", {"width": 0.5}, 8),
        ("plain20", {"width": 0.5}, 8),
        ("preact_resnet20", {"width": 0.5}, 8),
        ("resnet8", {"activation": "relu_preact", "width": 0.5}, 8),  # its final ReLU in place
        ("resnet18", {"width": 0.25}, 32),
        ("wrn16_8", {"width": 0.125, "drop_rate": 0.3}, 8),
        ("plain_resnext29_8x64d", {"width": 0.125}, 8),
        ("resnext50_32x4d", {"width": 0.125}, 32),
    ],
)
def test_forward_intermediates_are_the_stages_outputs(
    name: str, options: dict[str, Any], side: int
) -> None:
    model = create_model(name, **options).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        hooked = _hooked_maps(model, x)
        final, maps = model.forward_intermediates(x)
        features = model.features(x)
        assert len(maps) == len(hooked) == len(model.feature_info)
        for got, want in zip(maps, hooked, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(final, features, rtol=0, atol=0)
        headless = ResNetFeatures(model)
        for got, want in zip(headless(x), hooked, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info]


def test_indices_in_timms_convention() -> None:
    model = create_model("resnet18", width=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        assert isinstance(every, list) and len(every) == 5

        def take(indices: Any, **kw: Any) -> list[Tensor]:
            out = model.forward_intermediates(x, indices, intermediates_only=True, **kw)
            assert isinstance(out, list)
            return out

        def same(a: list[Tensor], b: list[Tensor]) -> bool:
            return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))

        assert same(take(2), every[3:])  # an int: the last n
        assert same(take([-1]), every[4:])
        assert same(take((0, -2)), [every[0], every[3]])
        assert same(take([3, 1]), [every[1], every[3]])  # in forward order, as timm's
        # stop_early: the later stages do not run, and the first item is the deepest map.
        ran: list[str] = []
        for n in ("layer3", "layer4"):
            getattr(model, n).register_forward_hook(lambda m, i, o, n=n: ran.append(n))
        final, maps = model.forward_intermediates(x, [1, 2], stop_early=True)
        assert ran == [] and torch.equal(final, maps[-1]) and same(maps, every[1:3])


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([5], r"feature index 5 is out of range: this net has 5 feature maps, indices 0 to 4"),
        ([-6], "feature index -6 is out of range"),
        (0, r"take the last n feature maps with 1 <= n <= 5, got 0"),
        (6, r"1 <= n <= 5, got 6"),
        ([], "feature indices must be None, an int or a non-empty list of ints, got"),
        ("1", "feature indices must be None, an int or a non-empty list"),
        ([1.0], r"feature index 1\.0 is out of range"),
    ],
)
def test_bad_indices_are_one_line_model_errors(indices: Any, message: str) -> None:
    with torch.device("meta"):
        model = create_model("resnet18")
        x = torch.zeros(1, 3, 64, 64)
    for call in (
        lambda: model.forward_intermediates(x, indices),
        lambda: create_model("resnet18", width=0.125, features_only=True, out_indices=indices),
    ):
        with pytest.raises(ModelError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_norm_gives_the_last_map_after_the_final_bn_relu() -> None:
    model = create_model("preact_resnet20", width=0.5).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True)
        _, raw = model.forward_intermediates(x)
        torch.testing.assert_close(maps[-1], final, rtol=0, atol=0)
        torch.testing.assert_close(maps[-1], model.bn_final(raw[-1]), rtol=0, atol=0)
        assert not torch.equal(maps[-1], raw[-1]) and torch.equal(maps[0], raw[0])
    with pytest.raises(ModelError, match="output_fmt must be 'NCHW', got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_features_only_drops_the_head_and_the_unused_stages(tmp_path: Path) -> None:
    torch.manual_seed(0)
    features = create_model("resnet20", width=0.5, features_only=True, out_indices=(0, -2))
    assert features.out_indices == (0, 2) and features.feature_info.channels() == [8, 16]
    keys = set(features.state_dict())
    torch.manual_seed(0)
    full = create_model("resnet20", width=0.5)
    # The net's own keys, minus fc and layer3: its weights load into it.
    assert keys == {k for k in full.state_dict() if not k.startswith(("fc.", "layer3."))}
    assert not hasattr(features, "layer3") and not hasattr(features, "fc")
    features.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = full.eval().forward_intermediates(x, (0, 2), intermediates_only=True)
        got = features(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        # The weights file's header rebuilds the headless net.
        save_weights(features, tmp_path / "f.safetensors")
        again = load_model(tmp_path / "f.safetensors").eval()
        assert isinstance(again, ResNetFeatures) and again.out_indices == (0, 2)
        assert all(torch.equal(a, b) for a, b in zip(again(x), got, strict=True))
    assert isinstance(create_model("wrn16_8", width=0.125, features_only=False), ResNet)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_indices": (1, 2)}, "out_indices chooses feature maps: it needs features_only=True"),
        ({"features_only": "yes"}, "features_only must be True or False, got 'yes'"),
    ],
)
def test_features_options_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        create_model("resnet20", **kwargs)


def test_feature_info_is_timms_list_of_dicts() -> None:
    model = create_model("resnet18", width=0.25)
    assert model.feature_info[0] == {"num_chs": 16, "reduction": 2, "module": "relu"}
    assert model.feature_info[-1] == {"num_chs": 128, "reduction": 32, "module": "layer4"}
    info = create_model("resnet18", width=0.25, features_only=True, out_indices=2).feature_info
    assert len(info) == 2 and info[0]["module"] == "layer3" and info.reduction() == [16, 32]
    assert [d["index"] for d in info.get_dicts()] == [3, 4]
