"""Shattered gradients: how alike a net's input gradients at nearby inputs are, at initialisation.

Balduzzi, Frean, Leary, Lewis, Ma & McWilliams 2017, "The shattered gradients problem: If
resnets are the answer, then what is the question?" (arXiv:1702.08591). Walk the input along a
line and take the gradient of one fixed output at every point. In a shallow rectifier net the
gradient changes a little from point to point, like brown noise; as a plain (feedforward) net
gets deeper the gradients at neighbouring points decorrelate until they look like white noise,
while in a residual net with batch normalisation the correlation falls far more slowly (the
paper's analysis: exponentially in depth for feedforward nets, sublinearly for resnets with BN).
A gradient that is white noise in the input carries no information a step away, which is the
paper's answer to why deep plain nets are hard to train.

The measurement, in the order the study uses it:

* the inputs: :func:`line_inputs` (the paper's 1-D input, 256 points in [-2, 2]) and
  :func:`interpolation_path` (images ``x_t = (1-t)·a + t·b`` between two images);
* the nets: :class:`MLPStack` (fully connected rectifier stacks of width 200 built from
  :class:`reslab.blocks.Residual`, or from :class:`reslab.blocks.ResidualMLP`) and the CIFAR
  nets of :func:`reslab.models.create_model`, each built under its own seed by :func:`seeded`;
* :func:`calibrate_batchnorm`: BN statistics from one batch, then eval mode (see below);
* :func:`input_gradients`: ``∂ f(x_i)[output] / ∂ x_i`` for every point, batched;
* :func:`autocorrelation` (a scalar sequence) and :func:`lagged_correlation` (a sequence of
  gradient images), and :func:`line_shattering` / :func:`path_shattering`, which put it together.

**Why eval-mode BN.** In train mode BN normalises with the statistics of the batch, so the output
at one point depends on every other point in the batch and the "gradient at x_i" of the batch's
summed output mixes in the other points' outputs. Here BN first takes its statistics from one
batch (the line itself for the MLPs, a batch of training images for the conv nets) and is then
frozen: the function each point sees is the one a train-mode forward on that batch computes,
but every point's output depends on that point alone. So one backward pass of the summed outputs
gives every point's own gradient, a batch can be split in chunks without changing anything, and
the tests check the result against autograd one sample at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from reslab.blocks import Residual, ResidualMLP
from reslab.errors import ModelError

__all__ = [
    "MLPStack",
    "Shattering",
    "autocorrelation",
    "calibrate_batchnorm",
    "input_gradients",
    "interpolation_path",
    "lagged_correlation",
    "line_inputs",
    "line_shattering",
    "mlp_stack",
    "path_shattering",
    "seeded",
]

MLPNorm = Literal["batch", "layer"]
MLP_NORMS: tuple[str, ...] = ("batch", "layer")
ModelT = TypeVar("ModelT", bound=nn.Module)


# --- inputs ------------------------------------------------------------------------------------


def line_inputs(n_points: int = 256, low: float = -2.0, high: float = 2.0) -> Tensor:
    """``n_points`` equally spaced scalars in ``[low, high]`` as an ``(n_points, 1)`` batch.

    The paper's Fig. 1 input: a 1-D input on 256 points in [-2, 2].
    """
    _check_points(n_points)
    return torch.linspace(low, high, n_points).unsqueeze(1)


def interpolation_path(a: Tensor, b: Tensor, n_points: int = 128) -> Tensor:
    """``x_t = (1-t)·a + t·b`` for ``n_points`` equally spaced ``t`` in [0, 1], stacked.

    ``a`` and ``b`` are two inputs of the same shape (e.g. ``C×H×W`` images); the result is
    ``n_points × a.shape``, ``x_0 = a`` and ``x_1 = b`` exactly.
    """
    _check_points(n_points)
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    t = torch.linspace(0.0, 1.0, n_points, dtype=a.dtype, device=a.device)
    t = t.view(-1, *([1] * a.dim()))
    # (1-t)·a + t·b rather than a + t·(b-a), so that the last point is b to the bit.
    return (1 - t) * a + t * b


def _check_points(n_points: int) -> None:
    if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 2:
        raise ValueError(f"n_points must be an integer of at least 2, got {n_points!r}")


# --- nets --------------------------------------------------------------------------------------


def _bn_branch(width: int) -> nn.Sequential:
    """BN → ReLU → Linear: one rectifier layer, pre-activation as in He et al. 2016."""
    return nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))


class MLPStack(nn.Module):
    """A fully connected rectifier net: stem, ``depth`` residual (or plain) blocks, head.

    ``stem = Linear(in_features, width)``; each block is ``x + F(x)`` (or ``F(x)`` alone with
    ``plain=True``: the same layers without the shortcut, reslab's plain twin); the head is
    ``BN → ReLU → Linear(width, out_features)``, the pre-activation nets' final BN-ReLU.

    ``norm="batch"`` (the default): ``F(x) = W·relu(BN(x))``, one rectifier layer per block,
    so the depth is the number of rectifier layers; its plain twin is a feedforward rectifier
    net with BN, and the residual net a resnet with BN: the feedforward nets and resnets the
    paper compares. ``norm="layer"``: :class:`reslab.blocks.ResidualMLP` of hidden width
    ``width`` (``F(x) = W2·relu(W1·LayerNorm(x))``, the transformer-style block), and the same
    head with LayerNorm. Every weight is He-initialised (fan-in, ReLU gain); the biases keep
    PyTorch's uniform ±1/√fan_in. They matter for LayerNorm only: with zero biases a LayerNorm
    net of a 1-D input is scale-free on each half-line and its gradient there almost zero (BN
    subtracts the mean over the points instead, which places the kinks along the line anyway).
    """

    def __init__(
        self,
        depth: int,
        width: int = 200,
        *,
        plain: bool = False,
        norm: MLPNorm = "batch",
        in_features: int = 1,
        out_features: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ModelError(f"depth must be an integer of at least 0, got {depth!r}")
        if norm not in MLP_NORMS:
            raise ModelError(f"norm {norm!r} is not one of {', '.join(MLP_NORMS)}")
        self.depth, self.width, self.plain, self.norm = depth, width, plain, norm
        self.stem = nn.Linear(in_features, width)
        blocks: list[nn.Module]
        if norm == "batch":
            blocks = [Residual(_bn_branch(width), plain=plain) for _ in range(depth)]
            final: nn.Module = nn.BatchNorm1d(width)
        else:
            blocks = [ResidualMLP(width, width, plain=plain) for _ in range(depth)]
            final = nn.LayerNorm(width)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(final, nn.ReLU(), nn.Linear(width, out_features))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def seeded(seed: int, build: Callable[[], ModelT]) -> ModelT:
    """``build()`` with torch's RNG seeded by ``seed``; the caller's RNG state is left as it was.

    The nets' initial weights then depend on their seed alone, not on what ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp_stack(
    depth: int, *, width: int = 200, plain: bool = False, norm: MLPNorm = "batch", seed: int = 0
) -> MLPStack:
    """:class:`MLPStack` with a 1-D input and a scalar output, initialised under ``seed``."""
    return seeded(seed, lambda: MLPStack(depth, width, plain=plain, norm=norm))


