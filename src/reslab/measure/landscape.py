"""The loss landscape around trained weights: Li, Xu, Taylor, Studer & Goldstein 2018.

"Visualizing the loss landscape of neural nets" (arXiv:1712.09913) plots the loss along random
directions through the trained weights θ: ``L(θ + α d)`` for a curve, ``L(θ + α d1 + β d2)``
for a surface. A raw Gaussian direction is meaningless on its own, because a ReLU net with batch
norm is invariant to the scale of each filter: a step of size one is huge for a filter of small
norm and nothing for a large one. So §4 rescales the direction *filter by filter*:

    d_{i,j} ← d_{i,j} · ‖θ_{i,j}‖ / ‖d_{i,j}‖

for filter ``j`` (one output channel of a convolution, one output row of a linear layer) of
layer ``i``. BN parameters and biases get a zero direction, the paper's "we do not perturb
BN/bias" setting (its code's ``ignore='biasbn'``: every parameter with at most one dimension).
With that scale, ``α = 1`` moves every filter by its own norm, and surfaces of different nets
(plain vs residual, its Fig. 5) become comparable.

Everything here works on any ``nn.Module`` classifier and imports only torch:

* :func:`random_direction` and :func:`normalize_filters`: seeded, filter-normalised directions;
* :func:`evaluate_points`, :func:`loss_curve`, :func:`loss_surface`: the loss (cross-entropy)
  and top-1 error at points of the plane, on fixed images, in eval mode (BN uses its running
  statistics), through :func:`torch.func.functional_call`: the model's own parameters are never
  written to, so they are bit-identical afterwards, and no autograd graph is built;
* :func:`radius_rise`, :func:`curvature_at_origin`, :func:`nonconvex_fraction`: numbers that say
  how sharp or chaotic a surface is, so a verdict can be computed from them;
* :func:`hessian_extremes`: the extreme eigenvalues of the Hessian of the loss at θ by power
  iteration with Hessian-vector products, for the paper's ratio ``|λmin / λmax|`` (§6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Direction = dict[str, Tensor]

# Below this norm a filter of the random direction is treated as zero rather than divided by:
# the paper's code adds the same 1e-10 to the denominator.
_EPS = 1e-10


# --- directions --------------------------------------------------------------------------------


def is_perturbed(param: Tensor) -> bool:
    """Whether a parameter gets a non-zero direction: conv and linear weights (≥ 2 dims).

    BN scales and shifts, biases and every other 1-D (or 0-D) parameter stay fixed, as in the
    paper's ``ignore='biasbn'`` setting.
    """
    return param.dim() > 1


def normalize_filters(direction: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Direction:
    """Rescale each filter of ``direction`` to the norm of the same filter of ``params``.

    A filter is one slice along the first (output) dimension: ``d[j]`` of a conv weight
    ``out×in×k×k`` or of a linear weight ``out×in``. Parameters for which :func:`is_perturbed`
    is false get zeros. Returns new tensors; neither argument is modified.
    """
    if direction.keys() != params.keys():
        missing = sorted(set(params) ^ set(direction))
        raise ValueError(f"direction and parameters name different tensors: {missing[:5]}")
    out: Direction = {}
    for name, w in params.items():
        d = direction[name]
        if d.shape != w.shape:
            raise ValueError(f"direction {name} has shape {tuple(d.shape)}, not {tuple(w.shape)}")
        if not is_perturbed(w):
            out[name] = torch.zeros_like(w)
            continue
        w_norm = w.detach().flatten(1).norm(dim=1)
        d_norm = d.detach().flatten(1).norm(dim=1)
        scale = w_norm / (d_norm + _EPS)
        out[name] = d.detach() * scale.view(-1, *([1] * (d.dim() - 1)))
    return out


def model_params(model: nn.Module) -> dict[str, Tensor]:
    """The parameters a direction covers, by name (``named_parameters`` order), detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


