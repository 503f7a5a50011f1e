"""Feature maps in timm's convention: ``feature_info``, ``forward_intermediates``, features_only.

A detection or segmentation head reads a backbone's stage outputs, not its logits. timm
(Wightman, pytorch-image-models) gives every model the same three things, and reslab's
:class:`~reslab.models.resnet.ResNet` follows it for every family, plain twins included:

* ``model.feature_info``: one dict per feature map, ``num_chs`` (channels), ``reduction``
  (input side / map side) and ``module`` (the module whose output it is): the stem's output
  first (``relu``; before the max-pool of the ImageNet stem), then each stage (``layer1`` …);
* ``model.forward_intermediates(x, indices=...)``: ``(features, [chosen maps])``, where the
  indices count ``feature_info`` as :func:`feature_take_indices` reads them;
* ``create_model(name, features_only=True, out_indices=...)``: a :class:`ResNetFeatures`,
  whose forward returns the list of chosen maps. It keeps the net's module names, so its
  ``state_dict`` is the net's without the classifier (and the stages it does not need).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from reslab.errors import ModelError

if TYPE_CHECKING:
    from reslab.models.resnet import ResNet


def feature_take_indices(
    num_features: int, indices: int | Sequence[int] | None = None
) -> tuple[list[int], int]:
    """(the absolute indices chosen, the largest), as timm's function of the same name.

    ``None`` takes every map, an int ``n`` the last ``n``, a sequence the indices it names
    (negative ones count from the end). Anything out of range is a one-line ``ModelError``.
    """
    last = num_features - 1
    if indices is None:
        indices = num_features
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_features:
            raise ModelError(
                f"take the last n feature maps with 1 <= n <= {num_features}, got {indices}"
            )
        take = list(range(num_features - indices, num_features))
    elif isinstance(indices, Sequence) and not isinstance(indices, str) and indices:
        take = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -num_features <= i <= last:
                raise ModelError(
                    f"feature index {i!r} is out of range: this net has {num_features} feature "
                    f"maps, indices 0 to {last} (or -{num_features} to -1)"
                )
            take.append(i % num_features)
    else:
        raise ModelError(
            f"feature indices must be None, an int or a non-empty list of ints, got {indices!r}"
        )
    return take, max(take)


class FeatureInfo(Sequence[dict[str, Any]]):
    """The chosen entries of a net's ``feature_info``, with timm's accessors."""

    def __init__(self, info: Sequence[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.out_indices = tuple(out_indices)
        self._info = [dict(info[i], index=i) for i in self.out_indices]

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self._info]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self._info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self._info]

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._info]

    def __getitem__(self, i: Any) -> Any:
        return self._info[i]

    def __len__(self) -> int:
        return len(self._info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self._info})"


class ResNetFeatures(nn.Module):
    """A net without its head: ``forward(x)`` returns the feature maps ``out_indices`` name.

    Built from a :class:`~reslab.models.resnet.ResNet` (weights and all, so load weights
    before wrapping), keeping its module names: the stem, then the stages up to the deepest
    chosen one; the final BN-ReLU, the pool and ``fc`` are dropped, as timm's features_only
    nets drop the head. Its output is ``model.forward_intermediates(x, out_indices,
    intermediates_only=True)``. ``out_indices`` as :func:`feature_take_indices` reads them.
    """

    def __init__(self, model: ResNet, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        take, deepest = feature_take_indices(len(model.feature_info), out_indices)
        self.out_indices = tuple(sorted(set(take)))  # the maps come out in forward order
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        self.input_size = model.input_size
        self.conv1, self.bn1, self.relu = model.conv1, model.bn1, model.relu
        self.maxpool = model.maxpool
        self.stage_names = model.stage_names[:deepest]
        for name in self.stage_names:
            setattr(self, name, getattr(model, name))

    def forward(self, x: Tensor) -> list[Tensor]:
        maps: list[Tensor] = []
        x = self.relu(self.bn1(self.conv1(x)))
        if 0 in self.out_indices:
            maps.append(x)
        x = self.maxpool(x)
        for i, name in enumerate(self.stage_names, 1):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                maps.append(x)
        return maps


__all__ = ["FeatureInfo", "ResNetFeatures", "feature_take_indices"]