# --- batch norm --------------------------------------------------------------------------------


def calibrate_batchnorm(model: ModelT, x: Tensor) -> ModelT:
    """Set every BN layer's statistics to those of the batch ``x``, then put ``model`` in eval.

    One train-mode forward pass without autograd, with the running statistics reset and
    ``momentum=None`` (a cumulative average, which over one batch is that batch's mean and
    unbiased variance). The model is then in eval mode: each point's output depends on that
    point alone, and equals what a train-mode forward on ``x`` computes (up to the variance's
    n/(n-1)). Returns ``model``.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model


# --- gradients ---------------------------------------------------------------------------------


def input_gradients(model: nn.Module, x: Tensor, output: int = 0, *, chunk: int = 64) -> Tensor:
    """``∂ model(x)[i, output] / ∂ x_i`` for every point ``i`` of ``x``: a tensor shaped like x.

    The model must be in eval mode (after :func:`calibrate_batchnorm` if it has BN): then no
    layer mixes the points of a batch, the gradient of the summed outputs with respect to
    ``x_i`` is the gradient of ``x_i``'s own output, and one backward pass per ``chunk`` points
    gives them all. Parameters' ``.grad`` are not touched.
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ModelError(
            f"input_gradients needs the model in eval mode ({training[0]} is training): in "
            "train mode BN mixes the points of a batch; call calibrate_batchnorm(model, x) "
            "or model.eval() first"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    parts = []
    for part in x.detach().split(chunk):
        leaf = part.clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(leaf)
            if out.dim() != 2 or not 0 <= output < out.shape[1]:
                raise ModelError(
                    f"output {output} is not an index of the model's {tuple(out.shape)} output"
                )
            (grad,) = torch.autograd.grad(out[:, output].sum(), leaf)
        parts.append(grad)
    return torch.cat(parts)


# --- correlation -------------------------------------------------------------------------------


def _check_lag(max_lag: int, n: int) -> None:
    if not isinstance(max_lag, int) or isinstance(max_lag, bool) or not 0 <= max_lag < n:
        raise ValueError(
            f"max_lag must be an integer in [0, {n - 1}] for {n} points, got {max_lag!r}"
        )


def autocorrelation(sequence: Any, max_lag: int) -> np.ndarray:
    """The sample autocorrelation ``r_0 … r_max_lag`` of a scalar sequence ``g_1 … g_n``.

    ``r_k = Σ_{t=1}^{n-k} (g_t - ḡ)(g_{t+k} - ḡ) / Σ_{t=1}^{n} (g_t - ḡ)²``, with ``ḡ`` the mean
    of the whole sequence: the standard estimator (statsmodels' ``acf``, Box & Jenkins), so
    ``r_0 = 1``, white noise gives ``r_k ≈ 0`` (± 2/√n) for ``k ≥ 1``, a sinusoid of period P
    gives ``≈ (1 - k/n)·cos(2πk/P)``. A constant sequence has no defined correlation: all NaN.
    """
    g = np.asarray(sequence, dtype=np.float64).ravel()
    _check_lag(max_lag, g.size)
    g = g - g.mean()
    energy = float(g @ g)
    if energy == 0.0:
        return np.full(max_lag + 1, np.nan)
    n = g.size
    return np.array([float(g[: n - k] @ g[k:]) / energy for k in range(max_lag + 1)])


def lagged_correlation(gradients: Any, max_lag: int) -> np.ndarray:
    """``r_0 … r_max_lag`` for a sequence of gradient images ``G_1 … G_n`` (any shape each).

    ``r_k`` is the mean over ``t = 1 … n-k`` of the Pearson correlation between the flattened
    ``G_t`` and ``G_{t+k}`` (the correlation over their pixels and channels): how alike the
    gradients ``k`` steps apart along the path are, 1 for the same image up to scale and shift,
    ≈ 0 for unrelated ones. ``r_0 = 1``. A pair in which one image is constant has no defined
    correlation and is left out of the mean; with no pair left ``r_k`` is NaN.
    """
    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim < 2 or g[0].size < 2:
        raise ValueError(f"need n gradients of at least 2 entries each, got shape {g.shape}")
    flat = g.reshape(g.shape[0], -1)
    _check_lag(max_lag, flat.shape[0])
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(norms > 0, flat / norms, np.nan)
    out = []
    for k in range(max_lag + 1):
        r = np.einsum("td,td->t", unit[: len(unit) - k], unit[k:])
        out.append(float(np.nanmean(r)) if np.isfinite(r).any() else math.nan)
    return np.array(out)


# --- the measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shattering:
    """One net's gradients along one line of inputs, and how they correlate with lag.

    ``positions``: the inputs' coordinate along the line (``x`` for the 1-D line, ``t`` for an
    interpolation path). ``gradients``: a 1-D view of the gradient at each position, the one
    the figures draw: ``df/dx`` on the 1-D line, ``df(x_t)/dt = ⟨∇f(x_t), b - a⟩`` (the
    derivative of the output along the path) for images. ``correlation[k]``: lags 0…K, the
    :func:`autocorrelation` of ``df/dx`` on the line, the :func:`lagged_correlation` of the
    whole gradient images on a path. NaN where undefined (a constant gradient).
    """

    positions: list[float]
    gradients: list[float]
    correlation: list[float]

    @property
    def lag1(self) -> float:
        """The correlation of gradients one step apart: the study's number per net."""
        return self.correlation[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain lists of floats, NaN as ``None``."""
        return {
            k: [None if isinstance(v, float) and math.isnan(v) else v for v in vals]
            for k, vals in dataclasses.asdict(self).items()
        }


def line_shattering(model: nn.Module, x: Tensor, *, max_lag: int = 32) -> Shattering:
    """Gradients of a 1-D-input, scalar-output net at the points ``x`` (``n × 1``).

    The model is calibrated on ``x`` itself (:func:`calibrate_batchnorm`: the line is all the
    data a 1-D net sees) and left in eval mode.
    """
    if x.dim() != 2 or x.shape[1] != 1:
        raise ValueError(f"x must be n × 1 (a 1-D input), got {tuple(x.shape)}")
    calibrate_batchnorm(model, x)
    grads = input_gradients(model, x, 0).squeeze(1)
    return Shattering(
        positions=x.squeeze(1).tolist(),
        gradients=grads.tolist(),
        correlation=autocorrelation(grads.cpu().numpy(), max_lag).tolist(),
    )


def path_shattering(
    model: nn.Module,
    a: Tensor,
    b: Tensor,
    *,
    output: int,
    n_points: int = 128,
    max_lag: int = 32,
    chunk: int = 64,
) -> Shattering:
    """Gradients of logit ``output`` along the path from image ``a`` to image ``b``.

    The model must be in eval mode, calibrated beforehand on training images
    (:func:`calibrate_batchnorm`), so that the path's own statistics do not normalise it.
    """
    path = interpolation_path(a, b, n_points)
    grads = input_gradients(model, path, output, chunk=chunk)
    along = (grads.flatten(1) * (b - a).flatten()).sum(1)
    t = torch.linspace(0.0, 1.0, n_points)
    return Shattering(
        positions=t.tolist(),
        gradients=along.tolist(),
        correlation=lagged_correlation(grads.cpu().numpy(), max_lag).tolist(),
    )
