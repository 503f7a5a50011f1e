"""timm's model API on every reslab net: the head, the classifier, checkpointing, the config.

What a timm user calls every day, with timm's names and meanings (``timm.models.resnet``):

* ``forward_features(x)``: the last feature map, before pooling (:class:`~reslab.models.ResNet`);
  ``forward_head(x, pre_logits=False)``: pool, dropout, classifier; ``pre_logits=True`` stops
  before the classifier and returns the pooled ``num_features``-vector.
* ``get_classifier()`` and ``reset_classifier(num_classes)``: the ``fc`` layer, and a new one
  (0: none, the net then returns its pooled features, as ``create_model(name, num_classes=0)``).
* ``set_grad_checkpointing(True)``: each block's activations are recomputed in the backward
  pass instead of stored (``torch.utils.checkpoint``, ``use_reentrant=False``), for memory;
  the gradients are the same, and so are the random draws (the RNG state is replayed). BN's
  running statistics are updated again by the recomputation, as with any checkpointed BN
  net (timm's included): with momentum 0.1 they move a little faster.
* ``pretrained_cfg`` (``default_cfg``): the input a net expects: ``input_size``, ``mean``,
  ``std``, ``num_classes``, ``crop_pct``, ``interpolation``, ``first_conv``, ``classifier``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from reslab.errors import ModelError

if TYPE_CHECKING:
    from reslab.models.resnet import ResNetLayout

# CIFAR-10's train-split statistics (reslab computes them from the data: reslab.data), the
# ones CIFAR checkpoints are trained with; torchvision's ImageNet ones for ImageNet nets.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrained_cfg(layout: ResNetLayout, name: str = "") -> dict[str, Any]:
    """timm's per-model config for ``layout``: what its input and head look like.

    A net of other than 3 input channels gets the mean of the three channels' statistics on
    each. ``crop_pct`` is 1 for CIFAR nets (no crop: 32×32 in, 32×32 seen) and torchvision's
    0.875 for ImageNet nets (resize to 256, centre crop 224).
    """
    imagenet = layout.stem == "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN if imagenet else CIFAR_MEAN
    std: tuple[float, ...] = IMAGENET_STD if imagenet else CIFAR_STD
    channels = layout.in_channels
    if channels != 3:
        mean = (round(sum(mean) / 3, 4),) * channels
        std = (round(sum(std) / 3, 4),) * channels
    return {
        "architecture": name,
        "num_classes": layout.num_classes,
        "input_size": layout.input_size,
        "mean": mean,
        "std": std,
        "crop_pct": 0.875 if imagenet else 1.0,
        "interpolation": "bilinear",
        "first_conv": "conv1",
        "classifier": "fc",
    }


class TimmApi(nn.Module):
    """The methods above, for :class:`~reslab.models.ResNet` (which sets the attributes)."""

    # TorchScript compiles properties; these are for Python callers only.
    __jit_unused_properties__: ClassVar[list[str]] = ["default_cfg", "depth"]
    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations
        fc: nn.Module
        num_classes: int
        num_features: int
        drop_rate: float
        grad_checkpointing: bool
        pretrained_cfg: dict[str, Any]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``forward_features``' map, dropout (``drop_rate``), then the classifier."""
        # Global average pool as a mean: CUDA's adaptive-pool backward is not deterministic.
        x = x.mean((2, 3))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The classifier, ``fc`` (an ``nn.Identity`` on a net without one)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` classes, freshly initialised; 0: none."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ModelError(f"num_classes must be an integer ≥ 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = make_classifier(self.num_features, num_classes)
        self.fc.to(next(self.parameters()).device)
        config = getattr(self, "reslab_config", None)
        if isinstance(config, dict):  # a saved weights file rebuilds the new head
            config["num_classes"] = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = bool(enable)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def _checkpointed(self, stages: list[nn.Module], x: Tensor) -> Tensor:
        for stage in stages:
            for block in stage.children():
                x = checkpoint(block, x, use_reentrant=False)
        return x


def make_classifier(num_features: int, num_classes: int) -> nn.Module:
    """``fc``: a linear layer, or the identity for ``num_classes=0`` (pooled features out)."""
    return nn.Linear(num_features, num_classes) if num_classes else nn.Identity()


__all__ = ["TimmApi", "make_classifier", "pretrained_cfg"]
