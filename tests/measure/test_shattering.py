"""The shattering measurement against references: numpy for the correlations, autograd one
sample at a time for the gradients, closed forms where a sequence has one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from reslab.blocks import Residual, ResidualMLP
from reslab.errors import ModelError
from reslab.measure.shattering import (
    MLPStack,
    Shattering,
    autocorrelation,
    calibrate_batchnorm,
    input_gradients,
    interpolation_path,
    lagged_correlation,
    line_inputs,
    line_shattering,
    mlp_stack,
    path_shattering,
    seeded,
)
from reslab.models import create_model

# --- autocorrelation of a scalar sequence ----------------------------------------------------


def _numpy_acf(g: np.ndarray, max_lag: int) -> np.ndarray:
    """The reference: numpy's full correlation of the centred sequence, over its lag 0."""
    c = g - g.mean()
    full = np.correlate(c, c, mode="full")[c.size - 1 :]
    return full[: max_lag + 1] / full[0]


def test_autocorrelation_matches_numpy_on_a_random_sequence() -> None:
    g = np.random.default_rng(0).normal(size=300).cumsum()
    np.testing.assert_allclose(autocorrelation(g, 40), _numpy_acf(g, 40), rtol=1e-12, atol=1e-14)


def test_autocorrelation_of_white_noise_is_near_zero_past_lag_zero() -> None:
    n = 4096
    r = autocorrelation(np.random.default_rng(1).normal(size=n), 20)
    assert r[0] == pytest.approx(1.0)
    assert np.abs(r[1:]).max() < 4 / math.sqrt(n)


def test_autocorrelation_of_a_sinusoid_follows_its_cosine() -> None:
    # A whole number of periods, so the mean is ~0; the edge terms of the lagged sum are at
    # most 1/(2 sin(2π/P)) ≈ 4, against (n-k)/2 ≈ 10^4 for the cosine.
    n, period = 20_000, 50
    t = np.arange(n)
    r = autocorrelation(3.0 + np.sin(2 * np.pi * t / period), 100)
    k = np.arange(101)
    np.testing.assert_allclose(r, (1 - k / n) * np.cos(2 * np.pi * k / period), atol=5e-4)
    assert r[period // 2] == pytest.approx(-(1 - 25 / n), abs=5e-4)  # half a period: -1


def test_autocorrelation_of_a_constant_increment_sequence_has_its_closed_form() -> None:
    # g_t = a + c·t: Σ_{t<n-k} u_t u_{t+k} = (n-k)(n²-2nk-2k²-1)/12 with u_t = t - (n-1)/2.
    n = 64
    r = autocorrelation(-5.0 + 0.25 * np.arange(n), n - 1)
    k = np.arange(n)
    expected = (n - k) * (n**2 - 2 * n * k - 2 * k**2 - 1) / (n * (n**2 - 1))
    np.testing.assert_allclose(r, expected, rtol=1e-12, atol=1e-14)
    assert r[1] > 0.95


def test_autocorrelation_of_a_constant_is_undefined_and_lags_are_checked() -> None:
    assert np.isnan(autocorrelation(np.ones(10), 3)).all()
    for bad in (-1, 10, 2.5):
        with pytest.raises(ValueError, match="max_lag"):
            autocorrelation(np.arange(10.0), bad)  # type: ignore[arg-type]


# --- lagged correlation of a sequence of images -------------------------------------------------


def _corrcoef_reference(g: np.ndarray, max_lag: int) -> np.ndarray:
    flat = g.reshape(len(g), -1)
    return np.array(
        [
            np.mean([np.corrcoef(flat[t], flat[t + k])[0, 1] for t in range(len(flat) - k)])
            for k in range(max_lag + 1)
        ]
    )


def test_lagged_correlation_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(2)
    g = rng.normal(size=(40, 3, 4, 4)).cumsum(axis=0)  # images that drift: correlated
    np.testing.assert_allclose(lagged_correlation(g, 10), _corrcoef_reference(g, 10), rtol=1e-10)


def test_lagged_correlation_known_sequences() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 5, 5))
    scaled = np.stack([(1 + t) * image + t for t in range(8)])  # same image, scale and shift
    np.testing.assert_allclose(lagged_correlation(scaled, 7), np.ones(8), rtol=1e-12)
    flips = np.stack([image * (-1) ** t for t in range(8)])
    np.testing.assert_allclose(lagged_correlation(flips, 2), [1.0, -1.0, 1.0], rtol=1e-12)
    noise = rng.normal(size=(200, 3, 8, 8))  # unrelated images: ≈ 0 (±1/√(192·200) per lag)
    assert np.abs(lagged_correlation(noise, 5)[1:]).max() < 0.02