def random_direction(model: nn.Module, seed: int) -> Direction:
    """A Gaussian direction with the shapes of ``model``'s parameters, filter-normalised.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in ``named_parameters`` order,
    then moved to each parameter's device and dtype: the same seed gives the same direction on
    every device, and the same raw draw for two nets whose parameters have the same shapes
    (a plain net and its residual twin), each then scaled to its own filters.
    """
    gen = torch.Generator().manual_seed(seed)
    params = model_params(model)
    raw = {
        name: torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device, w.dtype)
        for name, w in params.items()
    }
    return normalize_filters(raw, params)


def direction_dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """``<a, b>`` over all entries, the cosine's numerator (two random directions in a space of
    a million dimensions are nearly orthogonal, which the paper relies on)."""
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


# --- evaluating the loss at points of the plane -------------------------------------------------


@dataclass(frozen=True)
class Points:
    """Loss and top-1 error (%) at each point, in the order of the coefficients given."""

    loss: list[float]
    error: list[float]


@torch.inference_mode()
def evaluate_points(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    coeffs: Sequence[Sequence[float]],
    *,
    batch_size: int = 512,
) -> Points:
    """Mean cross-entropy and error of ``model`` at ``θ + Σ_k c_k d_k`` for each ``c`` in coeffs.

    Evaluated in eval mode (BN running statistics, no dropout) on the fixed ``images``, in
    chunks of ``batch_size``. The model's parameters and buffers are never written to (each
    point is a :func:`~torch.func.functional_call` with new tensors) and its train/eval mode is
    restored afterwards.
    """
    if not coeffs:
        return Points([], [])
    theta = model_params(model)
    for c in coeffs:
        if len(c) != len(directions):
            raise ValueError(f"{len(c)} coefficients for {len(directions)} directions")
    was_training = model.training
    model.eval()
    losses: list[float] = []
    errors: list[float] = []
    try:
        for c in coeffs:
            params = _shifted(theta, directions, c)
            loss, error = _loss_and_error(model, params, images, labels, batch_size)
            losses.append(loss)
            errors.append(error)
    finally:
        model.train(was_training)
    return Points(losses, errors)


def _shifted(
    theta: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], c: Sequence[float]
) -> dict[str, Tensor]:
    params = {}
    for name, w in theta.items():
        p = w
        for ck, d in zip(c, directions, strict=True):
            if ck != 0.0:  # a zero coefficient leaves θ bit-exact (no 0·d rounding, no NaN)
                p = p + ck * d[name]
        params[name] = p
    return params


def _loss_and_error(
    model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor, batch_size: int
) -> tuple[float, float]:
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    wrong = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        logits = functional_call(model, params, (x,)).float()
        total += F.cross_entropy(logits, y, reduction="sum").double()
        wrong += (logits.argmax(1) != y).sum()
    n = len(images)
    return float(total) / n, 100.0 * int(wrong) / n


def loss_curve(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    direction: Mapping[str, Tensor],
    alphas: Sequence[float],
    *,
    batch_size: int = 512,
) -> Points:
    """``L(θ + α d)`` for each α: the paper's 1-D plots."""
    return evaluate_points(
        model, images, labels, [direction], [(a,) for a in alphas], batch_size=batch_size
    )


@dataclass(frozen=True)
class Surface:
    """``loss[i][j] = L(θ + alphas[i] d1 + betas[j] d2)``; ``error`` likewise (%)."""

    alphas: list[float]
    betas: list[float]
    loss: list[list[float]]
    error: list[list[float]]


def loss_surface(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    d1: Mapping[str, Tensor],
    d2: Mapping[str, Tensor],
    alphas: Sequence[float],
    betas: Sequence[float],
    *,
    batch_size: int = 512,
) -> Surface:
    """The loss on the grid ``alphas × betas`` of the plane through θ spanned by d1, d2."""
    coeffs = [(a, b) for a in alphas for b in betas]
    pts = evaluate_points(model, images, labels, [d1, d2], coeffs, batch_size=batch_size)
    nb = len(betas)
    rows = range(len(alphas))
    return Surface(
        list(map(float, alphas)),
        list(map(float, betas)),
        [pts.loss[i * nb : (i + 1) * nb] for i in rows],
        [pts.error[i * nb : (i + 1) * nb] for i in rows],
    )


