"""The ``init`` option: how a net starts, one paper each, and the combinations each refuses.

``init="kaiming"`` is He et al.'s initialisation (arXiv:1502.01852), the one every reslab net
had before the option (with ``nonlinearity="tanh"``, its gain is tanh's). The others start
from it and change what their paper changes:

* ``dirac`` (Zagoruyko & Komodakis 2017, arXiv:1706.00388): the blocks' 3×3 convolutions are
  :class:`~reslab.blocks.layers.DiracConv2d`; plain nets only, since the identity is folded
  into the weights instead of a shortcut. DiracNets pair it with concatenated ReLUs (NCReLU)
  and max-pooling between groups; here it keeps the net's own activation and strided convs.
* ``looks_linear`` (Balduzzi et al. 2017, arXiv:1702.08591, §5): every layer's channels are
  pairs ``(u, −u)``, so a ReLU on them is the concatenated rectifier of ``u``, and every weight
  is mirrored, ``[[W̃, −W̃], [−W̃, W̃]]`` (the stem ``[W̃; −W̃]``, the classifier ``[W̃, −W̃]``),
  so ``W̃·relu(u) − W̃·relu(−u) = W̃u``: at initialisation the rectifier net computes a linear
  map (exactly, with ``norm="none"`` or BN in eval mode). ``W̃`` is orthogonal, as in the paper.
  Plain ReLU nets with even widths only (a shortcut's zero-padding breaks the pairs).
* ``delta_orthogonal`` (Xiao et al. 2018, arXiv:1806.05393, Algorithm 2): every 3×3 kernel zero
  but its centre tap, an orthogonal matrix times :data:`DELTA_ORTHOGONAL_GAIN`; for plain tanh
  nets without BN, the vanilla CNNs of the paper.
* ``skipinit`` (De & Smith 2020, arXiv:2002.10444; ReZero, arXiv:2003.04887): the join is
  ``shortcut(x) + α·F(x)`` with α = 0 at first (:class:`~reslab.blocks.SkipInitAdd`).
* ``fixup`` (Zhang, Dauphin & Ma 2019, arXiv:1901.09321, §3): no BN, scalar biases and a scalar
  multiplier (:class:`~reslab.blocks.FixupBasicBlock`, a bias after the stem and one before the
  classifier); each branch's last conv and the classifier start at 0, and each branch's other
  conv is He-initialised times ``L^(−1/(2m−2))`` (L branches of m layers).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from reslab.blocks import BasicBlock, FixupBasicBlock
from reslab.errors import ModelError
from reslab.models.options import INITS, NONLINEARITIES, NORMS

if TYPE_CHECKING:
    from reslab.models.resnet import ResNet, ResNetLayout

# σ_w of delta-orthogonal kernels for tanh: the critical point χ = σ_w²·E[tanh'(h)²] = 1 of
# Xiao et al.'s mean-field theory, in the limit σ_b → 0 that zero-initialised biases are in.
DELTA_ORTHOGONAL_GAIN = 1.0
# Inits that are for plain nets only, and why (one line each).
_PLAIN_ONLY = {
    "dirac": "DiracNets fold the identity into the weights instead of a shortcut",
    "looks_linear": "a shortcut's zero-padding breaks the mirrored channel pairs",
    "delta_orthogonal": "Xiao et al. train vanilla CNNs, without shortcuts",
}


# --- the combinations ----------------------------------------------------------------------------


def check_trainability(layout: ResNetLayout) -> None:
    """``norm``, ``init`` and ``nonlinearity``: valid values and a combination that makes sense,
    or a one-line :class:`~reslab.errors.ModelError` naming the option."""
    norm, init, act = layout.norm, layout.init, layout.nonlinearity
    for name, value, allowed in (
        ("norm", norm, NORMS),
        ("init", init, INITS),
        ("nonlinearity", act, NONLINEARITIES),
    ):
        if not isinstance(value, str) or value not in allowed:
            raise ModelError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    changed = [
        f"{k}={v!r}"
        for k, v, default in (
            ("norm", norm, "batch"),
            ("init", init, "kaiming"),
            ("nonlinearity", act, "relu"),
        )
        if v != default
    ]
    if not changed:
        return
    if layout.block not in (BasicBlock, FixupBasicBlock):
        raise ModelError(
            f"{changed[0]} is built for the original basic block (block='basic', "
            f"activation='original') of the CIFAR nets, not {layout.block.__name__}"
        )
    if (init == "fixup") != (layout.block is FixupBasicBlock):
        raise ModelError(f"init={init!r} needs {'Fixup' if init == 'fixup' else 'a basic'} block")
    _check_combination(layout)


def _check_combination(layout: ResNetLayout) -> None:
    norm, init, act, plain = layout.norm, layout.init, layout.nonlinearity, layout.plain
    if init in _PLAIN_ONLY and not plain:
        raise ModelError(f"init={init!r} is for plain nets ({_PLAIN_ONLY[init]}): add plain=True")
    if init in ("skipinit", "fixup") and plain:
        raise ModelError(
            f"init={init!r} scales each residual branch, and a plain net has none: "
            "drop plain=True or the init"
        )
    if init == "fixup" and norm != "none":
        raise ModelError("init='fixup' replaces BN (arXiv:1901.09321): add norm='none'")
    if init == "delta_orthogonal" and (norm, act) != ("none", "tanh"):
        raise ModelError(
            "init='delta_orthogonal' is for Xiao et al.'s vanilla tanh nets: "
            "add norm='none' and nonlinearity='tanh'"
        )
    if init == "looks_linear" and act != "relu":
        raise ModelError("init='looks_linear' mirrors rectifiers: it needs nonlinearity='relu'")
    if init == "looks_linear" and any(w % 2 for w in (layout.stem_planes, *layout.widths)):
        raise ModelError(
            "init='looks_linear' pairs every channel with its mirror: every width must be even, "
            f"got {(layout.stem_planes, *layout.widths)}; choose another width"
        )
    mode = layout.variant.shortcut_mode
    if init in ("skipinit", "fixup") and mode != "identity":
        raise ModelError(f"init={init!r} sets the join itself: drop shortcut_mode={mode!r}")
    if layout.zero_init_residual and (norm == "none" or init in ("skipinit", "fixup")):
        raise ModelError(
            "zero_init_residual=True zeroes the last BN scale; with norm='none', skipinit or "
            "fixup start each block as its shortcut instead: drop zero_init_residual"
        )


# --- the weights -----------------------------------------------------------------------------


def init_variant(net: ResNet, layout: ResNetLayout) -> None:
    """After He's initialisation: what ``layout.init`` changes in the weights (none for
    ``kaiming``, ``dirac`` and ``skipinit``, whose layers start as they are built)."""
    if layout.init == "looks_linear":
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                mirror_(m.weight, pairs_in=m is not net.conv1)
        if isinstance(net.fc, nn.Linear):  # num_classes=0 has no classifier
            mirror_classifier_(net.fc)
    elif layout.init == "delta_orthogonal":
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                delta_orthogonal_(m.weight, DELTA_ORTHOGONAL_GAIN)
    elif layout.init == "fixup":
        fixup_(net, layout.nonlinearity)


@torch.no_grad()
def mirror_(weight: Tensor, pairs_in: bool = True) -> Tensor:
    """Looks-linear: ``[[W̃, −W̃], [−W̃, W̃]]`` (``pairs_in=False``, for an input that is not
    paired: ``[W̃; −W̃]``), ``W̃`` orthogonal over each filter (arXiv:1702.08591, §5)."""
    out, inp = weight.shape[:2]
    half = torch.empty(out // 2, inp // 2 if pairs_in else inp, *weight.shape[2:])
    nn.init.orthogonal_(half)
    rows = torch.cat([half, -half], 1) if pairs_in else half
    return weight.copy_(torch.cat([rows, -rows], 0))


@torch.no_grad()
def mirror_classifier_(fc: nn.Linear) -> None:
    """The classifier reads pairs ``(relu(u), relu(−u))``: weights ``[W̃, −W̃]``, W̃ its own."""
    half = fc.in_features // 2
    fc.weight[:, half:] = -fc.weight[:, :half]


@torch.no_grad()
def delta_orthogonal_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """Xiao et al.'s delta-orthogonal kernel: zero but the centre tap, ``gain`` times an
    orthogonal matrix (semi-orthogonal where the channel counts differ)."""
    out, inp, kh, kw = weight.shape
    centre = nn.init.orthogonal_(torch.empty(out, inp), gain)
    weight.zero_()
    weight[:, :, kh // 2, kw // 2] = centre
    return weight


@torch.no_grad()
def fixup_(net: ResNet, nonlinearity: str = "relu") -> None:
    """Fixup's rescaling (arXiv:1901.09321, §3): zero each branch's last conv and the
    classifier, He-initialise each branch's first conv times ``L^(−1/(2m−2))``."""
    blocks = net.blocks()
    for block in blocks:
        assert isinstance(block, FixupBasicBlock)
        conv = block.conv1
        nn.init.normal_(conv.weight, 0.0, fixup_std(conv, len(blocks), 2, nonlinearity))
        nn.init.zeros_(block.conv2.weight)
    if isinstance(net.fc, nn.Linear):  # num_classes=0 has no classifier
        nn.init.zeros_(net.fc.weight)
        nn.init.zeros_(net.fc.bias)


def fixup_std(conv: nn.Conv2d, branches: int, layers: int, nonlinearity: str = "relu") -> float:
    """He's std (fan-out, as every reslab conv) times ``L^(−1/(2m−2))``: Fixup's rescaled std."""
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    gain = nn.init.calculate_gain(nonlinearity)  # type: ignore[arg-type]
    return gain / math.sqrt(fan_out) * branches ** (-1 / (2 * layers - 2))


__all__ = [
    "DELTA_ORTHOGONAL_GAIN",
    "check_trainability",
    "delta_orthogonal_",
    "fixup_",
    "fixup_std",
    "init_variant",
    "mirror_",
    "mirror_classifier_",
]