def test_lagged_correlation_leaves_constant_images_out() -> None:
    g = np.stack([np.arange(6.0), np.zeros(6), np.arange(6.0), np.arange(6.0) ** 2])
    r = lagged_correlation(g, 2)
    # lag 1: every pair has the constant image, or is (arange, arange²): only that one counts.
    assert r[1] == pytest.approx(np.corrcoef(np.arange(6.0), np.arange(6.0) ** 2)[0, 1])
    assert math.isnan(lagged_correlation(np.zeros((3, 4)), 1)[1])
    with pytest.raises(ValueError, match="at least 2 entries"):
        lagged_correlation(np.zeros((5, 1)), 1)


# --- inputs ------------------------------------------------------------------------------------


def test_line_and_path_inputs() -> None:
    x = line_inputs()
    assert x.shape == (256, 1)
    assert (x[0, 0].item(), x[-1, 0].item()) == (-2.0, 2.0)
    a, b = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    path = interpolation_path(a, b, 9)
    assert path.shape == (9, 3, 4, 4)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path[4], (a + b) / 2)
    with pytest.raises(ValueError, match="same shape"):
        interpolation_path(a, b[:1], 9)
    with pytest.raises(ValueError, match="n_points"):
        line_inputs(1)


# --- nets --------------------------------------------------------------------------------------


def test_mlp_stack_layout() -> None:
    res, plain = mlp_stack(3, width=16), mlp_stack(3, width=16, plain=True)
    assert len(res.blocks) == 3 and all(isinstance(b, Residual) for b in res.blocks)
    assert all(b.shortcut is not None for b in res.blocks)
    assert all(b.shortcut is None for b in plain.blocks)
    # the same layers: identical parameter shapes, identical weights under one seed
    assert [p.shape for p in res.parameters()] == [p.shape for p in plain.parameters()]
    for p, q in zip(res.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    layer = mlp_stack(2, width=16, norm="layer")
    assert all(isinstance(b, ResidualMLP) for b in layer.blocks)
    assert isinstance(layer.head[0], nn.LayerNorm)
    assert mlp_stack(0, width=8)(torch.zeros(4, 1)).shape == (4, 1)
    with pytest.raises(ModelError, match="depth"):
        MLPStack(-1)
    with pytest.raises(ModelError, match="norm"):
        MLPStack(2, norm="group")  # type: ignore[arg-type]


def test_he_initialisation() -> None:
    net = mlp_stack(4, width=400, seed=1)
    weight = net.blocks[2].branch[2].weight
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)


def test_seeded_nets_are_reproducible_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = mlp_stack(3, width=16, seed=7)
    b = seeded(7, lambda: create_model("resnet8", in_channels=1))
    assert torch.equal(torch.rand(3), expected)  # the caller's stream went on untouched
    again = mlp_stack(3, width=16, seed=7)
    other = mlp_stack(3, width=16, seed=8)
    for p, q in zip(a.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a.stem.weight, other.stem.weight)
    b2 = seeded(7, lambda: create_model("resnet8", in_channels=1))
    assert torch.equal(b.conv1.weight, b2.conv1.weight)


def test_calibrate_batchnorm_takes_the_batch_statistics() -> None:
    net = mlp_stack(0, width=8, seed=0).double()
    x = line_inputs(50).double()
    train_out = net.train()(x)
    calibrate_batchnorm(net, x)
    bn = net.head[0]
    assert not net.training and not bn.training and bn.momentum == 0.1
    h = net.stem(x)
    torch.testing.assert_close(bn.running_mean, h.mean(0))
    torch.testing.assert_close(bn.running_var, h.var(0, unbiased=True))
    # eval now computes the train-mode function, up to the variance's n/(n-1)
    torch.testing.assert_close(net(x), train_out, rtol=0.03, atol=0.03)


# --- gradients ---------------------------------------------------------------------------------


