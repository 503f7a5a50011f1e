"""One SGD step and what it updates: the optimizer, momentum restore and the weight EMA.

The step is shared by the trainer and the benchmark (:mod:`reslab.bench`), so the throughput
the benchmark reports is the trainer's.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.train.config import TrainConfig

__all__ = ["EMA", "build_optimizer", "restore_momentum", "train_step"]


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; one fused kernel on CUDA, multi-tensor (foreach) updates on CPU."""
    # Weight decay on every parameter, BN scales and biases included, as He et al. 2015 did.
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )


def restore_momentum(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor]) -> None:
    """Load the ``optim.<i>`` momentum buffers of a checkpoint into ``optimizer``.

    Saved buffers are contiguous; each gets its parameter's memory layout (channels_last) back,
    because the fused CUDA SGD kernel requires parameter, gradient and buffer to share strides.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        if key.startswith("optim."):
            p = params[int(key.split(".")[1])]
            optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(value)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast: contextlib.AbstractContextManager[Any],
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    cuda_graphs: bool = False,
    accum_steps: int = 1,
) -> tuple[Tensor, Tensor]:
    """One SGD step; returns (loss, logits) as device tensors, with no host sync.

    ``y`` holds int64 labels, or ``N×classes`` soft targets (mixup/cutmix, :mod:`reslab.data.mix`).
    With ``accum_steps`` K > 1 the batch is split into K equal micro-batches, each with its own
    forward and backward pass (so BatchNorm normalises, and updates its running statistics,
    with each micro-batch's statistics) and its loss scaled by 1/K, so the summed gradient is
    that of the whole batch's mean loss; then one optimizer step. The loss returned is the
    mean over the micro-batches and the logits are theirs, concatenated.

    Under CUDA graphs (``accum_steps`` 1 only) the outputs live in the graph's memory pool and
    are overwritten by the next replay: callers consume them (accumulate on the device) before
    the next step.
    """
    if accum_steps > 1:
        if cuda_graphs:  # the trainer never asks (resolve_runtime turns graphs off): a bug
            raise ValueError("gradient accumulation under CUDA graphs corrupts the gradients")
        return _accumulated_step(
            model, optimizer, x, y, autocast, label_smoothing, grad_clip, accum_steps
        )
    if cuda_graphs:
        # A new iteration starts here, so the graph pool may reuse the last step's outputs.
        torch.compiler.cudagraph_mark_step_begin()
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _clip_and_step(optimizer, grad_clip)
    return loss, logits


def _accumulated_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast: contextlib.AbstractContextManager[Any],
    label_smoothing: float,
    grad_clip: float | None,
    accum_steps: int,
) -> tuple[Tensor, Tensor]:
    """:func:`train_step` over ``accum_steps`` micro-batches (the batch size divides evenly).

    Never under CUDA graphs: cudagraph trees hand the first micro-batch's gradients to
    ``.grad`` from the graph's pool, and the next replay overwrites them
    (pytorch/pytorch#169545), so :func:`reslab.train.resolve_runtime` turns graphs off.
    """
    optimizer.zero_grad(set_to_none=True)
    losses: list[Tensor] = []
    outputs: list[Tensor] = []
    for xs, ys in zip(x.chunk(accum_steps), y.chunk(accum_steps), strict=True):
        with autocast:
            logits = model(xs)
            loss = F.cross_entropy(logits, ys, label_smoothing=label_smoothing)
        (loss / accum_steps).backward()
        losses.append(loss.detach())
        outputs.append(logits.detach())
    _clip_and_step(optimizer, grad_clip)
    return torch.stack(losses).mean(), torch.cat(outputs)


def _clip_and_step(optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()


class EMA:
    """Exponential moving average of the weights (BN statistics copied, not averaged).

    With ``warmup`` (the default of ``reslab train``) the decay at the n-th update (n = the
    optimizer steps taken, this one included) is timm's ModelEmaV3 warm-up with its defaults
    (inverse gamma 1, power 2/3): ``min(decay, 1 - n^(-2/3))``. The first update (decay 0)
    copies the weights, and the average forgets its random start within a few hundred steps
    instead of keeping ``decay^n`` of it (at 0.999, 90 % after 100 steps). Without it the
    decay is constant, as before. The decay depends on n alone, so a resumed run (which
    restores n) averages bit-identically.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._params: list[Tensor] = list(self.module.parameters())
        self._buffers: list[Tensor] = list(self.module.buffers())

    def decay_at(self, step: int) -> float:
        """The decay of the update made after optimizer step ``step`` (1 for the first)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - max(step, 1) ** (-2.0 / 3.0))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 1) -> None:
        """Average in ``model``'s weights after optimizer step ``step`` (1-based)."""
        # ema += (1 - decay) * (p - ema), all parameters in one foreach kernel
        weight = 1 - self.decay_at(step)
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], weight)
        for mine, theirs in zip(self._buffers, model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()