def symmetric_range(radius: float, points: int) -> list[float]:
    """``points`` evenly spaced values in ``[-radius, radius]``, with 0 exactly in the middle.

    ``points`` must be odd so the trained weights (α = 0) are a grid point; the values are
    mirrored so ``v[i] == -v[-1 - i]`` holds exactly.
    """
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be odd and at least 3, got {points}")
    half = points // 2
    pos = [radius * k / half for k in range(1, half + 1)]
    return [-v for v in reversed(pos)] + [0.0] + pos


# --- how sharp, how chaotic ---------------------------------------------------------------------


def circle_coeffs(radius: float, points: int = 16) -> list[tuple[float, float]]:
    """``points`` evenly spaced ``(α, β)`` on the circle of ``radius`` in the (d1, d2) plane."""
    return [
        (radius * math.cos(2 * math.pi * k / points), radius * math.sin(2 * math.pi * k / points))
        for k in range(points)
    ]


def radius_rise(loss_origin: float, ring_losses: Sequence[float]) -> float:
    """The mean loss rise on a circle around θ: ``mean_k L(θ + r(cos φ_k d1 + sin φ_k d2)) − L(θ)``.

    The sharpness number: at the same filter-normalised radius, a sharper minimum rises more.
    A non-finite loss (a diverged forward pass) counts as infinite rise.
    """
    finite = [v for v in ring_losses if math.isfinite(v)]
    if len(finite) < len(ring_losses):
        return math.inf
    return sum(finite) / len(finite) - loss_origin