def _one_at_a_time(model: nn.Module, x: torch.Tensor, output: int) -> torch.Tensor:
    """The reference: plain autograd on a batch of one, point by point."""
    grads = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, output], xi)
        grads.append(g[0])
    return torch.stack(grads)


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("plain", [False, True])
def test_mlp_gradients_match_autograd_one_sample_at_a_time(norm: str, plain: bool) -> None:
    net = mlp_stack(5, width=32, plain=plain, norm=norm, seed=3).double()  # type: ignore[arg-type]
    x = line_inputs(40).double()
    calibrate_batchnorm(net, x)
    batched = input_gradients(net, x)
    torch.testing.assert_close(batched, _one_at_a_time(net, x, 0), rtol=1e-10, atol=1e-12)
    # Chunks change only the matmuls' blocking: the same numbers to rounding.
    torch.testing.assert_close(input_gradients(net, x, chunk=7), batched, rtol=1e-12, atol=0)
    perm = torch.randperm(len(x))
    torch.testing.assert_close(input_gradients(net, x[perm]), batched[perm], rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["resnet8", "plain8", "preact_resnet8"])
def test_conv_net_gradients_match_autograd_one_sample_at_a_time(name: str) -> None:
    net = seeded(0, lambda: create_model(name, in_channels=1, num_classes=10)).double()
    calibrate_batchnorm(net, torch.randn(64, 1, 8, 8, dtype=torch.float64))
    path = interpolation_path(torch.randn(1, 8, 8).double(), torch.randn(1, 8, 8).double(), 12)
    batched = input_gradients(net, path, output=3, chunk=5)
    assert batched.shape == path.shape
    torch.testing.assert_close(batched, _one_at_a_time(net, path, 3), rtol=1e-9, atol=1e-12)


def test_input_gradients_refuse_train_mode_and_bad_outputs() -> None:
    net = mlp_stack(2, width=8)
    with pytest.raises(ModelError, match="eval mode"):
        input_gradients(net.train(), line_inputs(8))
    with pytest.raises(ModelError, match="output 1"):
        input_gradients(net.eval(), line_inputs(8), output=1)
    before = [p.grad for p in net.parameters()]
    input_gradients(net, line_inputs(8))
    assert [p.grad for p in net.parameters()] == before == [None] * len(before)


# --- the measurement ---------------------------------------------------------------------------


def test_line_shattering_is_the_autocorrelation_of_the_per_point_gradients() -> None:
    net = mlp_stack(4, width=32, seed=1)
    x = line_inputs(64)
    result = line_shattering(net, x, max_lag=8)
    reference = _one_at_a_time(net, x, 0)[:, 0].numpy()
    np.testing.assert_allclose(result.gradients, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.correlation, _numpy_acf(reference, 8), atol=1e-5)
    assert result.positions == x[:, 0].tolist() and result.lag1 == result.correlation[1]
    assert len(result.correlation) == 9 and result.correlation[0] == pytest.approx(1.0)


def test_path_shattering_gives_the_derivative_along_the_path() -> None:
    net = seeded(1, lambda: create_model("plain8", in_channels=1)).double()
    calibrate_batchnorm(net, torch.randn(32, 1, 8, 8, dtype=torch.float64))
    a, b = torch.randn(1, 8, 8).double(), torch.randn(1, 8, 8).double()
    result = path_shattering(net, a, b, output=2, n_points=16, max_lag=4)
    grads = _one_at_a_time(net, interpolation_path(a, b, 16), 2)
    along = (grads * (b - a)).flatten(1).sum(1)
    np.testing.assert_allclose(result.gradients, along.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.correlation, _corrcoef_reference(grads.numpy(), 4), rtol=1e-9)
    assert result.positions[0] == 0.0 and result.positions[-1] == 1.0


def test_to_dict_writes_nan_as_none() -> None:
    s = Shattering(positions=[0.0, 1.0], gradients=[2.0, 2.0], correlation=[math.nan, math.nan])
    assert s.to_dict() == {
        "positions": [0.0, 1.0],
        "gradients": [2.0, 2.0],
        "correlation": [None, None],
    }


def test_deep_plain_gradients_shatter_and_residual_ones_do_not() -> None:
    """The paper's effect at one depth (seed 0, 20 rectifier layers, width 200)."""
    x = line_inputs()
    plain = line_shattering(mlp_stack(20, plain=True, seed=0), x).lag1
    residual = line_shattering(mlp_stack(20, seed=0), x).lag1
    shallow = line_shattering(mlp_stack(1, plain=True, seed=0), x).lag1
    assert shallow > 0.9 and residual > 0.6 and abs(plain) < 0.3
