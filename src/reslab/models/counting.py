"""Parameters and multiply-accumulates, the two columns of ``reslab models``.

:func:`count_params` and :func:`count_macs` measure a built model: any ``nn.Module``, counted
by its modules and one forward pass. :func:`layout_params` and :func:`layout_macs` give the same
numbers for a :class:`~reslab.models.resnet.ResNetLayout` by arithmetic on its shapes, without
building it: building ResNet-1202 and ResNet-152 costs seconds of initialisation (and the meta
device is no cheaper, its kernels run in Python), which is why ``reslab models`` uses these.
The tests hold the two pairs equal for every registered model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from reslab.blocks import bottleneck_width
from reslab.models.resnet import ResNetLayout


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image (convolutions and linear layers).

    ``input_size`` is ``(C, H, W)``; by default the model's native size.
    """
    size = tuple(input_size) if input_size else tuple(getattr(model, "input_size", (3, 32, 32)))
    total = 0

    def conv_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += out[0].numel() * k

    def linear_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


# --- from the layout alone ---------------------------------------------------------------------


def layout_params(layout: ResNetLayout) -> int:
    """:func:`count_params` of ``ResNet.from_layout(layout)``, without building it."""
    return sum(params for params, _ in _layers(layout, layout.input_size))


def layout_macs(layout: ResNetLayout, input_size: Sequence[int] | None = None) -> int:
    """:func:`count_macs` of ``ResNet.from_layout(layout)``, without building it."""
    size = tuple(input_size) if input_size else layout.input_size
    return sum(macs for _, macs in _layers(layout, size))


# What one training step keeps per value of a conv's output, in float32 numbers: the conv's
# output, the BN's and the ReLU's are saved for the backward pass, whose gradients reuse
# freed buffers. Measured (one step on the CPU, maxrss above the import): ResNet-20 at batch
# 256, ResNet-56 at 128, ResNet-110 at 64 peak at 0.79, 0.66, 0.60× this estimate; it errs
# on the large side (docs/RELIABILITY.md, "Budgets").
_SAVED_PER_OUTPUT = 3
# Weights, gradients, momentum and an EMA or checkpoint copy, in float32 numbers.
_COPIES_PER_PARAM = 4


def layout_activations(layout: ResNetLayout, input_size: Sequence[int] | None = None) -> int:
    """Output values of every conv and the input in one forward pass on one image: what
    training keeps per image, without building the net (:func:`training_bytes`)."""
    size = tuple(input_size) if input_size else layout.input_size
    outputs = math.prod(size)
    for c_out, h, w in _conv_outputs(layout, size):
        outputs += c_out * h * w
    return outputs


def training_bytes(
    layout: ResNetLayout, batch_size: int, input_size: Sequence[int] | None = None
) -> int:
    """An estimate of the memory one float32 training step of ``layout`` takes at
    ``batch_size``: activations kept for the backward pass and the parameters' copies."""
    per_image = _SAVED_PER_OUTPUT * layout_activations(layout, input_size)
    return 4 * (batch_size * per_image + _COPIES_PER_PARAM * layout_params(layout))