def curvature_at_origin(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """The second difference ``(L(h) − 2 L(0) + L(−h)) / h²`` at the curve's middle point.

    ``alphas`` must come from :func:`symmetric_range` (odd length, 0 in the middle).
    """
    mid = len(alphas) // 2
    if len(alphas) % 2 == 0 or alphas[mid] != 0.0 or len(losses) != len(alphas):
        raise ValueError("the curve must have an odd number of points with α = 0 in the middle")
    h = alphas[mid + 1]
    if alphas[mid - 1] != -h:
        raise ValueError("the curve must be symmetric around α = 0")
    return (losses[mid + 1] - 2 * losses[mid] + losses[mid - 1]) / (h * h)


def local_hessians(loss: Sequence[Sequence[float]]) -> Tensor:
    """The 2×2 finite-difference Hessian (in grid steps) at every interior grid point.

    Returns ``(A-2)×(B-2)×2×2``: central second differences along each axis and the mixed one.
    """
    z = torch.tensor(loss, dtype=torch.float64)
    if z.dim() != 2 or min(z.shape) < 3:
        raise ValueError("the surface must be a grid of at least 3×3 points")
    c = z[1:-1, 1:-1]
    haa = z[2:, 1:-1] - 2 * c + z[:-2, 1:-1]
    hbb = z[1:-1, 2:] - 2 * c + z[1:-1, :-2]
    hab = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / 4
    return torch.stack([torch.stack([haa, hab], -1), torch.stack([hab, hbb], -1)], -2)


def nonconvex_fraction(loss: Sequence[Sequence[float]], tol: float = 0.1) -> float:
    """The share of interior grid points where the surface bends down: a chaos number.

    At each interior point the 2×2 finite-difference Hessian has eigenvalues λmin ≤ λmax; the
    point counts as non-convex when ``λmin < −tol · |λmax|`` (the paper's map of
    ``|λmin/λmax|``, §6, restricted to the plotted plane) and ``|λmin|`` is above 1e-4 of the
    largest curvature anywhere on the grid: a flat, saturated stretch of surface, where both
    eigenvalues are rounding noise, is not "chaotic". Non-finite losses count as non-convex.
    """
    hess = local_hessians(loss)
    finite = torch.isfinite(hess).flatten(-2).all(-1)
    eig = torch.linalg.eigvalsh(torch.where(torch.isfinite(hess), hess, 0.0))
    lo, hi = eig[..., 0], eig[..., 1]
    floor = 1e-4 * float(eig.abs().max()) if eig.numel() else 0.0
    bent = ((lo < -tol * hi.abs()) & (lo.abs() > floor)) | ~finite
    return float(bent.double().mean())


# --- the Hessian's extreme eigenvalues ----------------------------------------------------------


@dataclass(frozen=True)
class HessianExtremes:
    """Largest and smallest eigenvalue of the Hessian of the loss at θ (power iteration)."""

    lambda_max: float
    lambda_min: float
    iterations: int

    @property
    def ratio(self) -> float:
        """``|λmin / λmax|``: the paper's non-convexity number (0 for a locally convex loss)."""
        return abs(self.lambda_min / self.lambda_max) if self.lambda_max else math.inf


def hessian_extremes(
    model: nn.Module, images: Tensor, labels: Tensor, *, iterations: int = 20, seed: int = 0
) -> HessianExtremes:
    """λmax and λmin of ∇²L(θ) over every parameter, by power iteration with Hessian-vector
    products, in eval mode on the given images.

    λmax: power iteration on H (the paper's §6 and its code assume the eigenvalue of largest
    magnitude is positive, as it is near a trained minimum). λmin: power iteration on the
    shifted ``H − λmax I``, whose largest-magnitude eigenvalue is ``λmin − λmax``. Each
    iteration costs one double-backward pass; the parameters are never written to.

    λmax converges in a few iterations; λmin converges far more slowly (its gap to the bulk
    of near-zero eigenvalues is tiny next to λmax), so with few iterations it reads as ~0 and
    the ratio is a lower bound: on digits, 10 iterations gave λmax 772 (plain-56) vs 6.5
    (resnet-56) and ratios of ~1e-6 for both.
    """
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    try:
        lam_max = _power_iteration(model, theta, images, labels, iterations, seed, shift=0.0)
        shifted = _power_iteration(model, theta, images, labels, iterations, seed + 1, lam_max)
    finally:
        model.train(was_training)
    return HessianExtremes(lam_max, shifted + lam_max, iterations)


def _power_iteration(
    model: nn.Module,
    theta: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    iterations: int,
    seed: int,
    shift: float,
) -> float:
    """The largest-magnitude eigenvalue of ``H − shift·I`` (its Rayleigh quotient at the end)."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(w.shape, generator=gen).to(w) for w in theta.values()]
    v = _unit(v)
    eig = 0.0
    for _ in range(iterations):
        hv = [h - shift * x for h, x in zip(_hvp(model, theta, images, labels, v), v, strict=True)]
        eig = float(sum((h * x).sum() for h, x in zip(hv, v, strict=True)))
        v = _unit(hv)
    return eig


def _unit(v: list[Tensor]) -> list[Tensor]:
    norm = math.sqrt(float(sum((x * x).sum() for x in v)))
    return [x / (norm + _EPS) for x in v]


def _hvp(
    model: nn.Module, theta: dict[str, Tensor], images: Tensor, labels: Tensor, v: list[Tensor]
) -> list[Tensor]:
    with torch.enable_grad():
        params = {n: w.clone().requires_grad_(True) for n, w in theta.items()}
        logits = functional_call(model, params, (images,))
        loss = F.cross_entropy(logits.float(), labels)
        inputs = list(params.values())
        # materialize_grads: a parameter the loss (or its gradient) does not depend on gets a
        # zero row of the Hessian instead of an error.
        grads = torch.autograd.grad(loss, inputs, create_graph=True, materialize_grads=True)
        pairs = [(g, x) for g, x in zip(grads, v, strict=True) if g.requires_grad]
        hv = torch.autograd.grad(
            [g for g, _ in pairs], inputs, [x for _, x in pairs], materialize_grads=True
        )
    return [h.detach() for h in hv]


# --- one net's landscape, end to end ------------------------------------------------------------


@dataclass(frozen=True)
class ScanSettings:
    """What :func:`scan` measures: the grid, the curve, the circle, the directions' seed."""

    radius: float = 1.0  # the grid and the curve span [-radius, radius] along each direction
    grid: int = 11  # grid points per axis (odd: θ is the centre)
    curve: int = 21  # points of the 1-D curve (odd)
    ring_radius: float = 0.5  # the sharpness circle's radius, in filter-normalised units
    ring_points: int = 16
    seed: int = 0  # d1 = random_direction(seed 2s), d2 = random_direction(seed 2s + 1)
    batch_size: int = 512
    hessian_iterations: int = 0  # 0: skip |λmin/λmax| (each iteration is a double backward)

    def __post_init__(self) -> None:
        symmetric_range(self.radius, self.grid)  # odd and >= 3, or a ValueError
        symmetric_range(self.radius, self.curve)
        if not self.radius > 0 or not self.ring_radius > 0:
            raise ValueError("radius and ring_radius must be positive")
        if self.ring_points < 3 or self.batch_size < 1 or self.hessian_iterations < 0:
            raise ValueError("ring_points >= 3, batch_size >= 1, hessian_iterations >= 0")


def scan(
    model: nn.Module, images: Tensor, labels: Tensor, settings: ScanSettings | None = None
) -> dict[str, object]:
    """Everything the landscape study keeps of one net, as JSON-ready numbers.

    The 2-D surface on the grid, the 1-D curve along d1, the circle of ``ring_radius`` and the
    numbers computed from them: ``rise`` (:func:`radius_rise`), ``curvature``
    (:func:`curvature_at_origin` of the curve), ``nonconvex`` (:func:`nonconvex_fraction` of
    the surface), ``cosine`` (of d1 and d2) and, if asked for, the Hessian's extremes.
    """
    s = settings or ScanSettings()
    d1, d2 = random_direction(model, 2 * s.seed), random_direction(model, 2 * s.seed + 1)
    grid = symmetric_range(s.radius, s.grid)
    alphas = symmetric_range(s.radius, s.curve)
    surface = loss_surface(model, images, labels, d1, d2, grid, grid, batch_size=s.batch_size)
    curve = loss_curve(model, images, labels, d1, alphas, batch_size=s.batch_size)
    ring = evaluate_points(
        model,
        images,
        labels,
        [d1, d2],
        circle_coeffs(s.ring_radius, s.ring_points),
        batch_size=s.batch_size,
    )
    mid = s.grid // 2
    origin = surface.loss[mid][mid]
    out: dict[str, object] = {
        "images": len(images),
        "grid": grid,
        "loss": surface.loss,
        "error": surface.error,
        "curve_alpha": alphas,
        "curve_loss": curve.loss,
        "curve_error": curve.error,
        "loss_origin": origin,
        "error_origin": surface.error[mid][mid],
        "ring_radius": s.ring_radius,
        "ring_loss": ring.loss,
        "rise": radius_rise(origin, ring.loss),
        "curvature": curvature_at_origin(alphas, curve.loss),
        "nonconvex": nonconvex_fraction(surface.loss),
        "cosine": direction_dot(d1, d2) / math.sqrt(direction_dot(d1, d1) * direction_dot(d2, d2)),
    }
    if s.hessian_iterations:
        h = hessian_extremes(model, images, labels, iterations=s.hessian_iterations, seed=s.seed)
        out.update(lambda_max=h.lambda_max, lambda_min=h.lambda_min, hessian_ratio=h.ratio)
    return out
