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
) -> tuple[Tensor, Tensor]:
    """One SGD step; returns (loss, logits) as device tensors, with no host sync.

    Under CUDA graphs the outputs live in the graph's memory pool and are overwritten by the
    next replay: callers consume them (accumulate on the device) before the next step.
    """
    if cuda_graphs:
        # A new iteration starts here, so the graph pool may reuse the last step's outputs.
        torch.compiler.cudagraph_mark_step_begin()
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()
    return loss, logits


class EMA:
    """Exponential moving average of the weights (BN statistics copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._params: list[Tensor] = list(self.module.parameters())
        self._buffers: list[Tensor] = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # ema += (1 - decay) * (p - ema), all parameters in one foreach kernel
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], 1 - self.decay)
        for mine, theirs in zip(self._buffers, model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()
