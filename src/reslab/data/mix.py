"""Mixup and cutmix: batches mixed on the device, drawn per batch from (seed, epoch, batch, rank).

Zhang et al. 2017, "mixup: Beyond Empirical Risk Minimization" (arXiv:1710.09412), trains on
convex combinations ``λ x_i + (1 - λ) x_j`` of image pairs and of their one-hot labels, with
``λ ~ Beta(α, α)``. Yun et al. 2019, "CutMix" (arXiv:1905.04899), pastes a random box of
``x_j`` into ``x_i`` instead, the box's area ``1 - λ`` of the image, and mixes the labels by
area.

As timm's ``Mixup`` does in its default ``"batch"`` mode: one ``λ`` per batch; each image is
paired with the one at the mirrored position of the batch (``x.flip(0)``; the loader's order is
already a random permutation); a batch is mixed with probability ``prob``, and when both are on
it uses cutmix with probability ``switch_prob``, else mixup; the box's centre is uniform over
the image, the box is clipped at the border and ``λ`` corrected to the area actually pasted;
the targets are soft, and label smoothing (in the loss) smooths both labels.

The draws of batch ``i`` of epoch ``e`` come from a CPU generator seeded from
``("mix", seed, e, i, rank)``, as :class:`reslab.data.DeviceLoader`'s augmentation draws do: they
depend on nothing else, so a run resumed mid-epoch mixes bit-identically, and applying them
reads nothing back from the device (``λ`` and the box are host numbers).

The training error of a mixed batch counts a prediction as wrong when it is not the label with
the larger share (:attr:`Mixed.dominant`: the image's own label when ``λ >= 0.5``, its
partner's otherwise); the clean training error, evaluated on unmixed images, is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from reslab.data.loader import _seed_from

__all__ = ["MixDraw", "MixSettings", "Mixed", "apply_mix", "draw_mix"]


@dataclass(frozen=True)
class MixSettings:
    """The knobs, as ``reslab train`` names them (``--mixup``, ``--cutmix``, ``--mix-prob``,
    ``--mix-switch-prob``); an α of 0 turns that kind off."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


@dataclass(frozen=True)
class MixDraw:
    """What one batch gets: ``kind`` none, mixup or cutmix, the own label's share ``lam``, and
    cutmix's box ``(top, bottom, left, right)`` (rows ``top:bottom``, columns ``left:right``)."""

    kind: str
    lam: float = 1.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


NO_MIX = MixDraw("none")


@dataclass
class Mixed:
    """A mixed batch: the images, the soft targets (``N×classes``) and the dominant labels."""

    images: torch.Tensor
    targets: torch.Tensor
    dominant: torch.Tensor


def draw_mix(
    settings: MixSettings,
    height: int,
    width: int,
    *,
    seed: int,
    epoch: int,
    batch: int,
    rank: int = 0,
) -> MixDraw:
    """The mix of batch ``batch`` of ``epoch``: a function of its arguments alone.

    Draw order (fixed, it decides the values a seed gives): mixed or not, then cutmix or mixup
    (only when both are on), then ``λ``, then cutmix's box centre (row, column).
    """
    if not settings.enabled:
        return NO_MIX
    rng = np.random.default_rng(_seed_from("mix", seed, epoch, batch, rank))
    if rng.random() >= settings.prob:
        return NO_MIX
    if settings.mixup > 0 and settings.cutmix > 0:
        cutmix = bool(rng.random() < settings.switch_prob)
    else:
        cutmix = settings.cutmix > 0
    alpha = settings.cutmix if cutmix else settings.mixup
    lam = float(rng.beta(alpha, alpha))
    if not cutmix:
        return MixDraw("mixup", lam)
    # Yun et al. 2019 §3.1: a box of side ratio sqrt(1 - λ), its centre uniform over the image.
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    # The box may be clipped at the border: λ is the share of the image left unpasted.
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return MixDraw("cutmix", lam, (top, bottom, left, right))


def apply_mix(images: torch.Tensor, labels: torch.Tensor, draw: MixDraw, num_classes: int) -> Mixed:
    """Mix a float ``N×C×H×W`` batch as ``draw`` says, on its device, in place.

    ``images`` is overwritten (pass a batch you own: the loader's are fresh tensors); nothing
    is read back to the host. An unmixed batch keeps its images and gets one-hot targets.
    """
    # scatter_, not F.one_hot: one_hot checks the labels' range with a host read on the CPU.
    onehot = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    onehot.scatter_(1, labels[:, None], 1.0)
    if draw.kind == "none":
        return Mixed(images, onehot, labels)
    lam = draw.lam
    if draw.kind == "mixup":
        partner = images.flip(0).mul_(1.0 - lam)
        images = images.mul_(lam).add_(partner)
    elif draw.kind == "cutmix":
        top, bottom, left, right = draw.box
        images[:, :, top:bottom, left:right] = images[:, :, top:bottom, left:right].flip(0)
    else:
        raise ValueError(f"unknown mix kind {draw.kind!r}")
    targets = onehot.mul(lam).add_(onehot.flip(0), alpha=1.0 - lam)
    return Mixed(images, targets, labels if lam >= 0.5 else labels.flip(0))
