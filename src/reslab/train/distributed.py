"""This process's place in a torchrun job, and the collectives the trainer needs.

Every rank runs :func:`reslab.train.fit`; rank 0 alone writes files and prints. A user error
found by rank 0 is broadcast (:meth:`Dist.agree`) so no rank waits on a peer that has stopped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reslab.errors import ConfigError, ReslabError
from reslab.train.config import TrainConfig

__all__ = ["Dist", "init_distributed", "param_checksum", "sync_buffers"]


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (``value`` itself when not distributed)."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: str | None) -> None:
        """Rank 0's error (or None) becomes every rank's, so no rank waits on a dead peer."""
        if self.enabled:
            box = [error]
            torch.distributed.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ReslabError(error)


def init_distributed(config: TrainConfig) -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} is the global batch and must divide evenly over "
            f"{world_size} ranks"
        )
    use_cuda = config.device.startswith("cuda") or (
        config.device == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank)


def param_checksum(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks when DDP kept them in step."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sync_buffers(model: nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's BN statistics before evaluating (DDP does so at each forward)."""
    if dist.enabled:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)
