"""timm's model API on every registered net (reslab.models.timm_api, reslab.blocks.drop)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reslab.blocks import BasicBlock
from reslab.blocks.drop import DropPath, drop_path
from reslab.errors import ModelError
from reslab.models import create_model, list_models, model_layout
from reslab.train.config import TrainConfig, model_options

# One small net per family, residual and plain, and the blocks the options swap in: built for
# real and compared number for number.
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("resnet8", {"width": 0.5}),
    ("plain8", {"width": 0.5}),
    ("preact_resnet8", {"width": 0.5}),
    ("resnet18", {"width": 0.125}),
    ("resnet50", {"width": 0.0625}),
    ("wrn10_1", {}),
    ("resnext11_2x4d", {"width": 0.25}),
    ("resnet8", {"init": "fixup", "norm": "none", "width": 0.5}),
]


def _x(model: nn.Module, n: int = 2) -> torch.Tensor:
    c, h, _ = model.pretrained_cfg["input_size"]
    side = 32 if h == 32 else 64  # ImageNet nets: 64×64 is enough here
    return torch.randn(n, c, side, side)


def _built(name: str, seed: int = 0, **options: Any) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **options)


# Every registered name but the four of 1000+ layers, which are ResNet-110's and
# pre-activation ResNet-110's classes and blocks, deeper (their forward takes seconds here).
REGISTERED = [n for n in list_models() if model_layout(n).depth <= 200]


def test_the_registry_loop_leaves_out_only_the_deepest_nets() -> None:
    left_out = set(list_models()) - set(REGISTERED)
    assert left_out == {"resnet1202", "plain1202", "preact_resnet1001", "preact_plain1001"}


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_net_has_timms_api(name: str) -> None:
    """Shapes and attributes, at a sixteenth of the width: the same modules, cheaply."""
    model = create_model(name, width=0.0625)
    layout = model_layout(name)
    x = _x(model)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features)
    assert model.num_features == model.feature_info[-1]["num_chs"] == model.fc.in_features
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, model.num_classes) == (2, layout.num_classes)
    assert model.get_classifier() is model.fc
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert cfg["input_size"] == layout.input_size and cfg["num_classes"] == layout.num_classes
    assert len(cfg["mean"]) == len(cfg["std"]) == layout.in_channels
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.reslab_config["num_classes"] == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0


@pytest.mark.parametrize(("name", "options"), FAMILIES)
def test_forward_is_the_head_of_the_features_and_num_classes_0_its_pre_logits(
    name: str, options: dict[str, Any]
) -> None:
    model = _built(name, **options).eval()
    headless = _built(name, num_classes=0, **options).eval()
    # The same weights but the head: a classifier's checkpoint loads into the headless net.
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    headless.load_state_dict(trunk, strict=True)
    x = _x(model)
    with torch.no_grad():
        out = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.equal(out, model.forward_head(model.forward_features(x)))
        assert torch.equal(out, model.fc(pooled))
        assert torch.equal(headless(x), pooled)
        model.reset_classifier(0)
        assert torch.equal(model(x), pooled)


def test_reset_classifier_gives_a_new_head_and_refuses_a_bad_count() -> None:
    model = _built("resnet8", width=0.5)
    old = model.fc
    model.reset_classifier(3)
    assert model.fc is not old and model.fc.out_features == 3 and model.num_classes == 3
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ModelError, match="num_classes must be an integer ≥ 0"):
            model.reset_classifier(bad)  # type: ignore[arg-type]


# --- stochastic depth -------------------------------------------------------------------------


@given(rate=st.floats(0.0, 0.99))
def test_drop_path_decays_linearly_with_depth_to_the_given_rate(rate: float) -> None:
    model = create_model("resnet14", width=0.25, drop_path_rate=rate)
    got = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in model.blocks()]
    n = len(got)
    assert got == pytest.approx([rate * (i + 1) / n for i in range(n)])  # arXiv:1603.09382 Eq. 4


@pytest.mark.parametrize("name", ["plain20", "preact_plain110", "plain_wrn16_8", "plain18"])
def test_drop_path_is_refused_on_a_plain_twin_in_one_line(name: str) -> None:
    with pytest.raises(ModelError, match="a plain net has none") as info:
        model_layout(name, drop_path_rate=0.1)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="a plain net has none"):
        model_layout(
            name.replace("plain_", "").replace("plain", "resnet"), drop_path_rate=0.1, plain=True
        )


@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_a_dropped_block_is_its_shortcut_and_a_kept_one_scales_its_branch(
    p: float, seed: int
) -> None:
    torch.manual_seed(seed)
    block = BasicBlock(4, 4, shortcut="A").train()
    block.set_drop_path(p)
    x = torch.randn(16, 4, 5, 5)
    torch.manual_seed(seed + 1)
    out = block(x)
    branch = block.branch(x)  # training-mode BN: the same batch statistics as in the forward
    dropped = torch.relu(x)
    kept = torch.relu(x + branch / (1 - p))
    for i in range(len(x)):
        assert torch.allclose(out[i], dropped[i]) or torch.allclose(out[i], kept[i], atol=1e-5)
    block.eval()
    assert torch.equal(block(x), torch.relu(x + block.branch(x)))  # eval: the plain forward


def test_drop_path_drops_whole_samples_at_its_rate() -> None:
    torch.manual_seed(0)
    out = drop_path(torch.ones(20_000, 3), 0.3, training=True)
    kept = (out[:, 0] > 0).float()
    assert torch.equal(out[:, 0], out[:, 2]) and abs(kept.mean().item() - 0.7) < 0.02
    assert torch.allclose(out[kept > 0], torch.full_like(out[kept > 0], 1 / 0.7))


def test_drop_rate_is_dropout_before_the_classifier_and_wide_nets_keep_theirs() -> None:
    net = _built("resnet8", width=0.5, drop_rate=0.5).train()
    features = torch.rand(64, net.num_features, 2, 2)
    pooled = net.forward_head(features, pre_logits=True)
    mean = features.mean((2, 3))
    assert torch.allclose(pooled[pooled != 0], (2 * mean)[pooled != 0])
    assert 0.3 < (pooled == 0).float().mean().item() < 0.7
    assert torch.equal(net.eval().forward_head(features, pre_logits=True), mean)
    wide = create_model("wrn10_1", drop_rate=0.3)
    assert wide.drop_rate == 0.0 and wide.layer1[0].dropout.p == 0.3  # WRN §2.3: in the block


def test_the_trainer_flags_reach_the_net() -> None:
    config = TrainConfig(model="resnet8", drop_rate=0.2, drop_path_rate=0.3)
    options = model_options(config)
    assert options == {"drop_rate": 0.2, "drop_path_rate": 0.3}
    net = create_model("resnet8", **options)
    assert net.drop_rate == 0.2 and net.blocks()[-1].drop_path.p == pytest.approx(0.3)
    assert model_options(TrainConfig(model="resnet8")) == {}  # a default run is unchanged


# --- gradient checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet8", {"width": 0.5, "drop_path_rate": 0.5}),
        ("preact_resnet8", {"width": 0.5}),
        ("resnet18", {"width": 0.125}),
    ],
)
def test_grad_checkpointing_gives_the_same_gradients(name: str, options: dict[str, Any]) -> None:
    """Recomputed blocks replay the RNG, so even stochastic depth draws the same masks."""
    grads = []
    for checkpointed in (False, True):
        model = _built(name, **options).train()
        model.set_grad_checkpointing(checkpointed)
        calls: list[int] = []
        model.blocks()[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(1)
        x = _x(model, 4)
        torch.manual_seed(2)
        model(x).square().mean().backward()
        assert len(calls) == (2 if checkpointed else 1)  # recomputed in the backward pass
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k