def _conv_outputs(layout: ResNetLayout, size: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(channels, height, width) of every conv's output, in :func:`_layers`' order."""
    h, w = size[1], size[2]
    k, stride = (3, 1) if layout.stem == "cifar" else (7, 2)
    h, w, _ = _conv(layout.in_channels, layout.stem_planes, k, stride, h, w)
    yield layout.stem_planes, h, w
    if layout.stem == "imagenet":
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    in_planes = layout.stem_planes
    for i, (n_blocks, planes) in enumerate(zip(layout.layers, layout.widths, strict=True)):
        for j in range(n_blocks):
            stride = 2 if i > 0 and j == 0 else 1
            for c_in, c_out, k, s, g in _branch_convs(layout, in_planes, planes, stride):
                h, w, _ = _conv(c_in, c_out, k, s, h, w, g)
                yield c_out, h, w
            in_planes = planes * layout.block.expansion
            yield in_planes, h, w  # the block's sum (shortcut + branch)


def _layers(layout: ResNetLayout, size: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(parameters, MACs) of every weighted layer, in the order :class:`ResNet` builds them.

    Mirrors ``ResNet.__init__`` and the blocks of :mod:`reslab.blocks`: a conv has ``k·k·c_in``
    weights per output channel and no bias, a BN a scale and a shift per channel, fc a bias, a
    gate's 1×1 conv a bias too. Activation placements move BNs and ReLUs but add none with
    parameters; ``shortcut_mode="conv"`` is option C, counted as a projection. A grouped
    convolution (ResNeXt) has ``k·k·c_in/groups`` weights per output channel; dropout (wide
    ResNets) has none. Without BN (``norm="none"``) each conv it followed has a bias instead,
    and a projection has neither; a Dirac conv has ``a`` and ``b`` per output channel; SkipInit
    has α per block, Fixup four scalar biases and a multiplier per block, a scalar bias after
    the stem and one before the classifier, and no conv biases (:mod:`reslab.models.inits`).
    """
    h, w = size[1], size[2]
    planes = layout.stem_planes
    k, stride = (3, 1) if layout.stem == "cifar" else (7, 2)
    h, w, macs = _conv(layout.in_channels, planes, k, stride, h, w)
    # Pre-activation nets have no BN after the stem.
    stem_norm = 0 if layout.preact else _norm_params(layout, planes)
    stem_norm += 1 if layout.init == "fixup" else 0  # Fixup's scalar bias after the stem
    yield layout.in_channels * planes * k * k + stem_norm, macs
    if layout.stem == "imagenet":
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3×3 max-pool, stride 2, padding 1
    in_planes = planes
    gated = layout.variant.shortcut_mode in ("exclusive_gate", "shortcut_gate")
    for i, (n_blocks, planes) in enumerate(zip(layout.layers, layout.widths, strict=True)):
        for j in range(n_blocks):
            stride = 2 if i > 0 and j == 0 else 1
            h_in, w_in = h, w
            for c_in, c_out, k, s, g in _branch_convs(layout, in_planes, planes, stride):
                h, w, macs = _conv(c_in, c_out, k, s, h, w, g)
                norm = 2 * c_in if layout.preact else _norm_params(layout, c_out)
                dirac = 2 * c_out if layout.init == "dirac" else 0
                yield c_in * c_out * k * k // g + norm + dirac, macs
            yield _BLOCK_SCALARS.get(layout.init, 0), 0
            out_planes = planes * layout.block.expansion
            same_shape = in_planes == out_planes and stride == 1
            projects = layout.shortcut == "C" or (layout.shortcut == "B" and not same_shape)
            if projects and not layout.plain:
                # Projection: 1×1 conv on the block's input, BN only in post-activation nets.
                _, _, macs = _conv(in_planes, out_planes, 1, stride, h_in, w_in)
                bn = not layout.preact and layout.norm == "batch"
                yield in_planes * out_planes + (2 * out_planes if bn else 0), macs
            if gated and not layout.plain:
                # The gate's 1×1 conv on the block's input, with its bias b_g (2016, Fig. 2c-d).
                _, _, macs = _conv(in_planes, out_planes, 1, stride, h_in, w_in)
                yield in_planes * out_planes + out_planes, macs
            in_planes = out_planes
    if layout.preact:
        yield 2 * in_planes, 0  # the final BN-ReLU
    if layout.init == "fixup":
        yield 1, 0  # the scalar bias before the classifier
    yield in_planes * layout.num_classes + layout.num_classes, in_planes * layout.num_classes


# Scalars each block adds: SkipInit's α; Fixup's four biases and its multiplier.
_BLOCK_SCALARS = {"skipinit": 1, "fixup": 5}


def _norm_params(layout: ResNetLayout, channels: int) -> int:
    """What a post-activation net has for a conv of ``channels`` outputs besides its weights:
    BN's scale and shift, else the conv's bias, or nothing in Fixup (its scalars are counted
    by the block and the stem)."""
    if layout.norm == "batch":
        return 2 * channels
    return 0 if layout.init == "fixup" else channels


def _branch_convs(
    layout: ResNetLayout, in_planes: int, planes: int, stride: int
) -> list[tuple[int, int, int, int, int]]:
    """(c_in, c_out, kernel, stride, groups) of a block's branch: two 3×3s, or 1×1-3×3-1×1
    (v1.5) with ResNeXt's grouped 3×3 of :func:`~reslab.blocks.bottleneck_width` channels."""
    if layout.block.branch_convs == 2:
        return [(in_planes, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
    expanded = planes * layout.block.expansion
    g = layout.groups
    inner = bottleneck_width(planes, g, layout.base_width)
    return [(in_planes, inner, 1, 1, 1), (inner, inner, 3, stride, g), (inner, expanded, 1, 1, 1)]


def _conv(
    c_in: int, c_out: int, k: int, stride: int, h: int, w: int, groups: int = 1
) -> tuple[int, int, int]:
    """Output height, width and MACs of a ``k×k`` conv with padding ``k // 2`` (as all here)."""
    pad = k // 2
    h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return h, w, h * w * c_out * c_in * k * k // groups


__all__ = [
    "count_macs",
    "count_params",
    "layout_activations",
    "layout_macs",
    "layout_params",
    "training_bytes",
]
