"""The landscape math against hand computations: directions, the loss at points, the numbers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.measure.landscape import (
    ScanSettings,
    circle_coeffs,
    curvature_at_origin,
    direction_dot,
    evaluate_points,
    hessian_extremes,
    is_perturbed,
    loss_curve,
    loss_surface,
    model_params,
    nonconvex_fraction,
    normalize_filters,
    radius_rise,
    random_direction,
    scan,
    symmetric_range,
)
from reslab.models import create_model


class Tiny(nn.Module):
    """conv (with bias) + BN + ReLU + linear (with bias): every kind of parameter once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _warm_bn(model: nn.Module, x: Tensor) -> None:
    """Give BN non-trivial running statistics, so eval mode differs from train mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + torch.randn_like(x))
    model.eval()


@pytest.fixture
def tiny() -> tuple[Tiny, Tensor, Tensor]:
    torch.manual_seed(1)
    model = Tiny()
    x = torch.randn(20, 1, 4, 4)
    y = torch.randint(0, 5, (20,))
    _warm_bn(model, x)
    with torch.no_grad():  # BN affine parameters away from 1/0, so "zero direction" is visible
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    return model, x, y


@pytest.fixture
def digits_net() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(2)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    x = torch.randn(48, 1, 8, 8)
    y = torch.randint(0, 10, (48,))
    _warm_bn(model, x)
    return model, x, y


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bit_identical(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# --- filter normalisation ----------------------------------------------------------------------


def test_filter_normalisation_matches_a_hand_computation(tiny: tuple[Tiny, Tensor, Tensor]) -> None:
    model, _, _ = tiny
    params = model_params(model)
    gen = torch.Generator().manual_seed(7)
    raw = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    d = normalize_filters(raw, params)

    for name in ("conv.weight", "fc.weight"):
        w, r = params[name].tolist(), raw[name].tolist()
        for j in range(len(w)):  # each output channel / output row, by hand
            w_flat = torch.tensor(w[j]).flatten().tolist()
            r_flat = torch.tensor(r[j]).flatten().tolist()
            w_norm = math.sqrt(sum(v * v for v in w_flat))
            r_norm = math.sqrt(sum(v * v for v in r_flat))
            expected = [v * w_norm / r_norm for v in r_flat]
            got = d[name][j].flatten().tolist()
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
            assert d[name][j].norm().item() == pytest.approx(w_norm, rel=1e-5)
            # the direction of the filter is the raw draw's (a positive rescaling only)
            cos = F.cosine_similarity(d[name][j].flatten(), raw[name][j].flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-6)
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert not is_perturbed(params[name])
        assert torch.count_nonzero(d[name]) == 0, name
    assert set(d) == set(params)  # BN running stats are buffers: no direction at all


def test_normalize_filters_rejects_mismatched_directions(tiny: tuple[Tiny, Tensor, Tensor]) -> None:
    params = model_params(tiny[0])
    with pytest.raises(ValueError, match="different tensors"):
        normalize_filters({k: v for k, v in params.items() if k != "fc.bias"}, params)
    bad = dict(params, **{"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="shape"):
        normalize_filters(bad, params)


def test_random_direction_is_seeded_and_filter_normalised(
    digits_net: tuple[nn.Module, Tensor, Tensor],
) -> None:
    model = digits_net[0]
    a, b, c = random_direction(model, 0), random_direction(model, 0), random_direction(model, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    for name, w in model.named_parameters():
        if w.dim() > 1:
            assert torch.allclose(a[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
        else:
            assert torch.count_nonzero(a[name]) == 0
    # two draws in ~270k dimensions are nearly orthogonal (the paper relies on it)
    cos = direction_dot(a, c) / math.sqrt(direction_dot(a, a) * direction_dot(c, c))
    assert abs(cos) < 0.05


def test_plain_twin_gets_the_same_raw_draw() -> None:
    res = create_model("resnet20", in_channels=1)
    plain = create_model("plain20", in_channels=1)
    dr, dp = random_direction(res, 5), random_direction(plain, 5)
    assert dr.keys() == dp.keys()
    for k in dr:  # same draw, each scaled to its own filters: equal up to a positive factor
        if dr[k].dim() > 1:
            cos = F.cosine_similarity(dr[k][0].flatten(), dp[k][0].flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-5)


# --- the loss at points --------------------------------------------------------------------------


def test_origin_is_the_models_own_loss(digits_net: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = digits_net
    with torch.no_grad():
        logits = model(x)
    own_loss = F.cross_entropy(logits, y).item()
    own_error = 100.0 * (logits.argmax(1) != y).float().mean().item()
    d1, d2 = random_direction(model, 0), random_direction(model, 1)
    for batch_size in (48, 7):  # one chunk, and uneven chunks
        pts = evaluate_points(model, x, y, [d1, d2], [(0.0, 0.0)], batch_size=batch_size)
        assert pts.loss[0] == pytest.approx(own_loss, rel=1e-6)
        assert pts.error[0] == pytest.approx(own_error)
    alphas = symmetric_range(1.0, 5)
    curve = loss_curve(model, x, y, d1, alphas)
    assert curve.loss[2] == pytest.approx(own_loss, rel=1e-6)


def test_a_point_equals_the_loss_of_the_moved_weights(tiny: tuple[Tiny, Tensor, Tensor]) -> None:
    model, x, y = tiny
    d1, d2 = random_direction(model, 0), random_direction(model, 1)
    a, b = 0.3, -0.7
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(a * d1[name] + b * d2[name])
        expected = F.cross_entropy(moved(x), y).item()
    got = evaluate_points(model, x, y, [d1, d2], [(a, b)]).loss[0]
    assert got == pytest.approx(expected, rel=1e-5)
    # BN and bias entries really stay: moving them too would change the answer
    assert torch.equal(moved.bn.weight, model.bn.weight)
    assert torch.equal(moved.fc.bias, model.fc.bias)


def test_grid_is_centred_and_the_weights_are_bit_identical(
    digits_net: tuple[nn.Module, Tensor, Tensor],
) -> None:
    model, x, y = digits_net
    model.train()  # the scan runs in eval mode and gives the mode back
    before = _state(model)
    d1, d2 = random_direction(model, 0), random_direction(model, 1)
    grid = symmetric_range(1.0, 5)
    assert grid == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert all(grid[i] == -grid[-1 - i] for i in range(5))
    surf = loss_surface(model, x, y, d1, d2, grid, grid, batch_size=16)
    curve = loss_curve(model, x, y, d1, grid)
    assert model.training
    _assert_bit_identical(model, before)

    model.eval()
    with torch.no_grad():
        own = F.cross_entropy(model(x), y).item()
    assert len(surf.loss) == len(surf.loss[0]) == 5
    assert surf.loss[2][2] == pytest.approx(own, rel=1e-6)
    # the β = 0 row of the surface is the 1-D curve along d1
    assert [row[2] for row in surf.loss] == pytest.approx(curve.loss, rel=1e-6)
    assert surf.loss[4][1] == pytest.approx(
        evaluate_points(model, x, y, [d1, d2], [(1.0, -0.5)]).loss[0], rel=1e-6
    )
    assert max(max(r) for r in surf.loss) > own  # a random step of norm ‖θ‖ costs loss


def test_symmetric_range_needs_an_odd_count() -> None:
    assert symmetric_range(2.0, 3) == [-2.0, 0.0, 2.0]
    for bad in (1, 4):
        with pytest.raises(ValueError, match="odd"):
            symmetric_range(1.0, bad)


def test_scan_is_consistent_with_its_parts(tiny: tuple[Tiny, Tensor, Tensor]) -> None:
    model, x, y = tiny
    before = _state(model)
    settings = ScanSettings(grid=5, curve=7, ring_radius=0.4, ring_points=6, seed=3)
    out = scan(model, x, y, settings)
    _assert_bit_identical(model, before)
    with torch.no_grad():
        own = F.cross_entropy(model(x), y).item()
    assert out["loss_origin"] == pytest.approx(own, rel=1e-6, abs=1e-6)  # float32 CE
    assert out["curve_loss"][3] == out["loss_origin"]  # type: ignore[index]
    d1, d2 = random_direction(model, 6), random_direction(model, 7)
    ring = evaluate_points(model, x, y, [d1, d2], circle_coeffs(0.4, 6)).loss
    assert out["ring_loss"] == ring
    assert out["rise"] == radius_rise(out["loss_origin"], ring)  # type: ignore[arg-type]
    assert out["nonconvex"] == nonconvex_fraction(out["loss"])  # type: ignore[arg-type]
    assert "hessian_ratio" not in out
    with_h = scan(model, x, y, ScanSettings(grid=3, curve=3, hessian_iterations=3))
    assert with_h["lambda_max"] > 0  # type: ignore[operator]
    with pytest.raises(ValueError, match="odd"):
        ScanSettings(grid=4)


# --- the numbers ---------------------------------------------------------------------------------


def test_curvature_and_radius_rise_on_a_known_function() -> None:
    alphas = symmetric_range(1.0, 11)
    losses = [3 * a * a + a + 0.5 for a in alphas]
    assert curvature_at_origin(alphas, losses) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        curvature_at_origin(alphas[:-1], losses[:-1])
    ring = [2 * (a * a + b * b) + 1.0 for a, b in circle_coeffs(0.5, 16)]
    assert radius_rise(1.0, ring) == pytest.approx(0.5)
    assert radius_rise(1.0, [2.0, math.nan]) == math.inf
    pts = circle_coeffs(2.0, 8)
    assert all(math.hypot(a, b) == pytest.approx(2.0) for a, b in pts)
    assert pts[0] == (2.0, 0.0)


def test_nonconvex_fraction_tells_a_bowl_from_a_saddle() -> None:
    g = symmetric_range(1.0, 7)
    bowl = [[a * a + 2 * b * b for b in g] for a in g]
    saddle = [[a * a - b * b for b in g] for a in g]
    ridge = [[-abs(a) + 0.0 * b for b in g] for a in g]  # bends down only on the α = 0 column
    assert nonconvex_fraction(bowl) == 0.0
    assert nonconvex_fraction(saddle) == 1.0
    assert nonconvex_fraction(ridge) == pytest.approx(1 / 5)
    broken = [row[:] for row in bowl]
    broken[3][3] = math.inf
    assert nonconvex_fraction(broken) > 0.0


def test_hessian_extremes_match_the_full_hessian() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    before = _state(model)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(flat: Tensor) -> Tensor:
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = flat[i : i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    got = hessian_extremes(model, x, y, iterations=300)
    _assert_bit_identical(model, before)
    assert got.lambda_max == pytest.approx(eig[-1].item(), rel=1e-3)
    assert got.lambda_min == pytest.approx(eig[0].item(), rel=2e-2, abs=1e-4)
    assert got.ratio == pytest.approx(abs(eig[0].item() / eig[-1].item()), rel=3e-2, abs=1e-3)
